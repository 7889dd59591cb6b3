"""Lyapunov exponents of Jacobian products (QR / Benettin iteration) and their closed forms.

For a product ``J_{0:T} = A_{T-1} \\cdots A_0`` the ``k`` largest Lyapunov exponents are

.. math::  \\lambda_j = \\lim_{T\\to\\infty} \\frac{1}{T} \\log \\sigma_j(J_{0:T})
           = \\lim_{T\\to\\infty} \\frac{1}{T} \\sum_{t<T} \\log |R^{(t)}_{jj}|,
           \\qquad A_t Q_t = Q_{t+1} R^{(t)}

(Benettin et al. 1980): a ``k``-frame ``Q`` is pushed through the factors and
re-orthonormalised by QR at every step. Closed forms (seed 002), entries ``W_ij ~ N(0, v/n)``:

- i.i.d. Gaussian ``n x n``: ``λ_j = ½[log(2v/n) + ψ((n-j+1)/2)]`` (``|R_jj|² ~ (v/n) χ²_{n-j+1}``);
- masked ``D W`` with ``K ~ Binomial(n, p)`` active rows: ``D W Q`` is a ``K x k`` Gaussian
  matrix for any frame ``Q``, so ``λ_j = ½[log(2v/n) + E_K ψ((K-j+1)/2)]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.special import digamma
from scipy.stats import binom
from torch import Tensor

from interbasis.errors import DataError, ShapeError
from interbasis.jacobian_spectra.chain import LayerJacobians

_EPS = float(np.finfo(np.float64).eps)

__all__ = [
    "LyapunovResult",
    "depth_fit",
    "gaussian_lyapunov",
    "log_singular_values",
    "lyapunov_exponents",
    "masked_gaussian_lyapunov",
]


@dataclass(frozen=True)
class LyapunovResult:
    """Output of :func:`lyapunov_exponents` (``T`` steps after burn-in, ``B`` chains).

    Attributes
    ----------
    exponents : (k,)
        Mean of ``log|R_jj|`` over steps and chains.
    stderr : (k,)
        Batch-means standard error of ``exponents`` over the step series (steps are the
        independent unit: chains through the same weights are correlated); NaN if ``T < 2``.
    per_input : (B, k)
        Exponents of each chain.
    increments : (T, k)
        ``log|R_jj|`` averaged over chains, per step.
    running : (T, k)
        Running mean of ``increments``: the convergence diagnostic.
    unresolved : (k,)
        Number of (step, chain) pairs with ``|R_jj| <= d·eps·max|R|`` (direction ``j``
        annihilated or below float64 round-off, e.g. fewer than ``j`` active units); where it
        is non-zero, exponent ``j`` is not resolved (its true value may be ``-inf``).
    """

    exponents: NDArray[np.float64]
    stderr: NDArray[np.float64]
    per_input: NDArray[np.float64]
    increments: NDArray[np.float64]
    running: NDArray[np.float64]
    unresolved: NDArray[np.int64]

    @property
    def drift(self) -> NDArray[np.float64]:
        """Mean of the second half of the steps minus mean of the first half, ``(k,)``."""
        half = len(self.increments) // 2
        if half == 0:
            return np.full(self.exponents.shape, np.nan)
        return self.increments[half:].mean(0) - self.increments[:half].mean(0)

    def converged(self, n_sigma: float = 4.0) -> NDArray[np.bool_]:
        """``|drift| <= n_sigma · 2 · stderr`` per exponent (halves differ by ~2 s.e.)."""
        tol = n_sigma * 2 * self.stderr + 1e-12 * (1 + np.abs(self.exponents))
        return np.asarray(np.abs(self.drift) <= tol)


def _haar_frame(d: int, k: int, generator: torch.Generator | None) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def lyapunov_exponents(
    factors: Iterable[Tensor] | LayerJacobians,
    k: int | None = None,
    *,
    burn_in: int = 0,
    n_blocks: int = 20,
    frame: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LyapunovResult:
    """Top-``k`` Lyapunov exponents of ``A_{T-1} ... A_0`` by the QR (Benettin) iteration.

    Parameters
    ----------
    factors : iterable of Tensor or LayerJacobians
        ``A_t`` ``(B, d_{t+1}, d_t)`` or ``(d_{t+1}, d_t)``; a generator keeps memory flat.
    k : int, optional
        Number of exponents (default: ``min(d_0, d_1)``); every factor must keep ``k``.
    burn_in : int
        Steps used to rotate the frame into place but left out of the averages.
    n_blocks : int
        Blocks for the batch-means standard error.
    frame : Tensor, optional
        Initial orthonormal frame ``(d_0, k)``; default Haar-random (seeded by ``generator``).

    Returns
    -------
    LyapunovResult
        All per-step work is batched over chains (one ``qr`` per step).
    """
    if isinstance(factors, LayerJacobians):
        factors = factors.factors
    q: Tensor | None = None
    steps: list[Tensor] = []
    unresolved: NDArray[np.int64] = np.zeros(1, dtype=np.int64)
    for t, a in enumerate(factors):
        a = a.to(torch.float64)
        if a.ndim < 2:
            raise ShapeError(f"factor {t} has shape {tuple(a.shape)}; need (..., d_out, d_in)")
        if q is None:
            k = min(a.shape[-2:]) if k is None else k
            if not 1 <= k <= a.shape[-1]:
                raise ShapeError(f"k={k} must lie in [1, d_0={a.shape[-1]}]")
            q = _haar_frame(a.shape[-1], k, generator) if frame is None else frame.to(a)
            if q.shape != (a.shape[-1], k):
                raise ShapeError(f"frame has shape {tuple(q.shape)}, need ({a.shape[-1]}, {k})")
        if a.shape[-1] != q.shape[-2] or a.shape[-2] < q.shape[-1]:
            raise ShapeError(
                f"factor {t} has shape {tuple(a.shape)}: it must accept width {q.shape[-2]} "
                f"and keep at least k={q.shape[-1]} directions"
            )
        q, r = torch.linalg.qr(a @ q)
        diag = torch.diagonal(r, dim1=-2, dim2=-1).abs()
        scale = r.abs().amax(dim=(-2, -1), keepdim=True)[..., 0]
        dead = diag <= a.shape[-2] * _EPS * scale
        if t >= burn_in:
            unresolved = unresolved + dead.reshape(-1, dead.shape[-1]).sum(0).numpy()
        steps.append(diag.clamp_min(1e-300).log())
    if not steps:
        raise DataError("no factors given (depth 0): Lyapunov exponents need a product")
    if burn_in >= len(steps):
        raise DataError(f"burn_in={burn_in} leaves no steps out of {len(steps)}")
    logs = torch.stack(torch.broadcast_tensors(*steps[burn_in:])).numpy()  # (T, [B,] k)
    logs = logs.reshape(logs.shape[0], -1, logs.shape[-1])  # (T, B, k)
    increments = logs.mean(axis=1)
    n_steps = increments.shape[0]
    running = np.cumsum(increments, axis=0) / np.arange(1, n_steps + 1)[:, None]
    return LyapunovResult(
        exponents=increments.mean(axis=0),
        stderr=_batch_means_stderr(increments, n_blocks),
        per_input=logs.mean(axis=0),
        increments=increments,
        running=running,
        unresolved=np.broadcast_to(unresolved, increments.shape[1:]).copy(),
    )


def _batch_means_stderr(series: NDArray[np.float64], n_blocks: int) -> NDArray[np.float64]:
    """Standard error of the mean of ``series`` ``(T, k)`` from ``min(n_blocks, T)`` blocks."""
    n = min(n_blocks, series.shape[0])
    if n < 2 or not np.isfinite(series).all():
        return np.full(series.shape[1], np.nan)
    size = series.shape[0] // n
    means = series[: n * size].reshape(n, size, -1).mean(axis=1)
    return np.asarray(means.std(axis=0, ddof=1) / np.sqrt(n))


def gaussian_lyapunov(n: int, k: int | None = None, variance: float = 1.0) -> NDArray[np.float64]:
    """``λ_j = ½[log(2·variance/n) + ψ((n-j+1)/2)]``, ``j = 1..k``, for ``W_ij ~ N(0, variance/n)``.

    Products of i.i.d. ``n x n`` Gaussian matrices (Newman 1986); ``ψ`` is
    ``scipy.special.digamma``.
    """
    k = n if k is None else k
    if not 1 <= k <= n or variance <= 0:
        raise DataError(f"need 1 <= k <= n and variance > 0, got n={n}, k={k}, {variance=}")
    j = np.arange(1, k + 1)
    return np.asarray(0.5 * (np.log(2 * variance / n) + digamma((n - j + 1) / 2)))


def masked_gaussian_lyapunov(
    n: int,
    k: int | None = None,
    keep_prob: float = 0.5,
    variance: float = 2.0,
    max_excluded: float = 1e-6,
) -> NDArray[np.float64]:
    """``λ_j = ½[log(2·variance/n) + E_K ψ((K-j+1)/2)]``, ``K ~ Binomial(n, keep_prob)``.

    Products of ``D W`` with ``W_ij ~ N(0, variance/n)`` and independent Bernoulli gates
    (defaults: ReLU at He initialisation). A step with ``K < j`` annihilates direction ``j``
    (exponent ``-inf``); the expectation is taken conditional on ``K >= j`` and a
    :class:`~interbasis.errors.DataError` is raised when ``P(K < j) > max_excluded``, since the
    conditional value would then misdescribe the product.
    """
    k = n if k is None else k
    if not 1 <= k <= n or variance <= 0 or not 0 < keep_prob <= 1:
        raise DataError(
            f"need 1 <= k <= n, variance > 0, 0 < keep_prob <= 1; got {n=}, {k=}, "
            f"{variance=}, {keep_prob=}"
        )
    out = np.empty(k)
    big_k = np.arange(n + 1)
    pmf = binom.pmf(big_k, n, keep_prob)
    for j in range(1, k + 1):
        excluded = float(binom.cdf(j - 1, n, keep_prob))
        if excluded > max_excluded:
            raise DataError(
                f"P(K < {j}) = {excluded:.3g} > max_excluded={max_excluded:g} for n={n}, "
                f"keep_prob={keep_prob}: steps with fewer than {j} active units (exact exponent "
                "-inf) are too likely to ignore; raise max_excluded to accept the conditional value"
            )
        ok = big_k >= j
        mean_psi = (pmf[ok] * digamma((big_k[ok] - j + 1) / 2)).sum() / pmf[ok].sum()
        out[j - 1] = 0.5 * (np.log(2 * variance / n) + mean_psi)
    return out


def log_singular_values(
    factors: list[Tensor] | LayerJacobians, k: int | None = None
) -> NDArray[np.float64]:
    """``log σ_j(J_{0:l})`` for ``l = 1..L``: ``(L, B, k)`` (float64 ``svdvals``).

    Finite-depth spectra of the prefix products. Values below ``σ_1 · 1e-13`` are at float64
    round-off of the product and are not meaningful (use :func:`lyapunov_exponents` for the
    small end of the spectrum).
    """
    if isinstance(factors, LayerJacobians):
        factors = factors.factors
    if not factors:
        raise DataError("no factors given (depth 0)")
    out = []
    prod = factors[0].to(torch.float64)
    for t in range(len(factors)):
        if t:
            prod = factors[t].to(torch.float64) @ prod
        s = torch.linalg.svdvals(prod)
        out.append(s[..., :k].log())
    width = min(o.shape[-1] for o in out)
    return torch.stack([o[..., :width] for o in out]).numpy()


def depth_fit(
    depths: ArrayLike, log_sigma: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares line ``log σ_j(l) ≈ slope_j · l + intercept_j``.

    ``depths`` ``(n,)``, ``log_sigma`` ``(n, k)``; returns ``(slope (k,), intercept (k,))``.
    The slope estimates ``λ_j``; the intercept is the finite-depth offset.
    """
    x = np.asarray(depths, dtype=np.float64)
    y = np.asarray(log_sigma, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim != 1 or y.shape[0] != x.shape[0] or x.shape[0] < 2:
        raise ShapeError(f"depths {x.shape} and log_sigma {y.shape} do not fit (need n >= 2)")
    coef = np.polynomial.polynomial.polyfit(x, y, 1)
    return np.asarray(coef[1]), np.asarray(coef[0])
