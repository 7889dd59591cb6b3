"""GraphML / JSON export: round trip, third-party readers (issue 5 test 4), foreign files."""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET

import igraph
import networkx as nx
import numpy as np
import pytest

from graphs import (
    GraphFormatError,
    GraphWriteError,
    InteractionGraph,
    InvalidGraphError,
    NodeLayer,
    read_graphml,
    to_node_link,
    write_graphml,
    write_json,
)
from graphs.export import atomic_write, load_npz, read_json


def make_graph(seed: int = 0, names: tuple[str, ...] = ("embed", "blocks.0", "out")):
    rng = np.random.default_rng(seed)
    sizes = [5, 7, 4]
    layers = []
    for k, (name, n) in enumerate(zip(names, sizes, strict=True)):
        eig = rng.uniform(0.0, 3.0, n) * 10.0 ** rng.integers(-8, 8, n)  # awkward floats
        const = np.zeros(n, dtype=bool)
        if k < len(sizes) - 1:
            eig[0], const[0] = np.nan, True
        layers.append(NodeLayer(name, n, eig, const, rng.uniform(0.0, 1.0, n)))
    edges = []
    for a, b in itertools.pairwise(layers):
        e = rng.exponential(1.0, (b.size, a.size)) ** 3 * (rng.random((b.size, a.size)) < 0.8)
        e[:, a.is_constant] = 0.0
        e[b.is_constant, :] = 0.0
        edges.append(e)
    return InteractionGraph(layers, edges, {"model": "synthetic", "options": {"basis": "pca"}})


def weight_of(graph: InteractionGraph, source: str, target: str) -> float:
    (ls, i), (lt, j) = graph.locate(source), graph.locate(target)
    assert lt == ls + 1
    return float(graph.edges[ls][j, i])


def test_graphml_round_trip_is_exact(tmp_path) -> None:
    g = make_graph().with_modules({"blocks.0:3": 1, "out:0": 0, "out:2": 1})
    path = tmp_path / "g.graphml"
    write_graphml(g, path)
    h = read_graphml(path)
    assert h.metadata == g.metadata
    for a, b in zip(g.layers, h.layers, strict=True):
        assert (a.name, a.size) == (b.name, b.size)
        np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
        np.testing.assert_array_equal(a.is_constant, b.is_constant)
        np.testing.assert_array_equal(a.activation_variance, b.activation_variance)
    for a, b in zip(g.edges, h.edges, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(g.modules, h.modules, strict=True):  # type: ignore[arg-type]
        np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == [path]


def test_graphml_declares_typed_attributes(tmp_path) -> None:
    g = make_graph().with_modules({"out:1": 0})
    write_graphml(g, tmp_path / "g.graphml")
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    keys = ET.parse(tmp_path / "g.graphml").getroot().findall("g:key", ns)
    types = {(k.get("for"), k.get("attr.name")): k.get("attr.type") for k in keys}
    assert types[("node", "layer")] == "string"
    assert types[("node", "layer_index")] == types[("node", "index")] == "int"
    assert types[("node", "module")] == "int"
    assert types[("node", "eigenvalue")] == types[("node", "activation_variance")] == "double"
    assert types[("node", "is_constant")] == "boolean"
    assert types[("edge", "weight")] == "double"


def test_third_party_readers_agree(tmp_path) -> None:
    """Issue 5 test 4: networkx and igraph read our GraphML with identical counts and weights."""
    g = make_graph(seed=4, names=("in <x>", "mid & more", "out")).with_modules({"out:1": 0})
    path = tmp_path / "g.graphml"
    write_graphml(g, path)
    n_edges = sum(int(np.count_nonzero(e)) for e in g.edges)

    G = nx.read_graphml(path)
    assert G.is_directed()
    assert (G.number_of_nodes(), G.number_of_edges()) == (g.n_nodes, n_edges)
    got = np.array([w for _, _, w in G.edges(data="weight")])
    want = np.array([weight_of(g, u, v) for u, v in G.edges()])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert G.nodes["in <x>:0"]["is_constant"] is True
    assert G.nodes["out:1"]["module"] == 0 and isinstance(G.nodes["out:1"]["index"], int)

    I = igraph.Graph.Read_GraphML(str(path))
    assert I.is_directed()
    assert (I.vcount(), I.ecount()) == (g.n_nodes, n_edges)
    # igraph's reader returns "&" inside GraphML *attributes* (node ids) as "&#38;", so we
    # identify vertices by their `layer`/`index` data, which it reads correctly
    ids = [f"{layer}:{int(i)}" for layer, i in zip(I.vs["layer"], I.vs["index"], strict=True)]
    assert ids[0] == "in <x>:0" and "mid & more:1" in ids
    got = np.array(I.es["weight"])
    want = np.array([weight_of(g, ids[e.source], ids[e.target]) for e in I.es])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    eig = np.array(I.vs["eigenvalue"])
    ours = np.concatenate([layer.eigenvalues for layer in g.layers])
    order = [g.node_ids().index(nid) for nid in ids]
    np.testing.assert_allclose(eig, ours[order], rtol=1e-12, atol=0)  # NaN == NaN
    assert I.vs["is_constant"][ids.index("in <x>:0")] is True


def test_foreign_graphml_gives_a_clear_error(tmp_path) -> None:
    karate = tmp_path / "karate.graphml"
    nx.write_graphml(nx.karate_club_graph(), karate)
    with pytest.raises(GraphFormatError, match="'interbasis_format' is missing"):
        read_graphml(karate)
    text = tmp_path / "text.graphml"
    text.write_text("this is not xml <")
    with pytest.raises(GraphFormatError, match="not a readable GraphML"):
        read_graphml(text)
    # ours, with one node attribute removed by hand
    ours = tmp_path / "ours.graphml"
    write_graphml(make_graph(), ours)
    lines = ours.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if '<node id="blocks.0:2">' in line)
    start = lines[k].index('<data key="n_eigenvalue">')
    end = lines[k].index("</data>", start) + len("</data>")
    lines[k] = lines[k][:start] + lines[k][end:]
    ours.write_text("\n".join(lines))
    with pytest.raises(GraphFormatError, match=r"node 'blocks.0:2' has no 'eigenvalue'"):
        read_graphml(ours)
    # ours, claiming a future version
    future = tmp_path / "future.graphml"
    write_graphml(make_graph(), future)
    future.write_text(
        future.read_text().replace(
            '<data key="g_interbasis_format_version">1<',
            '<data key="g_interbasis_format_version">7<',
        )
    )
    with pytest.raises(GraphFormatError, match="version 7"):
        read_graphml(future)


def test_empty_graph_and_bad_paths(tmp_path) -> None:
    empty = InteractionGraph([], [], {})
    for write in (write_graphml, write_json):
        with pytest.raises(InvalidGraphError, match="empty graph"):
            write(empty, tmp_path / "e.out")
    g = make_graph()
    with pytest.raises(GraphWriteError, match="does not exist"):
        write_graphml(g, tmp_path / "no" / "such" / "g.graphml")
    with pytest.raises(GraphWriteError, match="is a directory"):
        write_json(g, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path) -> None:
    path = tmp_path / "g.graphml"
    write_graphml(make_graph(seed=1), path)
    before = path.read_bytes()

    def half_then_fail(handle) -> None:
        handle.write(b"<graphml>half")
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before  # the old file is intact
    assert list(tmp_path.iterdir()) == [path]  # and no temporary file is left
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new.graphml", half_then_fail)
    assert list(tmp_path.iterdir()) == [path]


def test_json_node_link_is_strict_and_readable_by_networkx(tmp_path) -> None:
    g = make_graph(seed=2).with_modules({"out:3": 0})
    path = tmp_path / "g.json"
    write_json(g, path)
    data = json.loads(path.read_text())  # strict JSON: NaN became null
    assert "NaN" not in path.read_text()
    assert data["graph"]["format"] == "interbasis.graph" and data["graph"]["metadata"] == g.metadata
    G = nx.node_link_graph(data, edges="links")
    assert G.is_directed() and G.number_of_nodes() == g.n_nodes
    for u, v, w in G.edges(data="weight"):
        assert w == weight_of(g, u, v)
    assert G.number_of_edges() == sum(int(np.count_nonzero(e)) for e in g.edges)
    assert G.nodes["embed:0"]["eigenvalue"] is None and G.nodes["out:3"]["module"] == 0
    assert to_node_link(g)["nodes"][1]["id"] == "embed:1"


# ------------------------------------------------------------------ issue 19: bad files
def _edit_lines(path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)))


def test_graphml_duplicated_edge_is_rejected_naming_it(tmp_path) -> None:
    """A repeated edge used to keep its last weight silently."""
    path = tmp_path / "g.graphml"
    write_graphml(make_graph(), path)
    k = next(i for i, line in enumerate(path.read_text().splitlines()) if "<edge " in line)
    edge = path.read_text().splitlines()[k]
    other = re.sub(r">[^<>]+</data>", ">123.5</data>", edge)
    _edit_lines(path, lambda lines: [*lines[: k + 1], other, *lines[k + 1 :]])
    source, target = re.findall(r'(?:source|target)="([^"]+)"', edge)
    with pytest.raises(
        GraphFormatError,
        match=rf"edge '{re.escape(source)}' -> '{re.escape(target)}' appears twice.*123\.5",
    ):
        read_graphml(path)


def test_graphml_duplicated_node_and_bad_values_are_rejected(tmp_path) -> None:
    path = tmp_path / "g.graphml"
    write_graphml(make_graph(), path)
    text = path.read_text()
    k = next(i for i, line in enumerate(text.splitlines()) if '<node id="out:1">' in line)
    _edit_lines(path, lambda lines: [*lines[: k + 1], lines[k], *lines[k + 1 :]])
    with pytest.raises(GraphFormatError, match=r"node 'out:1' appears twice"):
        read_graphml(path)
    cases = [  # (edit of the valid text, what the message names)
        (('<data key="n_is_constant">false', '<data key="n_is_constant">maybe'), "is_constant"),
        (
            (
                'attr.name="eigenvalue" attr.type="double"',
                'attr.name="eigenvalue" attr.type="string"',
            ),
            "eigenvalue=",
        ),
        (('<data key="n_index">1</data>', '<data key="n_index">7</data>'), "layer_index/index"),
        (('"size": 7', '"size": 70000000000'), "nodes, layers say"),
        (('<data key="e_weight">', '<data key="e_weight">-'), "negative weights"),
        (('encoding="UTF-8"', 'encoding="UTF-1"'), "not a readable GraphML"),
    ]
    for (old, new), message in cases:
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(GraphFormatError, match=re.escape(message)):
            read_graphml(path)


def test_json_round_trip_and_bad_files(tmp_path) -> None:
    g = make_graph().with_modules({"blocks.0:3": 1, "out:0": 0})
    path = tmp_path / "g.json"
    write_json(g, path)
    h = read_json(path)
    assert h.metadata == g.metadata and h.module_membership() == g.module_membership()
    for la, lb in zip(g.layers, h.layers, strict=True):
        np.testing.assert_array_equal(la.eigenvalues, lb.eigenvalues)  # NaN (null) included
        np.testing.assert_array_equal(la.is_constant, lb.is_constant)
    for ea, eb in zip(g.edges, h.edges, strict=True):
        np.testing.assert_array_equal(ea, eb)
    data = json.loads(path.read_text())
    data["links"].append({**data["links"][0], "weight": 9.0})
    path.write_text(json.dumps(data))
    link = data["links"][0]
    with pytest.raises(
        GraphFormatError, match=rf"edge '{re.escape(link['source'])}' -> .* appears twice"
    ):
        read_json(path)
    for bad, message in [
        (b"[1, 2", "not a readable JSON"),
        (b"[]", "not a node-link graph"),
        (b'{"nodes": [], "links": [], "graph": {"format": "x"}}', "not an interbasis graph"),
        (b"\xff\xfe\x00", "not a readable JSON"),
    ]:
        path.write_bytes(bad)
        with pytest.raises(GraphFormatError, match=message):
            read_json(path)


def test_npz_with_bad_arrays_names_the_file_and_the_array(tmp_path) -> None:
    g = make_graph().with_modules({"out:0": 0})
    path = tmp_path / "g.npz"
    g.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**arrays, "modules_2": np.array([0.5, 1.0, 0.0, -1.0])})  # was truncated
    with pytest.raises(GraphFormatError, match=r"bad\.npz.*layer 'out'.*modules.*whole numbers"):
        load_npz(bad)
    np.savez(bad, **{**arrays, "eigenvalues_0": np.array(["a"] * 5)})  # was a raw ValueError
    with pytest.raises(GraphFormatError, match=r"bad\.npz.*layer 'embed'.*eigenvalues"):
        load_npz(bad)
    header = json.loads(str(arrays["header"]))
    np.savez(
        bad, **{**arrays, "header": np.array(json.dumps({**header, "layers": [{"name": "x"}]}))}
    )
    with pytest.raises(GraphFormatError, match=r"bad\.npz.*'layers' must be a list"):
        load_npz(bad)  # was a raw KeyError: 'size'
    np.savez(bad, **{k: v for k, v in arrays.items() if k != "edges_1"})
    with pytest.raises(GraphFormatError, match=r"missing the array 'edges_1'"):
        load_npz(bad)
