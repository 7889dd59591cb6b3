"""Figures for deep Jacobian spectra (seed 002): spectra vs depth, separation, alignment.

Every function draws into ``ax`` when given (else a new figure) and returns the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from interbasis.jacobian_spectra.lyapunov import LyapunovResult

__all__ = [
    "plot_alignment",
    "plot_basis_angles",
    "plot_log_singular_values",
    "plot_lyapunov_convergence",
    "plot_separation",
]


def _axes(ax: Axes | None, size: tuple[float, float] = (5.0, 3.6)) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=size, constrained_layout=True)
        return fig, ax
    return ax.get_figure(), ax  # type: ignore[return-value]


def plot_log_singular_values(
    depths: ArrayLike,
    log_sigma: ArrayLike,
    slopes: ArrayLike | None = None,
    intercepts: ArrayLike | None = None,
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Figure:
    """``log σ_k(J_{0:l})`` vs ``l`` (points) with predicted lines ``λ_k l + c_k`` (dashed).

    ``depths`` ``(n,)``, ``log_sigma`` ``(n, k)`` (e.g. the mean over inputs), ``slopes`` and
    ``intercepts`` ``(k,)`` (intercepts default to 0).
    """
    fig, ax = _axes(ax)
    x = np.asarray(depths, dtype=float)
    y = np.asarray(log_sigma, dtype=float).reshape(len(x), -1)
    colors = plt.cm.viridis(np.linspace(0, 0.9, y.shape[1]))
    for j in range(y.shape[1]):
        ax.plot(x, y[:, j], "o", ms=3, color=colors[j], label=f"k={j + 1}" if j < 4 else None)
        if slopes is not None:
            c = 0.0 if intercepts is None else np.asarray(intercepts, dtype=float)[j]
            ax.plot(x, np.asarray(slopes, dtype=float)[j] * x + c, "--", lw=1, color=colors[j])
    ax.set_xlabel("depth l")
    ax.set_ylabel("log σ_k(J_{0:l})")
    ax.set_title(title or "singular values vs depth (dashed: Lyapunov slope)")
    ax.legend(fontsize=7)
    return fig


def plot_separation(
    depths: ArrayLike, curves: Mapping[str, ArrayLike], *, ax: Axes | None = None
) -> Figure:
    """``σ_1 / σ_2`` vs depth on a log axis, one curve per label."""
    fig, ax = _axes(ax)
    x = np.asarray(depths, dtype=float)
    for label, values in curves.items():
        ax.plot(x, np.asarray(values, dtype=float), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("depth l")
    ax.set_ylabel("σ_1 / σ_2 of J_{0:l}")
    ax.set_title("spectral separation")
    ax.legend(fontsize=7)
    return fig


def plot_alignment(
    depths: ArrayLike,
    curves: Mapping[str, ArrayLike],
    baselines: Mapping[str, float] | None = None,
    *,
    ax: Axes | None = None,
    ylabel: str = "alignment",
    xlabel: str = "depth l",
    title: str = "",
) -> Figure:
    """Alignment measures vs depth/cut (solid) with random baselines (dotted horizontal)."""
    fig, ax = _axes(ax)
    x = np.asarray(depths, dtype=float)
    for label, values in curves.items():
        ax.plot(x, np.asarray(values, dtype=float), marker="o", ms=3, label=label)
    for label, value in (baselines or {}).items():
        ax.axhline(value, ls=":", color="gray", lw=1)
        ax.annotate(label, (x[-1], value), fontsize=7, color="gray", va="bottom", ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "singular-vector alignment")
    ax.legend(fontsize=7)
    return fig


def plot_lyapunov_convergence(
    result: LyapunovResult, theory: ArrayLike | None = None, *, ax: Axes | None = None
) -> Figure:
    """Running QR estimates of ``λ_k`` vs steps, with the closed form (dashed) if given."""
    fig, ax = _axes(ax)
    steps = np.arange(1, len(result.running) + 1)
    colors = plt.cm.viridis(np.linspace(0, 0.9, result.running.shape[1]))
    for j in range(result.running.shape[1]):
        ax.plot(steps, result.running[:, j], color=colors[j], lw=1, label=f"λ_{j + 1}")
        if theory is not None:
            ax.axhline(np.asarray(theory, dtype=float)[j], ls="--", color=colors[j], lw=1)
    ax.set_xlabel("steps (layers)")
    ax.set_ylabel("running estimate")
    ax.set_title("Lyapunov exponents (QR iteration)")
    ax.legend(fontsize=7)
    return fig


def plot_basis_angles(
    layers: Sequence[str], angles: Mapping[str, ArrayLike], *, ax: Axes | None = None
) -> Figure:
    """Principal angles (degrees) per node layer, one curve per basis kind / label."""
    fig, ax = _axes(ax)
    x = np.arange(len(layers))
    for label, values in angles.items():
        ax.plot(x, np.degrees(np.asarray(values, dtype=float)), marker="o", ms=3, label=label)
    ax.set_xticks(x, list(layers), rotation=90, fontsize=6)
    ax.set_ylim(0, 92)
    ax.set_ylabel("principal angle (deg)")
    ax.set_title("Jacobian directions vs basis directions")
    ax.legend(fontsize=7)
    return fig
