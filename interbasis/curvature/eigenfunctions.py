"""Functions induced by Hessian eigenvectors (seed 000) and their frequency.

Seed 000 perturbs the parameters along an eigenvector ``v_i`` and looks at

.. math::
    \\delta f_i(x) = \\frac{f(x; \\theta + a v_i) - f(x; \\theta)}{a}
    \\;\\xrightarrow{a \\to 0}\\; J(x)\\, v_i ,

the directional derivative of the network function. We compute the limit exactly by a
forward-mode JVP (:func:`torch.func.jvp`, vmapped over the vectors) and, when ``a`` is given,
also the seed's forward difference (error ``O(a)``).

Frequency (documented choice): the **spectral centroid** of ``δf`` on a uniform 1-D grid,
from its orthonormal DCT-II (:func:`scipy.fft.dct`; the even extension avoids the jump that
an FFT would see at the interval ends). Coefficient ``m`` is ``m`` half-cycles over the grid
length ``n*dx``, so the centroid ``sum_m m c_m^2 / sum_m c_m^2 / (2 n dx)`` is in cycles
per unit ``x``; for ``sin(k x)`` it is about ``k / 2π`` once ``k`` spans more than a cycle
and it ranks ``sin(kx)`` by ``k`` for ``k`` at least 1 apart. A constant has centroid 0, an
identically zero function NaN. We also count sign changes of ``δf - mean(δf)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch
from torch.func import jvp, vmap

from interbasis.curvature.objective import refuse_running_stats
from interbasis.curvature.params import ParamLayout
from interbasis.errors import DataError, NonFiniteError, ShapeError
from interbasis.train_mode import TrainMode, analysed_model


@dataclass(frozen=True)
class EigenFunctions:
    """``δf_i`` on a grid with their frequency.

    Attributes
    ----------
    jvp : torch.Tensor
        ``(k, n_grid, d_out)`` exact ``J v_i``.
    finite_difference : torch.Tensor or None
        ``(k, n_grid, d_out)`` seed 000's ``(f(θ + a v) - f(θ)) / a`` if ``a`` was given.
    frequency : torch.Tensor or None
        ``(k,)`` spectral centroid of ``jvp`` (cycles per unit x); None if not computed.
    sign_changes : torch.Tensor or None
        ``(k,)`` sign changes of the mean-removed ``jvp``.
    amplitude : torch.Tensor
        ``(k,)`` root-mean-square of ``jvp`` over the grid and outputs.
    eigenvalues : torch.Tensor or None
        ``(k,)`` the eigenvalues passed in (``abs`` gives seed 000's |λ|).
    """

    jvp: torch.Tensor
    finite_difference: torch.Tensor | None
    frequency: torch.Tensor | None
    sign_changes: torch.Tensor | None
    amplitude: torch.Tensor
    eigenvalues: torch.Tensor | None


def _grid_coordinate(x_grid: torch.Tensor) -> np.ndarray:
    x = x_grid.detach().to(torch.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1 or x.shape[0] < 3:
        raise DataError(
            f"frequency needs a 1-D grid of at least 3 points, (n,) or (n, 1); got shape "
            f"{tuple(x_grid.shape)} (pass frequency=False for other inputs)"
        )
    xs = x.numpy()
    dx = np.diff(xs)
    # 1e-3 relative: a float32 linspace is uniform to ~eps32*max|x|/dx (1e-5 for 200 points
    # on [-1, 1]); the DCT assumes equal spacing, so anything visibly uneven is refused
    if not (dx > 0).all() or np.abs(dx - dx.mean()).max() > 1e-3 * abs(dx.mean()):
        raise DataError("frequency needs an increasing, uniformly spaced grid (e.g. linspace)")
    return xs


def spectral_centroid(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Spectral centroid (cycles per unit x) of functions sampled on a uniform grid.

    Parameters
    ----------
    values : torch.Tensor
        ``(k, n_grid)`` or ``(k, n_grid, d_out)``; power is summed over outputs.
    x : torch.Tensor
        ``(n_grid,)`` or ``(n_grid, 1)`` increasing, uniform.
    """
    xs = _grid_coordinate(x)
    v = values.detach().to(torch.float64).numpy()
    if v.ndim == 2:
        v = v[:, :, None]
    if v.ndim != 3 or v.shape[1] != xs.shape[0]:
        raise ShapeError(
            f"values of shape {tuple(values.shape)} do not fit a grid of {xs.shape[0]} points; "
            "expected (k, n_grid) or (k, n_grid, d_out) with n_grid the length of x"
        )
    n = xs.shape[0]
    power = (scipy.fft.dct(v, type=2, norm="ortho", axis=1) ** 2).sum(axis=2)  # (k, n)
    total = power.sum(axis=1)
    weighted = (np.arange(n) * power).sum(axis=1)
    length = n * (xs[1] - xs[0])
    out = np.full(total.shape, np.nan)
    ok = total > 0
    out[ok] = weighted[ok] / total[ok] / (2.0 * length)
    return torch.from_numpy(out)


def sign_changes(values: torch.Tensor) -> torch.Tensor:
    """Sign changes along the grid of ``values - mean`` (exact zeros skipped), per function.

    ``values`` is ``(k, n_grid)`` or ``(k, n_grid, d_out)`` (counts summed over outputs).
    """
    v = values.detach().to(torch.float64)
    if v.ndim == 2:
        v = v.unsqueeze(-1)
    s = torch.sign(v - v.mean(dim=1, keepdim=True)).numpy()  # (k, n, d_out)
    # forward-fill exact zeros with the previous non-zero sign, then count changes
    pos = np.where(s != 0, np.arange(s.shape[1])[None, :, None], 0)
    filled = np.take_along_axis(s, np.maximum.accumulate(pos, axis=1), axis=1)
    change = (filled[:, 1:] != filled[:, :-1]) & (filled[:, :-1] != 0)
    return torch.from_numpy(change.sum(axis=(1, 2)).astype(np.int64))


def eigenvector_functions(
    model: torch.nn.Module,
    x_grid: torch.Tensor,
    vectors: torch.Tensor,
    a: float | None = None,
    *,
    eigenvalues: torch.Tensor | None = None,
    params: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    frequency: bool = True,
    train_mode: TrainMode = "eval",
) -> EigenFunctions:
    """``δf_i(x) = J(x) v_i`` on ``x_grid`` (seed 000), with frequency and amplitude.

    Parameters
    ----------
    model : torch.nn.Module
    x_grid : torch.Tensor
        Model inputs ``(n_grid, ...)``; for ``frequency`` a uniform 1-D grid ``(n,)``/``(n, 1)``.
    vectors : torch.Tensor
        ``(P,)`` or ``(P, k)`` directions in the flat parameter order of
        :class:`~interbasis.curvature.params.ParamLayout` (e.g. ``Eigenpairs.vectors``).
    a : float, optional
        Step of seed 000's forward difference, reported beside the JVP.
    eigenvalues : torch.Tensor, optional
        ``(k,)`` eigenvalues of ``vectors``, carried into the result.
    params, dtype
        As in :class:`~interbasis.curvature.objective.Objective` (float64 default).
    frequency : bool
        Compute the spectral centroid and sign changes (needs a 1-D grid).
    train_mode : {"eval", "error", "keep"}
        A model in train mode: the functions of an eval-mode copy (default, with a warning),
        refused (:class:`~interbasis.errors.DataError`) or the model as it is; the model is
        evaluated on copies of its buffers, so the caller's model is never changed
        (:mod:`interbasis.train_mode`).
    """
    model = analysed_model(model, train_mode, "eigenvector functions")
    refuse_running_stats(model, train_mode, "eigenvector functions")
    layout = ParamLayout.from_model(model, params)
    V = torch.as_tensor(vectors).to(dtype)
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or V.shape[0] != layout.size:
        raise ShapeError(
            f"vectors of shape {tuple(V.shape)} do not fit P={layout.size} parameters "
            "(expected (P,) or (P, k))"
        )
    n_values = None if eigenvalues is None else torch.as_tensor(eigenvalues).reshape(-1).shape[0]
    if n_values is not None and n_values != V.shape[1]:
        raise ShapeError(
            f"eigenvalues: {n_values} values for {V.shape[1]} vectors (columns of vectors); "
            "pass one eigenvalue per vector"
        )
    if a is not None and not (np.isfinite(a) and a != 0):
        raise DataError(f"finite-difference step a must be finite and non-zero, got {a}")
    theta = layout.gather(model, dtype)
    fixed = {n: p.detach().to(dtype) for n, p in model.named_parameters() if n not in layout.names}
    fixed.update(  # copies: a forward pass must never write into the caller's buffers
        {
            n: (b.detach().to(dtype) if b.is_floating_point() else b.detach()).clone()
            for n, b in model.named_buffers()
        }
    )
    x = x_grid.detach().to(dtype) if x_grid.is_floating_point() else x_grid.detach()

    def f(t: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {**fixed, **layout.unflatten(t)}, (x,))
        return out.reshape(out.shape[0], -1)

    with torch.no_grad():
        f0 = f(theta)
        dfs = vmap(lambda v: jvp(f, (theta,), (v,))[1], in_dims=1)(V)  # (k, n, d_out)
        fd = None
        if a is not None:
            fd = vmap(lambda v: (f(theta + a * v) - f0) / a, in_dims=1)(V)
    if not bool(torch.isfinite(dfs).all()):
        bad = int((~torch.isfinite(dfs)).sum())
        raise NonFiniteError(
            f"eigenvector functions: the JVP has {bad} NaN/Inf entries; check the model's "
            "parameters, x_grid and vectors for NaN/Inf or overflow"
        )
    dfs64 = dfs.to(torch.float64)
    return EigenFunctions(
        jvp=dfs64,
        finite_difference=None if fd is None else fd.to(torch.float64),
        frequency=spectral_centroid(dfs64, x_grid) if frequency else None,
        sign_changes=sign_changes(dfs64) if frequency else None,
        amplitude=dfs64.pow(2).mean(dim=(1, 2)).sqrt(),
        eigenvalues=None
        if eigenvalues is None
        else torch.as_tensor(eigenvalues).reshape(-1).to(torch.float64),
    )
