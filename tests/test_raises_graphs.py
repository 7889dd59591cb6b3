"""graphs: bad files and bad arguments give our own error naming what is wrong (issue 19).

The GEXF and Neuronpedia readers are checked with targeted edits of files written by our own
writers: each edit must be rejected with a :class:`GraphFormatError` that names the file and
the node, edge, attribute or field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graphs import (
    GraphFormatError,
    InteractionGraph,
    InvalidGraphError,
    ModuleSearchError,
    NodeLayer,
    adjusted_rand_index,
    cut_cost,
    default_epsilon,
    find_modules,
    module_stability,
    null_model,
    read_gexf,
    read_graphml,
    read_neuronpedia_json,
    resolution_sweep,
    stability,
    write_gexf,
    write_graphml,
    write_html,
    write_neuronpedia_json,
)
from graphs.consensus import co_membership
from graphs.viewer import render_html


def _graph(modules: bool = True) -> InteractionGraph:
    """embed (3 nodes, node 0 constant) -> mid (3) -> out (2), with two modules."""
    rng = np.random.default_rng(0)

    def layer(name: str, n: int, constant: bool) -> NodeLayer:
        lam = np.linspace(5.0, 1.0, n)
        var = np.linspace(1.0, 2.0, n)
        if constant:
            lam[0], var[0] = np.nan, 0.0
        return NodeLayer(name, n, lam, np.arange(n) == 0 if constant else np.zeros(n, bool), var)

    layers = [layer("embed", 3, True), layer("mid", 3, False), layer("out", 2, False)]
    e0 = rng.random((3, 3)) + 0.1
    e0[:, 0] = 0.0
    edges = [e0, rng.random((2, 3)) + 0.1]
    g = InteractionGraph(layers, edges, {"title": "t"})
    if not modules:
        return g
    return g.with_modules({"embed:1": 0, "mid:0": 0, "out:0": 0, "embed:2": 1, "mid:1": 1})


EMPTY = InteractionGraph([], [])


# ---------------------------------------------------------------------------------- writers
WRITERS = {
    "gexf": lambda g, p, **kw: write_gexf(g, p / "g.gexf", **kw),
    "neuronpedia": lambda g, p, **kw: write_neuronpedia_json(g, p / "g.json", **kw),
    "html": lambda g, p, **kw: write_html(g, p / "g.html", **kw),
}
WRITE_CASES = [
    ("not-a-graph", lambda: "graph", {}, r"needs an InteractionGraph, got <class 'str'>"),
    ("empty", lambda: EMPTY, {}, r"empty graph \(it has no nodes\)"),
    ("labels-list", _graph, {"labels": ["a"]}, r"labels must be a mapping node id -> text"),
]


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(
    ("make", "kwargs", "match"), [c[1:] for c in WRITE_CASES], ids=[c[0] for c in WRITE_CASES]
)
def test_writers_reject_bad_arguments(tmp_path, writer, make, kwargs, match):
    with pytest.raises(InvalidGraphError, match=match):
        WRITERS[writer](make(), tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("writer", ["gexf", "neuronpedia"])
def test_metadata_that_is_not_json_is_rejected(tmp_path, writer):
    g = _graph()
    bad = InteractionGraph(g.layers, g.edges, {"when": object()})
    with pytest.raises(InvalidGraphError, match=r"graph metadata is not JSON-serialisable"):
        WRITERS[writer](bad, tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- GEXF
def _gexf(tmp_path: Path, edit: Callable[[str], str], modules: bool = True) -> Path:
    path = tmp_path / "g.gexf"
    write_gexf(_graph(modules), path)
    text = path.read_text()
    new = edit(text)
    assert new != text, "the edit changed nothing"
    path.write_text(new)
    return path


def _first(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.S)
    assert found is not None, pattern
    return found.group(0)


def _dup_edge(weight: str | None) -> Callable[[str], str]:
    def edit(text: str) -> str:
        edge = _first(r"<edge [^>]*/>", text)
        twin = edge if weight is None else re.sub(r'weight="[^"]*"', f'weight="{weight}"', edge)
        return text.replace(edge, edge + "\n" + twin, 1)

    return edit


def _node_block(node_id: str, text: str) -> str:
    return _first(rf'<node id="{re.escape(node_id)}".*?</node>', text)


def _description(edit: Callable[[dict[str, Any]], Any]) -> Callable[[str], str]:
    def change(text: str) -> str:
        old = _first(r"<description>.*?</description>", text)
        header = json.loads(old[len("<description>") : -len("</description>")])
        new = edit(header)
        body = new if isinstance(new, str) else json.dumps(new)
        return text.replace(old, f"<description>{body}</description>")

    return change


GEXF_CASES = [
    ("description-not-json", _description(lambda h: "{not json"), r"<description> is not JSON"),
    ("version", _description(lambda h: {**h, "version": 2}), r"graph format version 2"),
    ("layers", _description(lambda h: {**h, "layers": [{"name": "embed", "size": -3}]}),
     r"header 'layers' must be a list of \{'name': str, 'size': int >= 0\}"),
    ("duplicated-edge-same-id", _dup_edge("7.5"), r"edge 'embed:1' -> 'mid:0' appears twice"),
    ("duplicated-edge-identical", _dup_edge(None), r"edge 'embed:1' -> 'mid:0' appears twice"),
    ("duplicated-node", lambda t: t.replace(_node_block("mid:1", t), _node_block("mid:1", t) * 2),
     r"node 'mid:1' appears twice"),
    ("repeated-attvalue",
     lambda t: t.replace('<attvalue for="3" value="5.0" />',
                         '<attvalue for="3" value="5.0" /><attvalue for="3" value="9.0" />', 1),
     r"<attvalues> block repeats an attribute"),
    ("missing-attribute",
     lambda t: t.replace(_node_block("mid:2", t),
                         re.sub(r'<attvalue for="3"[^>]*/>', "", _node_block("mid:2", t))),
     r"node 'mid:2' has no 'eigenvalue' attribute"),
    ("mistyped-attribute", lambda t: t.replace('title="eigenvalue" type="double"',
                                               'title="eigenvalue" type="string"'),
     r"node 'embed:0' has eigenvalue='NaN', expected a number"),
    ("wrong-index",
     lambda t: t.replace(_node_block("mid:2", t),
                         _node_block("mid:2", t).replace('for="2" value="2"', 'for="2" value="1"')),
     r"node 'mid:2' has layer_index/index \(1, 1\), not \(1, 2\)"),
    ("edge-skips-layer",
     lambda t: t.replace(_first(r"<edge [^>]*/>", t),
                         _first(r"<edge [^>]*/>", t).replace('target="mid:0"', 'target="out:0"')),
     r"edge 'embed:1' -> 'out:0' skips or reverses layers"),
    ("edge-to-unlisted-node",
     lambda t: t.replace(_first(r"<edge [^>]*/>", t),
                         _first(r"<edge [^>]*/>", t).replace('target="mid:0"', 'target="mid:9"')),
     r"edge 'embed:1' -> 'mid:9' joins a node that is not in the file"),
    ("negative-weight",
     lambda t: re.sub(r'weight="[^"]*"', 'weight="-1.0"', t, count=1),
     r"edges of 'embed' -> 'mid' contain negative weights"),
    ("module-on-constant",
     lambda t: t.replace(_node_block("embed:0", t), _node_block("embed:0", t).replace(
         'for="6" value="-1"', 'for="6" value="1"')),
     r"node 'embed:0' is the constant node and cannot be in a module"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "match"), [c[1:] for c in GEXF_CASES], ids=[c[0] for c in GEXF_CASES]
)
def test_gexf_reader_rejects_edited_files(tmp_path, edit, match):
    path = _gexf(tmp_path, edit)
    with pytest.raises(GraphFormatError, match=re.escape(repr(str(path))) + ".*" + match):
        read_gexf(path)


def test_gexf_round_trip_still_exact(tmp_path):
    for modules in (True, False):
        write_gexf(_graph(modules), tmp_path / "g.gexf")
        back = read_gexf(tmp_path / "g.gexf")
        for a, b in zip(back.edges, _graph(modules).edges, strict=True):
            np.testing.assert_array_equal(a, b)
        assert (back.modules is None) == (not modules)


def test_gexf_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gexf(tmp_path / "missing.gexf")


def test_graphml_duplicated_edge_with_identical_weight_is_rejected(tmp_path):
    path = tmp_path / "g.graphml"
    write_graphml(_graph(), path)
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if "<edge " in line)
    path.write_text("\n".join([*lines[: k + 1], lines[k], *lines[k + 1 :]]))
    with pytest.raises(GraphFormatError, match=r"g.graphml.*edge '.*' -> '.*' appears twice"):
        read_graphml(path)


# ---------------------------------------------------------------------------------- Neuronpedia
def _np_file(tmp_path: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    path = tmp_path / "g.json"
    write_neuronpedia_json(_graph(), path)
    obj = json.loads(path.read_text())
    new = edit(obj)
    path.write_text(json.dumps(obj if new is None else new))
    return path


def _node(obj: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in obj["nodes"] if n["node_id"] == node_id)


def _set(getter: Callable[[dict[str, Any]], Any], key: Any, value: Any) -> Callable[[Any], None]:
    def edit(obj: dict[str, Any]) -> None:
        getter(obj)[key] = value

    return edit


def _info(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["metadata"]["interbasis"]


NP_CASES = [
    ("top-level-list", lambda o: [o], r"the file is not a JSON object"),
    ("node-not-object", _set(lambda o: o["nodes"], 0, "node"), r"nodes\[0\] is not a JSON object"),
    ("layer-not-ascii-digit", _set(lambda o: _node(o, "1_1_0"), "layer", "\u00b2"),
     r"node '1_1_0' \(layer '\u00b2', feature 1\) does not fit the layers"),
    ("feature-out-of-range", _set(lambda o: _node(o, "1_1_0"), "feature", 9),
     r"node '1_1_0' \(layer '1', feature 9\) does not fit the layers"),
    ("node-id", _set(lambda o: _node(o, "1_1_0"), "node_id", "1_1_7"),
     r"node_id '1_1_7' is not '\{layer\}_\{feature\}_0' \('1_1_0'\)"),
    ("duplicated-node", lambda o: o["nodes"].append(dict(_node(o, "2_1_0"))),
     r"node 'out:1' appears twice"),
    ("duplicated-link", lambda o: o["links"].append({**o["links"][0], "weight": 9.0}),
     r"edge 'embed:1' -> 'mid:0' appears twice"),
    ("link-unknown-node", _set(lambda o: o["links"][0], "target", "5_0_0"),
     r"link '0_1_0' -> '5_0_0' names an unknown node '5_0_0'"),
    ("link-negative", _set(lambda o: o["links"][0], "weight", -2.0),
     r"edges of 'embed' -> 'mid' contain negative weights"),
    ("link-skips", _set(lambda o: o["links"][0], "target", "2_0_0"),
     r"edge 'embed:1' -> 'out:0' skips or reverses layers"),
    ("supernode-name", _set(lambda o: o["qParams"]["supernodes"], 0, ["group 0", "0_1_0"]),
     r"qParams.supernodes\[0\] must be a list \['module <id>', node ids...\]"),
    ("supernode-not-list", _set(lambda o: o["qParams"]["supernodes"], 0, 5),
     r"qParams.supernodes\[0\] must be a list .* got 5"),
    ("supernode-unknown-node", lambda o: o["qParams"]["supernodes"][0].append(["x"]),
     r"supernode 'module 0' names an unknown node \['x'\]"),
    ("node-in-two-supernodes", lambda o: o["qParams"]["supernodes"][1].append("0_1_0"),
     r"node '0_1_0' is in two supernodes \(module 0 and 'module 1'\)"),
    ("constant-nodes-type", _set(_info, "constant_nodes", "0_0_0"),
     r"metadata.interbasis.constant_nodes must be a list"),
    ("constant-unknown", _set(_info, "constant_nodes", ["9_9_0"]),
     r"metadata.interbasis.constant_nodes names an unknown node '9_9_0'"),
    ("has-modules", _set(_info, "has_modules", "yes"),
     r"metadata.interbasis.has_modules must be true or false, got 'yes'"),
    ("version", _set(_info, "version", 3), r"graph format version 3"),
    ("layers", _set(_info, "layers", "embed"), r"header 'layers' must be a list"),
    ("metadata-type", _set(_info, "metadata", [1]), r"header 'metadata' must be a JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "match"), [c[1:] for c in NP_CASES], ids=[c[0] for c in NP_CASES])
def test_neuronpedia_reader_rejects_edited_files(tmp_path, edit, match):
    path = _np_file(tmp_path, edit)
    with pytest.raises(GraphFormatError, match=re.escape(repr(str(path))) + ".*" + match):
        read_neuronpedia_json(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"\xff\xfe not utf-8", r"is not a readable JSON file"), (b"{", r"is not a readable JSON")],
    ids=["not-utf8", "truncated"],
)
def test_neuronpedia_reader_rejects_non_json(tmp_path, content, match):
    path = tmp_path / "g.json"
    path.write_bytes(content)
    with pytest.raises(GraphFormatError, match=match):
        read_neuronpedia_json(path)


def test_neuronpedia_round_trip_keeps_modules_and_constants(tmp_path):
    g = _graph()
    write_neuronpedia_json(g, tmp_path / "g.json")
    back = read_neuronpedia_json(tmp_path / "g.json")
    assert back.module_membership() == g.module_membership()
    assert [layer.is_constant.tolist() for layer in back.layers] == [
        layer.is_constant.tolist() for layer in g.layers
    ]
    with pytest.raises(FileNotFoundError):
        read_neuronpedia_json(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------- modules
G = _graph(modules=False)
PART = {"embed:1": 0, "embed:2": 1, "mid:0": 0, "mid:1": 1, "mid:2": 1, "out:0": 0}

MODULE_CASES = [
    ("cost", lambda: find_modules(G, cost="total"), r"cost must be one of .* got 'total'"),
    ("quality", lambda: find_modules(G, method="leiden", quality="conductance"),
     r"quality must be one of .* got 'conductance'"),
    ("engine", lambda: find_modules(G, method="leiden", engine="networkx"),
     r"engine must be one of .* got 'networkx'"),
    ("min-size-spectral", lambda: find_modules(G, method="spectral", min_size=2),
     r"min_size is only enforced by method='exact'"),
    ("leiden-option-with-exact", lambda: find_modules(G, method="exact", resolution=1.0),
     r"resolution/quality/engine are Leiden parameters; 'exact' uses none"),
    ("resolution-str", lambda: find_modules(G, resolution="high"),
     r"resolution must be a finite number >= 0, got 'high'"),
    ("ari-too-few", lambda: adjusted_rand_index({"mid:0": 0}, {"mid:0": 1}),
     r"ARI needs >= 2 nodes assigned in both; got 1"),
    ("ari-not-mapping", lambda: adjusted_rand_index([0, 1], PART),
     r"adjusted_rand_index: a must be a Partition or a dict .* got list"),
    ("ari-str-module", lambda: adjusted_rand_index(PART, {"mid:0": "m"}),
     r"adjusted_rand_index: b must be a Partition or a dict node id -> int module id"),
    ("null-n-shuffles", lambda: null_model(G, find_modules(G), 1),
     r"n_shuffles must be an int >= 2, got 1"),
    ("null-partition", lambda: null_model(G, PART, 3),
     r"partition must be a graphs.Partition \(from find_modules\), got dict"),
    ("sweep-empty", lambda: resolution_sweep(G, []), r"resolutions must be a non-empty list"),
    ("sweep-str", lambda: resolution_sweep(G, ["low"]), r"resolutions must be a list of numbers"),
    ("stability-step", lambda: stability(G, relative_step=1.0),
     r"relative_step must be in \[0, 1\), got 1.0"),
    ("stability-step-str", lambda: stability(G, relative_step="0.1"),
     r"relative_step must be in \[0, 1\), got '0.1'"),
    ("stability-seeds", lambda: stability(G, seeds=[]), r"seeds must be a non-empty list of ints"),
    ("co-membership", lambda: co_membership([], G.node_ids()),
     r"co_membership needs at least one partition"),
    ("module-stability-empty", lambda: module_stability(G, seeds=[]),
     r"module_stability needs at least one seed and one resolution"),
    ("module-stability-seed", lambda: module_stability(G, seeds=[0, 1.5]),
     r"seeds must be ints >= 0, got 1.5"),
    ("module-stability-resolution", lambda: module_stability(G, resolutions=[1.0, -1.0]),
     r"resolutions must be finite numbers >= 0, got -1.0"),
    ("module-stability-str", lambda: module_stability(G, seeds="01"),
     r"seeds must be a list, got '01'"),
    ("module-stability-repeated", lambda: module_stability(G, seeds=[1, 1]),
     r"seeds \(1, 1\) and resolutions .* must be distinct"),
    ("epsilon-fraction", lambda: default_epsilon(G, fraction=0.0),
     r"fraction must be positive and finite, got 0.0"),
    ("epsilon-fraction-str", lambda: default_epsilon(G, fraction="0.1"),
     r"fraction must be positive and finite, got '0.1'"),
    ("cut-cost-model", lambda: cut_cost(G, PART, cost="sum"), r"cost must be one of .* got 'sum'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "match"), [c[1:] for c in MODULE_CASES], ids=[c[0] for c in MODULE_CASES]
)
def test_module_search_bad_arguments(call, match):
    with pytest.raises(ModuleSearchError, match=match):
        call()


def test_render_html_fraction_and_strict_json():
    with pytest.raises(InvalidGraphError, match=r"fraction must be in \[0.01, 1\], got 0"):
        render_html(_graph(), fraction=0)
    page = render_html(_graph())  # NaN eigenvalue of the constant node: written as null
    data = json.loads(_first(r'id="ib-data">.*?</script>', page)[len('id="ib-data">') : -9])
    assert data["nodes"]["lam"][0] is None
