"""Figures of the links between the interaction graph and the other views (the atlas).

Each function takes plain numbers (lists, dicts, arrays: the atlas JSON) and returns a
matplotlib ``Figure``; :func:`figure_png` turns one into PNG bytes for embedding.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_hessian_shares(
    eigenvalues: Sequence[float], columns: Sequence[str], shares: Sequence[Sequence[float]]
) -> Figure:
    """Heatmap of each eigenvector's shares (rows, labelled by λ) per module / category."""
    data = np.asarray(shares, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(columns), 0.8 + 0.28 * len(eigenvalues)))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(eigenvalues)), [f"λ = {v:.3g}" for v in eigenvalues])
    ax.set_title("Hessian eigenvector energy by module")
    fig.colorbar(im, ax=ax, label="share")
    fig.tight_layout()
    return fig


def plot_dlr(
    layers: Mapping[str, float], neurons: Mapping[str, float], modules: Mapping[str, float]
) -> Figure:
    """D_LR per node layer (interaction basis vs neurons) and per module."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = list(layers)
    x = np.arange(len(names))
    a1.bar(x - 0.2, [layers[n] for n in names], 0.4, label="interaction nodes")
    a1.bar(x + 0.2, [neurons[n] for n in names], 0.4, label="neurons (= PCA)")
    a1.set_xticks(x, names, rotation=30, ha="right")
    a1.set_ylabel("D_LR")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    a1.set_title("per node layer")
    keys = list(modules)
    a2.bar(np.arange(len(keys)), [modules[k] for k in keys], color="C2")
    a2.set_xticks(np.arange(len(keys)), keys, rotation=30, ha="right")
    a2.set_ylim(0, 1)
    a2.set_title("per module (its nodes alone)")
    fig.tight_layout()
    return fig


def plot_edge_movement(
    names: Sequence[str],
    columns: Sequence[str],
    moved: Sequence[Sequence[float]],
    match: Sequence[float] | None = None,
    control_match: Sequence[float] | None = None,
) -> Figure:
    """Module movement of each direction (heatmap) and its Fourier match vs controls."""
    data = np.asarray(moved, dtype=np.float64)
    panels = 2 if match is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels + 1, 0.9 + 0.35 * len(names)))
    ax = axes[0] if panels == 2 else axes
    im = ax.imshow(data, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("layer-normalised movement per module")
    fig.colorbar(im, ax=ax)
    if match is not None:
        ax2 = axes[1]
        shown = [np.nan if m is None else m for m in match]
        ax2.barh(range(len(names)), shown, color="C0", label="direction", zorder=2, alpha=0.85)
        if control_match is not None and len(control_match):
            ctrl = np.array([np.nan if m is None else m for m in control_match], dtype=float)
            mean, std = float(np.nanmean(ctrl)), float(np.nanstd(ctrl))
            ax2.axvspan(mean - std, mean + std, color="0.85", label="random ± std", zorder=0)
            ax2.axvline(mean, color="0.4", zorder=1)
        ax2.set_yticks(range(len(names)), names)
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("movement on nodes of the mode's frequency")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_series(rows: Sequence[Mapping[str, Any]], marks: Mapping[str, int | None]) -> Figure:
    """Graph size, modules, stability, D_LR, top λ, spectral gap and accuracies over steps."""
    steps = np.array([r["step"] for r in rows], dtype=np.float64)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    panels = [
        ("graph size", ["graph_size", "assigned_nodes"]),
        ("modules / stability", ["n_modules", "stability"]),
        ("D_LR", ["d_lr"] + [k for k in rows[0] if k.startswith("d_lr:")]),
        ("top Hessian eigenvalue", ["lambda_1"]),
        ("spectral gap σ1/σ2", ["gap"]),
        ("accuracy", ["train_acc", "test_acc"]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.6), sharex=True)
    for ax, (title, keys) in zip(axes.ravel(), panels, strict=True):
        for key in keys:
            ax.plot(steps, col(key), "o-", ms=3, label=key)
        if title.startswith("top Hessian"):
            ax.set_yscale("log")
        for (label, step), style in zip(marks.items(), (":", "--"), strict=False):
            if step is not None:
                ax.axvline(step, color="grey", linestyle=style, label=f"{label}")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig
