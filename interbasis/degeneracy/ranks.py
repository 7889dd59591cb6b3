"""Scale-free ranks of Gram matrices, the one numerical decision every count here makes.

A degeneracy count is a nullity: of an activation Gram ``G`` (seed 004 eq. 14), a Jacobian
Gram ``K`` (eq. 15), the Gram of a synchronized block's pre-activations (eq. 21) or the
behavioural-loss Hessian (eq. 10). All of them go through :func:`gram_rank`.
"""

from __future__ import annotations

import math

import torch

from interbasis.errors import DataError, NonFiniteError, ShapeError

RTOL = 1e-9
"""Default relative tolerance: an eigenvalue below ``RTOL`` times the largest counts as zero.

Exact rank drops sit at float64 round-off (~1e-16 relative); genuine directions of the small
networks we analyse are above ~1e-7, so 1e-9 separates the two with margin."""


def check_rtol(rtol: float) -> float:
    """Return ``rtol`` as a float, raising :class:`DataError` unless ``0 <= rtol < 1``."""
    value = float(rtol)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise DataError(f"rtol must be a finite number in [0, 1), got {rtol!r}")
    return value


def gram_rank(gram: torch.Tensor, rtol: float = RTOL) -> int:
    """Numerical rank of a positive semi-definite Gram matrix, invariant to rescaling.

    Coordinates whose diagonal entry is at most ``rtol`` times the largest diagonal entry are
    zero (e.g. a dead neuron: its activations or Jacobians vanish on the data). The others are
    normalised to unit diagonal, ``D^{-1/2} G D^{-1/2}``, and eigenvalues (float64 ``eigh``)
    at most ``rtol`` times the largest count as zero. The normalisation makes the count exactly
    invariant to positive rescaling of single coordinates (seed 004 §3.2: rescaling a neuron's
    in- and out-weights changes nothing).

    Parameters
    ----------
    gram : (d, d) symmetric positive semi-definite tensor.
    rtol : relative tolerance in ``[0, 1)``.

    Returns
    -------
    int
        The rank, in ``[0, d]``.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ShapeError(f"a Gram matrix must be square, got shape {tuple(gram.shape)}")
    if gram.shape[0] == 0:
        return 0
    g = gram.to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise NonFiniteError(f"Gram matrix of shape {tuple(g.shape)} has NaN/Inf entries")
    diag = g.diagonal()
    top = float(diag.max())
    if top <= 0.0:
        return 0
    live = diag > rtol * top
    scale = diag[live].sqrt()
    corr = g[live][:, live] / torch.outer(scale, scale)
    values = torch.linalg.eigvalsh(0.5 * (corr + corr.T))
    return int((values > rtol * float(values.max())).sum())


def gram_nullity(gram: torch.Tensor, rtol: float = RTOL) -> int:
    """``d - gram_rank(gram)``: the number of (numerically) zero directions of a Gram."""
    return int(gram.shape[0]) - gram_rank(gram, rtol)
