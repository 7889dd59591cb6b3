"""Eigenpairs of curvature matrices: dense ``eigh``, Lanczos, per-block spectra, floor.

Dense matrices go through :func:`torch.linalg.eigh` in float64; matrix-free operators through
scipy's ARPACK Lanczos (:func:`scipy.sparse.linalg.eigsh`), which gives the implicitly
restarted Lanczos iteration for symmetric operators. Eigenvalues are sorted descending
(DESIGN §4) and eigenvectors are the columns of ``vectors``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from interbasis.curvature.operator import CurvatureOperator
from interbasis.errors import DataError, NonFiniteError, ShapeError

EPS64 = float(np.finfo(np.float64).eps)
#: Whether scipy's ``eigsh`` takes ``rng=`` (scipy >= 1.15; older ones restart from ARPACK's
#: own generator, which is deterministic for a given sequence of calls in a process).
_EIGSH_RNG = "rng" in inspect.signature(eigsh).parameters


@dataclass(frozen=True)
class Eigenpairs:
    """Eigenvalues ``values`` (k,) in descending order and eigenvectors ``vectors`` (P, k).

    Attributes
    ----------
    values : torch.Tensor
        ``(k,)`` float64, descending.
    vectors : torch.Tensor
        ``(P, k)`` float64, orthonormal columns; ``vectors[:, i]`` belongs to ``values[i]``.
    n_products : int
        Matrix-vector products Lanczos used (0 for a dense decomposition).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    n_products: int = 0

    def __len__(self) -> int:
        return int(self.values.shape[0])


def eigh_descending(matrix: torch.Tensor) -> Eigenpairs:
    """Full eigendecomposition of a symmetric ``(P, P)`` matrix in float64, descending."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ShapeError(f"eigh needs a square matrix, got shape {tuple(matrix.shape)}")
    m = matrix.to(torch.float64)
    if not bool(torch.isfinite(m).all()):
        raise NonFiniteError(f"matrix of shape {tuple(m.shape)} has NaN/Inf entries")
    asym = float((m - m.T).abs().max()) if m.numel() else 0.0
    scale = float(m.abs().max()) if m.numel() else 0.0
    # 1e-8 relative: round-off of a float64 Hessian is ~1e-15; anything larger is a bug
    if asym > 1e-8 * max(scale, 1e-300):
        raise ShapeError(
            f"matrix is not symmetric: max |A - A^T| = {asym:.3g} (max |A| = {scale:.3g})"
        )
    values, vectors = torch.linalg.eigh(0.5 * (m + m.T))
    return Eigenpairs(values.flip(0), vectors.flip(1))


def lanczos(
    op: LinearOperator,
    k: int,
    which: str = "LA",
    v0: torch.Tensor | np.ndarray | None = None,
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: int = 0,
) -> Eigenpairs:
    """``k`` extreme eigenpairs of a symmetric operator by Lanczos (ARPACK ``eigsh``).

    Parameters
    ----------
    op : LinearOperator
        Symmetric ``(P, P)``, e.g. :class:`~interbasis.curvature.hessian.HessianOperator`.
    k : int
        Number of eigenpairs, ``1 <= k < P`` (ARPACK's limit; for all ``P`` use the dense
        matrix and :func:`eigh_descending`).
    which : {"LA", "SA", "LM"}
        Largest algebraic (top), smallest algebraic (bottom) or largest magnitude.
    v0 : (P,) array, optional
        Starting vector; pass a previous eigenvector (combination) to warm-start.
    tol : float
        ARPACK relative accuracy of the Ritz values; 0 means machine precision.
    seed : int
        Seed of the random vectors ARPACK draws: the start vector when ``v0`` is None
        (uniform on ``[-1, 1]``) and any restart vector. Seeded, a run reproduces itself,
        and the ranks of a process group (whose operator all-reduces its products) run the
        same iteration in lockstep.
    """
    p = int(op.shape[0])
    if which not in ("LA", "SA", "LM"):
        raise DataError(f"which must be 'LA', 'SA' or 'LM', got {which!r}")
    if not 1 <= k < p:
        raise DataError(
            f"k={k} eigenpairs requested but the operator has P={p} parameters; Lanczos needs "
            f"1 <= k < P (for all {p}, build the dense matrix and use eigh_descending)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise DataError(f"seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    if v0 is None:
        start = rng.uniform(-1.0, 1.0, size=p)  # what ARPACK would draw, but seeded
    else:
        start = np.asarray(v0, dtype=np.float64).reshape(-1)
    if start.shape[0] != p:
        raise ShapeError(f"v0 has length {start.shape[0]}, expected P={p}")
    before = op.n_products if isinstance(op, CurvatureOperator) else 0
    options: dict[str, Any] = {"rng": rng} if _EIGSH_RNG else {}  # restarts (scipy >= 1.15)
    vals, vecs = eigsh(op, k=k, which=which, v0=start, tol=tol, maxiter=maxiter, ncv=ncv, **options)
    used = (op.n_products - before) if isinstance(op, CurvatureOperator) else 0
    order = np.argsort(vals)[::-1]
    return Eigenpairs(
        torch.from_numpy(vals[order].copy()), torch.from_numpy(vecs[:, order].copy()), used
    )


def numerical_floor(values: torch.Tensor, size: int) -> float:
    """``max |lambda| * P * eps64``: eigenvalues below it are round-off (DESIGN §4, "auto").

    Eigenvectors of such eigenvalues are arbitrary vectors of a near-null space.
    """
    return float(values.abs().max()) * size * EPS64


def block_spectra(
    op: CurvatureOperator,
    groups: Mapping[str, Sequence[str]] | None = None,
    k: int | None = None,
) -> dict[str, torch.Tensor]:
    """Eigenvalues (descending) of the diagonal blocks ``C[b, b]``, one per parameter group.

    Parameters
    ----------
    op : CurvatureOperator
    groups : mapping ``group -> parameter names``, optional
        Default: one group per module (``op.layout.groups()``, e.g. weight + bias of a layer).
    k : int, optional
        If given, only the top-``k`` eigenvalues of each block, by Lanczos on the restricted
        operator (for blocks too large to materialise); else the full dense spectrum.
    """
    groups = op.layout.groups() if groups is None else groups
    out: dict[str, torch.Tensor] = {}
    for name, params in groups.items():
        block = op.restrict(list(params))
        if k is None or k >= block.shape[0]:
            out[name] = eigh_descending(block.to_dense()).values
        else:
            out[name] = lanczos(block, k).values
    return out
