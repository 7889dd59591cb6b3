"""Layered drawing: pruned edges, widths ∝ weight, sizes ∝ Λ, module colours, no label overlap."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_rgba

from graphs import GraphWriteError, InteractionGraph, InvalidGraphError, NodeLayer
from graphs.draw import UNASSIGNED_COLOUR, draw_graph, node_areas


def make_graph(sizes: list[int], seed: int = 0) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    layers = []
    for k, n in enumerate(sizes):
        eig = np.sort(rng.uniform(0.01, 1.0, n))[::-1]
        const = np.zeros(n, dtype=bool)
        if k < len(sizes) - 1:
            eig[0], const[0] = np.nan, True
        layers.append(NodeLayer(f"blocks.{k}", n, eig, const, np.ones(n)))
    edges = []
    for a, b in itertools.pairwise(layers):
        e = rng.lognormal(0.0, 2.0, (b.size, a.size))
        e[:, a.is_constant] = 0.0
        e[b.is_constant, :] = 0.0
        edges.append(e)
    return InteractionGraph(layers, edges, {})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_large_graph_draws_pruned_edges_without_node_labels(tmp_path) -> None:
    g = make_graph([150, 150, 120])
    ax = draw_graph(g, prune=0.8, max_edges_per_pair=2500, path=tmp_path / "g.png")
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [len(c.get_segments()) for c in lines] == [min(n, 2500) for n in g.edges_needed(0.8)]
    for c, e in zip(lines, g.edges, strict=True):
        widths = np.sort(np.asarray(c.get_linewidths()))[::-1]
        kept = np.sort(e.ravel())[::-1][: widths.size]
        np.testing.assert_allclose(widths, 3.0 * kept / kept[0], rtol=1e-12)  # width ∝ E
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"blocks.{k}\n({n})" for k, n in enumerate([150, 150, 120])]  # titles only
    assert (tmp_path / "g.png").stat().st_size > 10_000
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_node_areas_follow_eigenvalues() -> None:
    eig = np.array([np.nan, 4.0, 2.0, 1.0, 0.0])
    areas = node_areas(eig, (5.0, 200.0))
    np.testing.assert_allclose(areas, [5.0, 200.0, 100.0, 50.0, 5.0])  # ∝ Λ/max Λ, clipped
    g = make_graph([6, 5])
    ax = draw_graph(g)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    sizes = scatters[0].get_sizes()
    assert np.all(np.diff(sizes[1:]) <= 0)  # eigenvalues are sorted descending


def test_module_colours() -> None:
    g = make_graph([8, 8, 6])
    membership = {nid: (k % 3 if k % 5 else -1) for k, nid in enumerate(g.node_ids())}
    for layer in g.layers:
        if layer.has_constant:
            membership.pop(f"{layer.name}:0")
    ax = draw_graph(g.with_modules(membership))
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)][: len(g.layers)]
    colours = {}
    for layer, sc in zip(g.layers, scatters, strict=True):
        for i, rgba in enumerate(sc.get_facecolors()):
            colours[f"{layer.name}:{i}"] = tuple(np.round(rgba, 6))
    grey = tuple(np.round(to_rgba(UNASSIGNED_COLOUR), 6))
    by_module: dict[int, set] = {}
    for nid, colour in colours.items():
        by_module.setdefault(membership.get(nid, -1), set()).add(colour)
    assert by_module[-1] == {grey}  # unassigned and constant nodes are grey
    module_colours = [by_module[m] for m in (0, 1, 2)]
    assert all(len(c) == 1 for c in module_colours)  # one colour per module ...
    assert len(set().union(*module_colours) | {grey}) == 4  # ... all distinct
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "module 0",
        "module 1",
        "module 2",
    }


def test_labels_do_not_overlap() -> None:
    g = make_graph([30, 12, 5])
    ax = draw_graph(g, label_limit=40)
    fig = ax.get_figure()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 30 + 12 + 5 + 3  # node labels and the three titles
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def test_bad_input() -> None:
    with pytest.raises(InvalidGraphError, match="empty graph"):
        draw_graph(InteractionGraph([], [], {}))
    with pytest.raises(InvalidGraphError, match="fraction"):
        draw_graph(make_graph([3, 3]), prune=0.0)


def test_unwritable_path(tmp_path) -> None:
    with pytest.raises(GraphWriteError, match="does not exist"):
        draw_graph(make_graph([3, 3]), path=tmp_path / "missing" / "g.png")
    assert list(tmp_path.iterdir()) == []
