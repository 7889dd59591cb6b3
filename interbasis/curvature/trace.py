"""Stochastic trace estimates: ``tr(C)``, ``tr(C^2)``, ``sum_i C_ii^2`` and per-block traces.

Hutchinson's estimator with Rademacher probes ``z`` (entries ±1):
``E[z^T C z] = tr C``, ``E[||C z||^2] = tr(C^2) = ||C||_F^2`` and ``E[z_i (C z)_i] = C_ii``.
For ``sum_i C_ii^2`` we use the unbiased pair estimator
``(S_i^2 - Q_i) / (m (m-1))`` with ``S_i = sum_s d_si``, ``Q_i = sum_s d_si^2``,
``d_si = z_si (C z_s)_i`` (products of independent probes). A block trace ``tr C[b, b]`` is
``E[z_b^T (C z)_b]`` from the same probes. For a diagonal ``C`` every estimate is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from interbasis.curvature.operator import CurvatureOperator
from interbasis.errors import DataError


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimates with standard errors (``std / sqrt(m)`` over the probes).

    ``diagonal`` is the ``(P,)`` estimate of ``diag C``; ``block_traces`` maps a parameter
    group to its estimated block trace (empty when no layout is known).
    """

    trace: float
    trace_stderr: float
    trace_sq: float
    trace_sq_stderr: float
    sum_diag_sq: float
    diagonal: torch.Tensor
    n_samples: int
    block_traces: dict[str, float] = field(default_factory=dict)


def hutchinson(
    op: LinearOperator,
    n_samples: int = 64,
    seed: int = 0,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> TraceEstimate:
    """Hutchinson estimates of ``tr C``, ``tr C^2``, ``sum_i C_ii^2`` and block traces.

    Parameters
    ----------
    op : LinearOperator
        Symmetric ``(P, P)``; a :class:`CurvatureOperator` gets one vmapped block product.
    n_samples : int
        Number of Rademacher probes ``m >= 2``.
    seed : int
        Seed of the probes (numpy ``default_rng``). On the ranks of a process group every
        rank draws the same ``(P, m)`` probes and the operator all-reduces its products
        (:class:`CurvatureOperator` with ``process_group``), so every estimate is the same
        on every rank.
    groups : mapping ``group -> parameter names``, optional
        For block traces; default ``op.layout.groups()`` when ``op`` has a layout.
    """
    if n_samples < 2:
        raise DataError(f"n_samples must be >= 2 for standard errors, got {n_samples}")
    p = int(op.shape[0])
    rng = np.random.default_rng(seed)
    Z = rng.choice(np.array([-1.0, 1.0]), size=(p, n_samples))
    if isinstance(op, CurvatureOperator):
        CZ = op.matmat_torch(torch.from_numpy(Z)).numpy()
    else:
        CZ = np.asarray(op.matmat(Z), dtype=np.float64)
    D = Z * CZ  # (P, m): d_si
    traces = D.sum(axis=0)
    squares = (CZ**2).sum(axis=0)
    S, Q = D.sum(axis=1), (D**2).sum(axis=1)
    sum_diag_sq = float(((S**2 - Q) / (n_samples * (n_samples - 1))).sum())
    blocks: dict[str, float] = {}
    layout = getattr(op, "layout", None)
    if groups is None and layout is not None:
        groups = layout.groups()
    if groups is not None:
        if layout is None:
            raise DataError(
                f"groups: block traces need an operator with a parameter layout (a "
                f"CurvatureOperator), got {type(op).__name__}; pass groups=None"
            )
        for name, params in groups.items():
            idx = layout.indices(list(params)).numpy()
            blocks[name] = float(D[idx].sum(axis=0).mean())
    root = np.sqrt(n_samples)
    return TraceEstimate(
        trace=float(traces.mean()),
        trace_stderr=float(traces.std(ddof=1) / root),
        trace_sq=float(squares.mean()),
        trace_sq_stderr=float(squares.std(ddof=1) / root),
        sum_diag_sq=sum_diag_sq,
        diagonal=torch.from_numpy(D.mean(axis=1)),
        n_samples=n_samples,
        block_traces=blocks,
    )
