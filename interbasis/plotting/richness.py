"""Figures for seed 001: the spectral view (Fig. 3 / 12) and D_LR over training (Table 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from interbasis.errors import DataError
from interbasis.richness import FeatureView


def plot_feature_view(
    views: FeatureView | Mapping[str, FeatureView],
    *,
    max_k: int | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Draw Π*(k), Π̂(k) and ρ_k/ρ_1 side by side (seed 001 eq. 5, Fig. 3).

    Parameters
    ----------
    views
        One :class:`~interbasis.richness.FeatureView` or ``{label: view}`` (one line each; the
        label is shown with D_eff).
    max_k
        Show k = 1..max_k (default: all).
    axes
        Three axes to draw into (default: a new 1×3 figure).
    """
    items = {"": views} if isinstance(views, FeatureView) else dict(views)
    if axes is None:
        fig, ax_arr = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
        axes = list(ax_arr)
    if len(axes) != 3:
        raise DataError(
            f"axes must hold 3 axes (quality, utilisation, spectrum), got {len(axes)}; pass "
            "axes=None for a new 1x3 figure"
        )
    fig = cast(Figure, axes[0].figure)
    for label, view in items.items():
        rho = view.rho.numpy()
        k_max = len(rho) if max_k is None else min(max_k, len(rho))
        k = np.arange(1, k_max + 1)
        name = f"{label} (D_eff={view.d_eff:.1f})" if label else f"D_eff={view.d_eff:.1f}"
        axes[0].plot(k, view.pi_star.numpy()[:k_max], label=name)
        axes[1].plot(k, view.pi_hat.numpy()[:k_max], label=name)
        axes[2].semilogy(k, rho[:k_max] / rho[0], label=name)
    titles = ["(i) quality Π*(k)", "(ii) utilisation Π̂(k)", "(iii) ρ_k / ρ_1"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("k (eigenfunction index)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=8)
    return fig


def plot_richness_history(
    steps: Sequence[float],
    richness: Mapping[str, Sequence[float]],
    accuracies: Mapping[str, Sequence[float]] | None = None,
    *,
    accuracy_steps: Sequence[float] | None = None,
    marks: Mapping[str, float] | None = None,
    log_richness: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Accuracies (left axis) and D_LR-like curves (right axis) on one time axis.

    Parameters
    ----------
    steps
        Steps at which ``richness`` was recorded.
    richness
        ``{label: values}`` such as train/test D_LR, each ``len(steps)`` long.
    accuracies
        ``{label: values}`` at ``accuracy_steps`` (default: ``steps``).
    marks
        ``{label: step}`` drawn as vertical lines (e.g. memorisation and grokking points).
    log_richness
        Logarithmic right axis (D_LR spans 1e-4 to 1 during grokking).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    fig = cast(Figure, ax.figure)
    x_acc = steps if accuracy_steps is None else accuracy_steps
    for label, values in (accuracies or {}).items():
        ax.plot(x_acc, values, lw=1.2, alpha=0.8, label=label)
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    right = ax.twinx()
    for i, (label, values) in enumerate(richness.items()):
        right.plot(steps, values, ls="--", color=f"C{i + len(accuracies or {})}", label=label)
    if log_richness:
        right.set_yscale("log")
    right.set_ylabel("D_LR")
    for i, (label, step) in enumerate((marks or {}).items()):
        ax.axvline(step, color=["green", "red", "gray"][i % 3], lw=1, ls=":", label=label)
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    return fig
