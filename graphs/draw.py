"""Layered drawing of an interaction graph (matplotlib).

Layers are columns (forward order left to right), nodes are stacked by index (node 0 on top;
in the interaction basis that is the largest Λ), node area ∝ Λ (relative to the layer's
largest Λ), edge width ∝ E (relative to the pair's largest drawn edge), colours = modules
when attached. For large layers only the edges carrying ``prune`` of each pair's weight are
drawn (at most ``max_edges_per_pair``), markers shrink to the node spacing and node labels
are left out, so nothing overlaps. Edges inside a module take its colour.
Edges are drawn as one ``LineCollection`` per layer pair and nodes as one scatter per layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from graphs.errors import InvalidGraphError
from graphs.export import atomic_write
from graphs.graph import InteractionGraph

UNASSIGNED_COLOUR = "#b0b0b0"
NODE_COLOUR = "#1f77b4"
_Y_LOW, _Y_HIGH = -0.02, 1.12  # node y in (0, 1); room above for the layer titles


def node_positions(graph: InteractionGraph) -> list[np.ndarray]:
    """(x, y) of every node per layer: x = layer index, y in (0, 1), node 0 on top."""
    out = []
    for li, layer in enumerate(graph.layers):
        y = 1.0 - (np.arange(layer.size) + 0.5) / max(layer.size, 1)
        out.append(np.column_stack([np.full(layer.size, float(li)), y]))
    return out


def node_areas(eigenvalues: np.ndarray, size_range: tuple[float, float]) -> np.ndarray:
    """Marker areas ∝ Λ / max Λ of the layer, clipped to ``size_range`` (NaN -> smallest)."""
    lo, hi = size_range
    lam = np.where(np.isfinite(eigenvalues), np.maximum(eigenvalues, 0.0), 0.0)
    top = lam.max(initial=0.0)
    rel = lam / top if top > 0 else np.zeros_like(lam)
    return np.clip(hi * rel, lo, hi)


def module_colours(n_modules: int) -> list[Any]:
    """Distinct colours for ``n_modules`` modules (tab10, tab20, then a sampled hsv)."""
    if n_modules <= 10:
        return list(plt.get_cmap("tab10").colors)[:n_modules]  # type: ignore[attr-defined]
    if n_modules <= 20:
        return list(plt.get_cmap("tab20").colors)[:n_modules]  # type: ignore[attr-defined]
    return [plt.get_cmap("hsv")(k / n_modules) for k in range(n_modules)]


def draw_graph(
    graph: InteractionGraph,
    ax: Axes | None = None,
    *,
    prune: float = 0.9,
    max_edges_per_pair: int = 3000,
    colour_modules: bool = True,
    label_limit: int = 40,
    size_range: tuple[float, float] = (4.0, 250.0),
    max_linewidth: float = 3.0,
    path: str | os.PathLike[str] | None = None,
) -> Axes:
    """Draw ``graph`` as layered columns and return the Axes.

    Parameters
    ----------
    graph : InteractionGraph
    ax : matplotlib Axes, optional
        Drawn into a new figure sized to the graph when omitted.
    prune : float in (0, 1]
        Draw only the largest edges making up this share of each pair's weight
        (:meth:`InteractionGraph.prune`).
    max_edges_per_pair : int
        Hard cap on drawn edges per layer pair (largest first).
    colour_modules : bool
        Colour nodes by ``graph.modules`` when attached (grey = unassigned/constant).
    label_limit : int
        Node indices are written only for layers with at most this many nodes.
    size_range : (float, float)
        Smallest and largest marker area (points²); capped so neighbouring markers never touch.
    max_linewidth : float
        Width of the strongest edge of each pair.
    path : path, optional
        Also save the figure there (atomic; format from the suffix, e.g. ``.png``).

    Raises
    ------
    InvalidGraphError
        Empty graph or an invalid ``prune``.

    Examples
    --------
    >>> import numpy as np
    >>> from graphs import InteractionGraph, NodeLayer, draw_graph
    >>> layer = lambda n, s: NodeLayer(n, s, np.arange(s, 0, -1.0), np.zeros(s, bool), np.ones(s))
    >>> g = InteractionGraph([layer("a", 3), layer("b", 2)], [np.ones((2, 3))])
    >>> ax = draw_graph(g)
    """
    if graph.n_nodes == 0:
        raise InvalidGraphError("cannot draw an empty graph (it has no nodes)")
    shown = graph.prune(prune)
    pos = node_positions(graph)
    if ax is None:
        height = float(np.clip(0.09 * max(layer.size for layer in graph.layers), 4.0, 24.0))
        _, ax = plt.subplots(figsize=(max(2.4 * len(graph.layers), 4.0), height))
    figure = cast(Figure, ax.get_figure(root=True))
    ax.set_xlim(-0.5, len(graph.layers) - 0.5)
    ax.set_ylim(_Y_LOW, _Y_HIGH)
    ax.set_axis_off()
    axes_height_pt = 72.0 * figure.get_size_inches()[1] * ax.get_position().height
    n_modules = 0
    if colour_modules and graph.modules is not None:
        n_modules = int(max(m.max(initial=-1) for m in graph.modules)) + 1
    palette = module_colours(n_modules)
    for i, e in enumerate(shown.edges):
        out, inp = np.nonzero(e)
        w = e[out, inp]
        order = np.argsort(-w, kind="stable")[:max_edges_per_pair]
        out, inp, w = out[order], inp[order], w[order]
        if w.size == 0:
            continue
        colours: Any = "0.35"
        if n_modules and graph.modules is not None:  # inside a module: its colour
            m_in, m_out = graph.modules[i][inp], graph.modules[i + 1][out]
            colours = [
                palette[a] if a == b and a >= 0 else "0.6"
                for a, b in zip(m_in.tolist(), m_out.tolist(), strict=True)
            ]
        segments = np.stack([pos[i][inp], pos[i + 1][out]], axis=1)
        ax.add_collection(
            LineCollection(
                list(segments),
                linewidths=max_linewidth * w / w.max(),
                colors=colours,
                alpha=float(np.clip(60.0 / np.sqrt(w.size), 0.15, 0.6)),
                zorder=1,
            )
        )
    for li, layer in enumerate(graph.layers):
        spacing_pt = axes_height_pt / (_Y_HIGH - _Y_LOW) / max(layer.size, 1)
        top = min(size_range[1], (0.9 * spacing_pt) ** 2)  # neighbouring markers never touch
        areas = node_areas(layer.eigenvalues, (min(size_range[0], top), top))
        node_colours: list[Any] = [NODE_COLOUR] * layer.size
        if n_modules and graph.modules is not None:
            node_colours = [palette[m] if m >= 0 else UNASSIGNED_COLOUR for m in graph.modules[li]]
        const = layer.is_constant
        node_colours = [
            UNASSIGNED_COLOUR if c else col for c, col in zip(const, node_colours, strict=True)
        ]
        xs, ys = pos[li][:, 0], pos[li][:, 1]
        ax.scatter(xs, ys, s=areas, c=node_colours, edgecolors="k", linewidths=0.3, zorder=2)
        if layer.size <= label_limit:
            font = float(min(8.0, 0.8 * spacing_pt))
            for i, (x, y) in enumerate(pos[li]):
                ax.annotate(
                    "c" if const[i] else str(i),
                    (x, y),
                    xytext=(-0.5 * np.sqrt(areas[i]) - 2.0, 0.0),  # just left of the marker
                    textcoords="offset points",
                    ha="right",
                    va="center",
                    fontsize=font,
                )
        ax.text(li, 1.02, f"{layer.name}\n({layer.size})", ha="center", va="bottom", fontsize=8)
    if n_modules and n_modules <= 20:
        for m, colour in enumerate(palette):
            ax.scatter([], [], c=[colour], s=30, label=f"module {m}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    if path is not None:
        fmt = Path(path).suffix.lstrip(".") or "png"
        atomic_write(path, lambda h: figure.savefig(h, format=fmt, dpi=150, bbox_inches="tight"))
    return ax
