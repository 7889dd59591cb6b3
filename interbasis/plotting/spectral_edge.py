"""Figures for the spectral edge: σ history, functional-mode heatmaps, spectra, controls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def plot_edge_history(
    history: Mapping[str, np.ndarray], grok_step: int | None = None, n_sigma: int = 5
) -> Figure:
    """σ_1…σ_n of the update window, gap ratios and the gradient share of the edge energy.

    σ below 1e-10·σ_1 (round-off beyond the rank of a short centred window) are not drawn.

    Parameters
    ----------
    history : mapping
        :attr:`SpectralEdgeTracker.history`.
    grok_step : int, optional
        Marked with a dashed vertical line.
    """
    steps = np.asarray(history["step"])
    sigma = np.array(history["sigma"], dtype=np.float64)
    # σ at round-off level (beyond a short centred window's rank) are not drawn
    sigma[sigma <= np.nanmax(sigma, axis=1, keepdims=True) * 1e-10] = np.nan
    gaps = np.asarray(history["gap_ratio"])
    share = np.asarray(history.get("grad_share", np.full(steps.shape, np.nan)))
    panels = 3 if np.isfinite(share).any() else 2
    fig, axes = plt.subplots(panels, 1, figsize=(6.5, 2.3 * panels), sharex=True)
    for j in range(min(n_sigma, sigma.shape[1] if sigma.ndim == 2 else 0)):
        axes[0].semilogy(steps, sigma[:, j], label=f"σ{j + 1}")
    axes[0].set_ylabel("singular value")
    axes[0].legend(fontsize=7, ncol=5)
    for j in range(min(3, gaps.shape[1] if gaps.ndim == 2 else 0)):
        axes[1].plot(steps, gaps[:, j], label=f"σ{j + 1}/σ{j + 2}")
    axes[1].set_ylabel("gap ratio")
    axes[1].legend(fontsize=7, ncol=3)
    if panels == 3:
        axes[2].plot(steps, share, color="k")
        axes[2].set_ylim(0, 1)
        axes[2].set_ylabel("gradient share\nof edge energy")
    for ax in axes:
        if grok_step is not None:
            ax.axvline(grok_step, color="gray", ls="--", lw=1)
    axes[-1].set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def plot_mode_heatmaps(
    fields: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 4, cmap: str = "viridis"
) -> Figure:
    """One heatmap f_v(a, b) per direction (a = row, b = column)."""
    n = len(fields)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, field, title in zip(axes.ravel(), fields, titles, strict=False):
        ax.imshow(np.asarray(field), cmap=cmap, origin="lower")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("b", fontsize=7)
        ax.set_ylabel("a", fontsize=7)
    fig.tight_layout()
    return fig


def plot_concentration_spectra(
    powers: Mapping[str, np.ndarray], title: str = "", controls: Sequence[np.ndarray] = ()
) -> Figure:
    """Normalised power P_ω of group means for each labelled direction; controls in gray."""
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    for i, power in enumerate(controls):
        ax.plot(
            np.arange(1, len(power) + 1),
            power,
            color="0.75",
            lw=0.8,
            label="random" if i == 0 else None,
        )
    for label, power in powers.items():
        ax.plot(np.arange(1, len(power) + 1), power, lw=1.4, label=label)
    ax.set_xlabel("frequency ω")
    ax.set_ylabel("power share")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_controls(
    groups: Mapping[str, Sequence[float]],
    ylabel: str = "concentration F",
    title: str = "",
    ax: Axes | None = None,
) -> Figure:
    """Strip plot of a measure per group of directions (edge, bulk, random), with mean ± 2 std.

    Draws into ``ax`` when given (and returns its figure).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    for i, values in enumerate(groups.values()):
        v = np.asarray(values, dtype=np.float64)
        ax.scatter(i + 0.08 * rng.standard_normal(v.size), v, s=14)
        if v.size >= 2:
            ax.errorbar(
                i + 0.3, v.mean(), yerr=2 * v.std(ddof=1), fmt="o", color="k", ms=3, capsize=3
            )
    ax.set_xticks(range(len(groups)), list(groups), fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
