"""Figures for :mod:`interbasis.curvature`: spectra, eigenvector functions, frequency vs |λ|."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from interbasis.curvature import EigenFunctions


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def plot_spectrum(
    ax: Axes, eigenvalues: torch.Tensor, floor: float | None = None, label: str = ""
) -> None:
    """|λ| in descending order of |λ| on a log axis; negative eigenvalues as open red marks.

    ``floor`` (from :func:`~interbasis.curvature.numerical_floor`) is drawn as a dashed line.
    """
    vals = _np(eigenvalues)
    order = np.argsort(-np.abs(vals))
    mags, neg = np.abs(vals[order]), vals[order] < 0
    idx = np.arange(1, len(vals) + 1)
    line = ax.semilogy(idx, np.maximum(mags, 1e-300), lw=1, label=label)[0]
    ax.scatter(idx[neg], mags[neg], s=8, facecolors="none", edgecolors="tab:red", lw=0.6)
    if floor is not None:
        ax.axhline(floor, color=line.get_color(), ls="--", lw=0.8)
    ax.set_xlabel("mode (sorted by |λ|)")
    ax.set_ylabel("|λ|")


def plot_eigenvector_functions(
    axes: Sequence[Axes],
    x: torch.Tensor,
    functions: EigenFunctions,
    indices: Sequence[int],
    eigenvalues: torch.Tensor | None = None,
    floor: float | None = None,
) -> None:
    """One panel per mode ``indices[i]``: ``δf`` (first output) on the grid ``x``.

    Titles give the mode index and λ, marked "< floor" when ``|λ|`` is below ``floor``.
    """
    xs = _np(x).reshape(-1)
    vals = functions.eigenvalues if eigenvalues is None else eigenvalues
    for ax, i in zip(axes, indices, strict=True):
        ax.plot(xs, _np(functions.jvp[i, :, 0]), lw=1)
        title = f"#{i}"
        if vals is not None:
            title += f"  λ={float(vals[i]):.2g}"
            if floor is not None and abs(float(vals[i])) < floor:
                title += " < floor"
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)


def plot_frequency_vs_eigenvalue(
    ax: Axes,
    eigenvalues: torch.Tensor,
    frequency: torch.Tensor,
    floor: float | None = None,
    label: str = "",
    **scatter: Any,
) -> None:
    """Frequency of each ``δf_i`` against ``|λ_i|`` (log x); dashed line at the floor."""
    mags, freq = np.abs(_np(eigenvalues)), _np(frequency)
    ok = np.isfinite(freq) & (mags > 0)
    points = ax.scatter(mags[ok], freq[ok], s=6, label=label, **scatter)
    if floor is not None:
        ax.axvline(floor, color=points.get_facecolor()[0], ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("|λ|")
    ax.set_ylabel("spectral centroid of δf (cycles / unit x)")


def plot_sharpness(history: Sequence[dict[str, Any]]) -> Figure:
    """Top eigenvalues and ``2/lr`` over training from :class:`CurvatureTracker` history."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = [h["step"] for h in history]
    eigs = np.array([h["eigenvalues"] for h in history])
    for j in range(eigs.shape[1]):
        ax.plot(steps, eigs[:, j], lw=1, label="λ_max" if j == 0 else None)
    ax.plot(steps, [h["two_over_lr"] for h in history], "k--", lw=1, label="2 / lr")
    ax.set_xlabel("step")
    ax.set_ylabel("top Hessian eigenvalues")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
