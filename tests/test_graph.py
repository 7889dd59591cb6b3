"""InteractionGraph and NodeLayer: validation, node ids, networkx/igraph views, prune, save/load."""

from __future__ import annotations

import itertools
import json
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs import (
    GraphFormatError,
    GraphWriteError,
    InteractionGraph,
    InvalidGraphError,
    NodeLayer,
    UnknownNodeError,
)


def make_layer(name: str, size: int, rng: np.random.Generator, constant: bool = True) -> NodeLayer:
    eig = np.sort(rng.uniform(0.1, 2.0, size))[::-1]
    is_const = np.zeros(size, dtype=bool)
    var = rng.uniform(0.0, 1.0, size)
    if constant:
        eig[0], is_const[0], var[0] = np.nan, True, 0.0
    return NodeLayer(name, size, eig, is_const, var)


def make_graph(sizes: list[int], seed: int = 0, density: float = 0.7) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    layers = [
        make_layer(f"blocks.{i}", n, rng, constant=i < len(sizes) - 1) for i, n in enumerate(sizes)
    ]
    edges = []
    for a, b in itertools.pairwise(layers):
        e = rng.exponential(1.0, (b.size, a.size)) * (rng.random((b.size, a.size)) < density)
        e[:, a.is_constant] = 0.0
        e[b.is_constant, :] = 0.0
        edges.append(e)
    return InteractionGraph(layers, edges, {"model": "synthetic", "seed": seed})


# ------------------------------------------------------------------------------ validation
def test_node_layer_rejects_bad_shapes_and_values() -> None:
    ok = dict(eigenvalues=np.ones(3), is_constant=np.zeros(3, bool), activation_variance=np.ones(3))
    with pytest.raises(InvalidGraphError, match=r"layer 'h'.*eigenvalues.*\(2,\).*\(3,\)"):
        NodeLayer("h", 3, **{**ok, "eigenvalues": np.ones(2)})
    with pytest.raises(InvalidGraphError, match="node 2 is marked constant"):
        NodeLayer("h", 3, **{**ok, "is_constant": np.array([False, False, True])})
    with pytest.raises(InvalidGraphError, match="inf"):
        NodeLayer("h", 3, **{**ok, "eigenvalues": np.array([1.0, np.inf, 1.0])})
    with pytest.raises(InvalidGraphError, match="activation_variance"):
        NodeLayer("h", 3, **{**ok, "activation_variance": np.array([1.0, -1.0, 1.0])})
    with pytest.raises(InvalidGraphError, match="non-empty string"):
        NodeLayer("", 3, **ok)
    with pytest.raises(InvalidGraphError, match="size must be an int"):
        NodeLayer("h", 3.0, **ok)  # type: ignore[arg-type]


def test_graph_validation_names_the_layer_pair() -> None:
    g = make_graph([3, 4, 2])
    layers, edges = g.layers, [np.array(e) for e in g.edges]
    with pytest.raises(InvalidGraphError, match=r"'blocks.0' -> 'blocks.1'.*\(3, 4\).*\(4, 3\)"):
        InteractionGraph(layers, [edges[0].T, edges[1]], {})
    for bad, what in ((np.nan, "NaN"), (-0.5, "negative")):
        broken = np.array(edges[1])
        broken[1, 1] = bad
        with pytest.raises(InvalidGraphError, match=f"'blocks.1' -> 'blocks.2'.*{what}"):
            InteractionGraph(layers, [edges[0], broken], {})
    touching = np.array(edges[0])
    touching[1, 0] = 1.0  # column 0 = constant node of blocks.0
    with pytest.raises(InvalidGraphError, match="constant node"):
        InteractionGraph(layers, [touching, edges[1]], {})
    with pytest.raises(InvalidGraphError, match="need 2 edge matrices, got 1"):
        InteractionGraph(layers, [edges[0]], {})
    with pytest.raises(InvalidGraphError, match="unique"):
        InteractionGraph([layers[0], layers[0]], [np.zeros((3, 3))], {})


def test_edges_are_copied_and_read_only() -> None:
    g = make_graph([3, 4])
    source = np.array(g.edges[0])
    g2 = InteractionGraph(g.layers, [source], {})
    source[1, 1] = 123.0
    assert g2.edges[0][1, 1] != 123.0
    assert g2.edges[0].dtype == np.float64
    with pytest.raises(ValueError, match="read-only"):
        g2.edges[0][1, 1] = 1.0


def test_empty_graph_is_allowed_but_has_no_nodes() -> None:
    g = InteractionGraph([], [], {})
    assert g.n_nodes == 0
    assert g.to_networkx().number_of_nodes() == 0


# ------------------------------------------------------------------------------ node ids
def test_node_ids_and_locate() -> None:
    g = make_graph([3, 4, 2])
    ids = g.node_ids()
    assert ids[:4] == ["blocks.0:0", "blocks.0:1", "blocks.0:2", "blocks.1:0"]
    assert len(ids) == g.n_nodes == 9
    for k, nid in enumerate(ids):
        li, i = g.locate(nid)
        assert g.layers[li].node_ids()[i] == nid
        assert sum(layer.size for layer in g.layers[:li]) + i == k
    for bad in ("blocks.0:3", "blocks.9:0", "blocks.0", "blocks.0:x"):
        with pytest.raises(UnknownNodeError, match=bad):
            g.locate(bad)
    assert issubclass(UnknownNodeError, KeyError)


# ------------------------------------------------------------------------------ views
def test_to_networkx_matches_the_matrices() -> None:
    g = make_graph([4, 5, 3], seed=1)
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph)
    assert G.number_of_nodes() == g.n_nodes
    assert G.number_of_edges() == sum(int(np.count_nonzero(e)) for e in g.edges)
    for nid, attrs in G.nodes(data=True):
        li, i = g.locate(nid)
        layer = g.layers[li]
        assert (attrs["layer"], attrs["layer_index"], attrs["index"]) == (layer.name, li, i)
        assert isinstance(attrs["is_constant"], bool) and isinstance(attrs["index"], int)
        assert attrs["is_constant"] == bool(layer.is_constant[i])
        np.testing.assert_equal(attrs["eigenvalue"], layer.eigenvalues[i])
        assert attrs["activation_variance"] == layer.activation_variance[i]
        if attrs["is_constant"]:
            assert G.degree(nid) == 0
    # brute force: every matrix entry appears as exactly that forward edge
    for k, e in enumerate(g.edges):
        for out in range(e.shape[0]):
            for inp in range(e.shape[1]):
                u, v = f"blocks.{k}:{inp}", f"blocks.{k + 1}:{out}"
                assert G.has_edge(u, v) == (e[out, inp] > 0)
                if e[out, inp] > 0:
                    assert G.edges[u, v]["weight"] == e[out, inp]
    assert G.graph["metadata"] == g.metadata


def test_to_igraph_matches_networkx() -> None:
    g = make_graph([4, 5, 3], seed=2)
    G, I = g.to_networkx(), g.to_igraph()
    assert (
        I.is_directed() and I.vcount() == G.number_of_nodes() and I.ecount() == G.number_of_edges()
    )
    for edge in I.es:
        u, v = I.vs[edge.source]["name"], I.vs[edge.target]["name"]
        assert G.edges[u, v]["weight"] == edge["weight"]
    for vertex in I.vs:
        attrs = G.nodes[vertex["name"]]
        assert vertex["layer"] == attrs["layer"] and vertex["is_constant"] == attrs["is_constant"]


# ------------------------------------------------------------------------------ prune
def test_prune_closed_form() -> None:
    layers = [NodeLayer(n, 2, np.ones(2), np.zeros(2, bool), np.ones(2)) for n in "ab"]
    g = InteractionGraph(layers, [np.array([[4.0, 1.0], [2.0, 3.0]])], {})
    assert g.edges_needed(0.7) == [2]  # 4 + 3 = 7 = 70 % of 10
    np.testing.assert_array_equal(g.prune(0.7).edges[0], [[4.0, 0.0], [0.0, 3.0]])
    assert g.edges_needed(0.71) == [3]
    assert g.edges_needed(1.0) == [4]
    for bad in (0.0, 1.5, -1.0, float("nan")):
        with pytest.raises(InvalidGraphError, match="fraction"):
            g.prune(bad)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.01, 1.0))
def test_prune_keeps_the_fewest_largest_edges(seed: int, fraction: float) -> None:
    g = make_graph([5, 6, 4], seed=seed)
    pruned = g.prune(fraction)
    assert pruned.edges_needed(1.0) == g.edges_needed(fraction)
    for e, p in zip(g.edges, pruned.edges, strict=True):
        kept, dropped = p[p > 0], e[(e > 0) & (p == 0)]
        np.testing.assert_array_equal(p[p > 0], e[p > 0])  # kept edges are unchanged
        total = e.sum()
        assert kept.sum() >= fraction * total * (1 - 1e-12)  # reaches the fraction ...
        assert kept.sum() - kept.min() < fraction * total  # ... and needs every kept edge
        if dropped.size:
            assert kept.min() >= dropped.max()  # the largest edges are the ones kept
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in g.layers]
    assert pruned.metadata["pruned_fraction"] == fraction


# ------------------------------------------------------------------------------ modules
def test_with_modules_attaches_and_validates() -> None:
    g = make_graph([3, 4])
    gm = g.with_modules({"blocks.0:1": 0, "blocks.0:2": 1, "blocks.1:3": 1})
    np.testing.assert_array_equal(gm.modules[0], [-1, 0, 1])  # type: ignore[index]
    np.testing.assert_array_equal(gm.modules[1], [-1, -1, -1, 1])  # type: ignore[index]
    assert gm.module_membership()["blocks.1:3"] == 1 and "blocks.0:0" not in gm.module_membership()
    assert gm.to_networkx().nodes["blocks.0:2"]["module"] == 1
    assert g.modules is None  # the original is untouched
    with pytest.raises(UnknownNodeError, match=r"blocks\.7:0"):
        g.with_modules({"blocks.7:0": 0})
    with pytest.raises(InvalidGraphError, match="constant node"):
        g.with_modules({"blocks.0:0": 2})


# ------------------------------------------------------------------------------ save / load
def test_save_load_round_trip_is_exact(tmp_path) -> None:
    g = make_graph([4, 5, 3], seed=3).with_modules({"blocks.1:2": 0, "blocks.2:1": 1})
    path = tmp_path / "graph.npz"
    g.save(path)
    h = InteractionGraph.load(path)
    assert h.metadata == g.metadata
    for a, b in zip(g.layers, h.layers, strict=True):
        assert (a.name, a.size) == (b.name, b.size)
        np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)  # NaN == NaN here
        np.testing.assert_array_equal(a.is_constant, b.is_constant)
        np.testing.assert_array_equal(a.activation_variance, b.activation_variance)
    for a, b in zip(g.edges, h.edges, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(g.modules, h.modules, strict=True):  # type: ignore[arg-type]
        np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_load_rejects_files_that_are_not_ours(tmp_path) -> None:
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(GraphFormatError, match="no 'header'"):
        InteractionGraph.load(foreign)
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(GraphFormatError, match="not an interbasis graph"):
        InteractionGraph.load(text)
    future = tmp_path / "future.npz"
    np.savez(future, header=np.array(json.dumps({"format": "interbasis.graph", "version": 99})))
    with pytest.raises(GraphFormatError, match="version 99"):
        InteractionGraph.load(future)
    g = make_graph([3, 2])
    g.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "edges_0"}
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(GraphFormatError, match="missing the array 'edges_0'"):
        InteractionGraph.load(tmp_path / "cut.npz")


def test_save_errors_leave_no_file(tmp_path) -> None:
    g = make_graph([3, 2])
    with pytest.raises(GraphWriteError, match="does not exist"):
        g.save(tmp_path / "missing" / "g.npz")
    with pytest.raises(GraphWriteError, match="is a directory"):
        g.save(tmp_path)
    bad_meta = InteractionGraph(g.layers, g.edges, {"model": object()})
    with pytest.raises(InvalidGraphError, match="JSON"):
        bad_meta.save(tmp_path / "g.npz")
    with pytest.raises(InvalidGraphError, match="empty graph"):
        InteractionGraph([], [], {}).save(tmp_path / "e.npz")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ issue 19: bad input
def test_with_modules_names_the_node_and_the_bad_value() -> None:
    g = make_graph([3, 4, 2])
    with pytest.raises(InvalidGraphError, match=r"node 'blocks\.2:1'.*'x'"):
        g.with_modules({"blocks.2:1": "x"})  # was: "invalid literal for int()"
    with pytest.raises(InvalidGraphError, match=r"node 'blocks\.2:1'.*True"):
        g.with_modules({"blocks.2:1": True})  # a bool passes an int check
    with pytest.raises(InvalidGraphError, match=r"node 'blocks\.2:1'.*1\.5"):
        g.with_modules({"blocks.2:1": 1.5})  # was silently truncated to 1
    with pytest.raises(InvalidGraphError, match=r"node 'blocks\.2:0'.*-4"):
        g.with_modules({"blocks.2:0": -4})
    with pytest.raises(InvalidGraphError, match=r"node 'blocks\.1:0' is the constant node"):
        g.with_modules({"blocks.1:0": 2})
    with pytest.raises(UnknownNodeError, match=r"'blocks\.9:0'"):
        g.with_modules({"blocks.9:0": 1})
    assert g.with_modules({"blocks.2:1": np.int64(3)}).module_membership()["blocks.2:1"] == 3


def test_arrays_are_never_silently_cast() -> None:
    ok: dict[str, Any] = dict(
        eigenvalues=np.ones(3), is_constant=np.zeros(3, bool), activation_variance=np.ones(3)
    )
    with pytest.raises(InvalidGraphError, match=r"layer 'h'.*eigenvalues.*<U"):
        NodeLayer("h", 3, **{**ok, "eigenvalues": np.array(["1", "2", "3"])})
    with pytest.raises(InvalidGraphError, match=r"layer 'h'.*is_constant.*not whole numbers"):
        NodeLayer("h", 3, **{**ok, "is_constant": np.array([0.5, 0.0, 0.0])})
    with pytest.raises(InvalidGraphError, match=r"layer 'h'.*activation_variance.*complex"):
        NodeLayer("h", 3, **{**ok, "activation_variance": np.array([1j, 0, 0])})
    with pytest.raises(InvalidGraphError, match=r"layer 'h'.*eigenvalues"):
        NodeLayer("h", 3, **{**ok, "eigenvalues": [[1.0], [2.0, 3.0]]})  # ragged
    g = make_graph([3, 2])
    layers = g.layers
    with pytest.raises(InvalidGraphError, match=r"'blocks\.0' -> 'blocks\.1'.*not numeric"):
        InteractionGraph(layers, [np.full((2, 3), "0.5")])  # strings were parsed as numbers
    with pytest.raises(InvalidGraphError, match=r"layer 'blocks\.1'.*modules.*whole numbers"):
        InteractionGraph(layers, g.edges, {}, [np.full(3, -1), np.array([0.5, 1.0])])
    with pytest.raises(InvalidGraphError, match=r"layer 'blocks\.1'.*modules.*whole numbers"):
        InteractionGraph(layers, g.edges, {}, [np.full(3, -1), np.array([np.nan, 1.0])])


def test_constructor_rejects_containers_of_the_wrong_kind() -> None:
    g = make_graph([3, 2])
    with pytest.raises(InvalidGraphError, match="edges must be a list"):
        InteractionGraph(g.layers, g.edges[0])  # type: ignore[arg-type]
    with pytest.raises(InvalidGraphError, match="layers must be a list"):
        InteractionGraph(g.layers[0], [])  # type: ignore[arg-type]
    with pytest.raises(InvalidGraphError, match="metadata must be a dict"):
        InteractionGraph(g.layers, g.edges, [("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidGraphError, match="modules: need a list with one array per layer"):
        InteractionGraph(g.layers, g.edges, {}, np.full(5, -1))  # type: ignore[arg-type]
    with pytest.raises(InvalidGraphError, match="contain NaN"):
        InteractionGraph(g.layers, [np.where(g.edges[0] > 0, np.nan, 0.0)])
    with pytest.raises(InvalidGraphError, match="fraction must be in"):
        g.prune(True)
