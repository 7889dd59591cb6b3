"""GEXF (Gephi) and Neuronpedia / circuit-tracer graph JSON: schema fields and round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from graphs import (
    GraphFormatError,
    InteractionGraph,
    NodeLayer,
    UnknownNodeError,
    find_modules,
    read_gexf,
    read_neuronpedia_json,
    write_gexf,
    write_neuronpedia_json,
)

# circuit-tracer's graph file (circuit_tracer/frontend/graph_models.py: Metadata, QParams,
# Node, Link and Model), written out here independently of graphs.formats
CT_TOP = {"metadata", "qParams", "nodes", "links"}
CT_METADATA = {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
               "schema_version"}  # fmt: skip
CT_QPARAMS = {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
CT_NODE = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
           "token_prob": float, "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int,
           "jsNodeId": str, "clerp": str, "influence": (float, type(None)),
           "activation": (float, type(None))}  # fmt: skip
CT_LINK = {"source": str, "target": str, "weight": float}


def _graph() -> InteractionGraph:
    rng = np.random.default_rng(3)

    def layer(name: str, n: int, constant: bool) -> NodeLayer:
        lam = np.sort(rng.random(n) * 10)[::-1].copy()
        var = rng.random(n)
        if constant:
            lam[0], var[0] = np.nan, 0.0
        return NodeLayer(name, n, lam, np.arange(n) == 0 if constant else np.zeros(n, bool), var)

    layers = [layer("embed", 5, True), layer("blocks.0.mlp", 6, True), layer("output", 4, False)]
    edges = [rng.random((6, 5)) * (rng.random((6, 5)) > 0.3), rng.random((4, 6))]
    edges[0][0, :] = 0.0
    edges[0][:, 0] = 0.0
    edges[1][:, 0] = 0.0
    g = InteractionGraph(layers, edges, {"basis": "interaction", "n_samples": 12, "title": "t"})
    return g.with_modules(find_modules(g, method="leiden", seed=0))


def _same(a: InteractionGraph, b: InteractionGraph) -> None:
    assert [(x.name, x.size) for x in a.layers] == [(x.name, x.size) for x in b.layers]
    for u, v in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(u.eigenvalues, v.eigenvalues)  # NaN == NaN here
        np.testing.assert_array_equal(u.activation_variance, v.activation_variance)
        np.testing.assert_array_equal(u.is_constant, v.is_constant)
    for x, y in zip(a.edges, b.edges, strict=True):
        np.testing.assert_array_equal(x, y)  # exact: floats are written with repr
    assert a.metadata == b.metadata
    assert a.module_membership() == b.module_membership()


def _same_value(x: object, y: object) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x):
        return math.isnan(y)
    return x == y and type(x) is type(y)


def test_gexf_loads_in_networkx_with_identical_nodes_edges_attributes(tmp_path: Path) -> None:
    g = _graph()
    path = tmp_path / "g.gexf"
    write_gexf(g, path, labels={"output:1": "k = 7"})
    ours, theirs = g.to_networkx(), nx.read_gexf(path)
    assert isinstance(theirs, nx.DiGraph) and set(theirs.nodes) == set(ours.nodes)
    assert set(theirs.edges) == set(ours.edges)
    for s, t, w in ours.edges(data="weight"):
        assert theirs.edges[s, t]["weight"] == w
    for node, attrs in ours.nodes(data=True):
        got = theirs.nodes[node]
        assert {k: v for k, v in got.items() if k not in ("label", "viz")}.keys() == attrs.keys()
        for key, value in attrs.items():
            assert _same_value(got[key], value), (node, key, got[key], value)
        assert got["label"] == ("k = 7" if node == "output:1" else node)
        assert got["viz"]["position"]["x"] == 300.0 * attrs["layer_index"]
    assert "module" in ours.nodes["output:1"]


def test_gexf_round_trip_and_partition_argument(tmp_path: Path) -> None:
    g = _graph()
    write_gexf(g, tmp_path / "g.gexf")
    _same(g, read_gexf(tmp_path / "g.gexf"))
    plain = InteractionGraph(g.layers, g.edges, g.metadata)
    write_gexf(plain, tmp_path / "p.gexf", partition=g.module_membership())
    _same(g, read_gexf(tmp_path / "p.gexf"))
    write_gexf(plain, tmp_path / "n.gexf")
    assert read_gexf(tmp_path / "n.gexf").modules is None


def test_gexf_not_ours_is_a_clear_error(tmp_path: Path) -> None:
    nx.write_gexf(nx.path_graph(3), tmp_path / "other.gexf")
    with pytest.raises(GraphFormatError, match="not written by graphs"):
        read_gexf(tmp_path / "other.gexf")
    (tmp_path / "junk.gexf").write_text("<gexf")
    with pytest.raises(GraphFormatError, match="not a readable GEXF"):
        read_gexf(tmp_path / "junk.gexf")


def test_neuronpedia_json_has_circuit_tracer_fields(tmp_path: Path) -> None:
    g = _graph()
    path = tmp_path / "g.json"
    write_neuronpedia_json(g, path, labels={"output:1": "k = 7"}, slug="demo")
    obj = json.loads(path.read_text())  # strict JSON: NaN became null
    assert set(obj) == CT_TOP
    assert CT_METADATA <= set(obj["metadata"]) and set(obj["qParams"]) == CT_QPARAMS
    assert obj["metadata"]["slug"] == "demo" and obj["qParams"]["linkType"] == "both"
    assert len(obj["nodes"]) == g.n_nodes and len(obj["links"]) == len(g.edge_list()[2])
    by_id = {}
    for node in obj["nodes"]:
        assert set(node) == set(CT_NODE)
        for key, kind in CT_NODE.items():
            assert isinstance(node[key], kind), (key, node[key])  # type: ignore[arg-type]
        by_id[node["node_id"]] = node
    for li, layer in enumerate(g.layers):
        for i in range(layer.size):
            node = by_id[f"{li}_{i}_0"]
            assert (node["layer"], node["feature"], node["jsNodeId"]) == (str(li), i, f"{li}_{i}-0")
            lam, var = layer.eigenvalues[i], layer.activation_variance[i]
            assert node["influence"] == (None if np.isnan(lam) else lam)
            assert node["activation"] == var
    assert by_id["2_1_0"]["clerp"] == "output:1 k = 7" and by_id["2_1_0"]["feature_type"] == "logit"
    assert by_id["0_1_0"]["feature_type"] == "embedding"
    src, dst, w = g.edge_list()
    ours = {(s, t): x for s, t, x in zip(src, dst, w.tolist(), strict=True)}

    def np_id(node_id: str) -> str:
        li, i = g.locate(node_id)
        return f"{li}_{i}_0"

    assert {(x["source"], x["target"]): x["weight"] for x in obj["links"]} == {
        (np_id(s), np_id(t)): x for (s, t), x in ours.items()
    }
    for link in obj["links"]:
        assert set(link) == set(CT_LINK) and all(isinstance(link[k], CT_LINK[k]) for k in link)
    supernodes = {group[0]: set(group[1:]) for group in obj["qParams"]["supernodes"]}
    membership = g.module_membership()
    for m in set(membership.values()) - {-1}:
        assert supernodes[f"module {m}"] == {np_id(n) for n, k in membership.items() if k == m}


def test_neuronpedia_round_trip(tmp_path: Path) -> None:
    g = _graph()
    write_neuronpedia_json(g, tmp_path / "g.json")
    _same(g, read_neuronpedia_json(tmp_path / "g.json"))


def test_neuronpedia_errors(tmp_path: Path) -> None:
    g = _graph()
    write_neuronpedia_json(g, tmp_path / "g.json")
    obj = json.loads((tmp_path / "g.json").read_text())
    del obj["nodes"][3]["jsNodeId"]
    (tmp_path / "missing.json").write_text(json.dumps(obj))
    with pytest.raises(GraphFormatError, match=r"nodes\[3\] has no 'jsNodeId' field"):
        read_neuronpedia_json(tmp_path / "missing.json")
    obj = json.loads((tmp_path / "g.json").read_text())
    del obj["metadata"]["interbasis"]
    (tmp_path / "foreign.json").write_text(json.dumps(obj))
    with pytest.raises(GraphFormatError, match="no metadata.interbasis block"):
        read_neuronpedia_json(tmp_path / "foreign.json")
    obj = json.loads((tmp_path / "g.json").read_text())
    obj["links"][0]["weight"] = "heavy"
    (tmp_path / "typed.json").write_text(json.dumps(obj))
    with pytest.raises(GraphFormatError, match=r"links\[0\] field 'weight' has the wrong type"):
        read_neuronpedia_json(tmp_path / "typed.json")
    with pytest.raises(UnknownNodeError, match="nowhere:0"):
        write_neuronpedia_json(g, tmp_path / "x.json", labels={"nowhere:0": "?"})
    assert not (tmp_path / "x.json").exists()
