"""Exchange formats: GEXF (Gephi) and the Neuronpedia / circuit-tracer graph JSON.

GEXF is written by ``networkx`` (GEXF 1.2) from :meth:`InteractionGraph.to_networkx`: node
attributes ``layer``, ``layer_index``, ``index``, ``eigenvalue`` (Λ), ``is_constant``,
``activation_variance`` and ``module`` (−1 = none), edge ``weight`` = E, plus Gephi's
``viz`` (position: layers as columns; size ∝ Λ; colour = module) and a node ``label``. The
layer list and the graph metadata are JSON in ``<meta><description>``, so :func:`read_gexf`
rebuilds the graph exactly.

The Neuronpedia JSON follows circuit-tracer's graph file (``circuit_tracer/frontend/
graph_models.py``: ``Model``, ``Metadata``, ``QParams``, ``Node``; ``create_graph_files``)
field for field; docs/viewer.md says which field carries which of our quantities. Extra
data needed to read the file back sits in ``metadata.interbasis``.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import IO, Any

import networkx as nx
import numpy as np

from graphs.errors import GraphFormatError, InvalidGraphError
from graphs.graph import InteractionGraph, NodeLayer

PathLike = str | os.PathLike[str]
FORMAT, FORMAT_VERSION = "interbasis.graph", 1

# circuit-tracer's pydantic models: field -> accepted JSON types (None = null allowed)
NP_METADATA = {"slug": (str,), "scan": (str,), "transcoder_list": (list,),
               "prompt_tokens": (list,), "prompt": (str,), "node_threshold": (float, int, None),
               "schema_version": (int, None)}  # fmt: skip
NP_QPARAMS = {"pinnedIds": (list,), "supernodes": (list,), "linkType": (str,),
              "clickedId": (str,), "sg_pos": (str,)}  # fmt: skip
NP_NODE = {"node_id": (str,), "feature": (int,), "layer": (str,), "ctx_idx": (int,),
           "feature_type": (str,), "token_prob": (float, int), "is_target_logit": (bool,),
           "run_idx": (int,), "reverse_ctx_idx": (int,), "jsNodeId": (str,), "clerp": (str,),
           "influence": (float, int, None), "activation": (float, int, None)}  # fmt: skip
NP_LINK = {"source": (str,), "target": (str,), "weight": (float, int)}


def _prepare(graph: InteractionGraph, partition: Any, labels: Mapping[str, Any] | None) -> Any:
    if not isinstance(graph, InteractionGraph):
        raise InvalidGraphError(f"export needs an InteractionGraph, got {type(graph)}")
    if graph.n_nodes == 0:
        raise InvalidGraphError("cannot export an empty graph (it has no nodes)")
    if partition is not None:
        graph = graph.with_modules(partition)
    if labels is not None and not isinstance(labels, Mapping):
        raise InvalidGraphError(f"labels must be a mapping node id -> text, got {type(labels)}")
    for node_id in labels or {}:
        graph.locate(node_id)  # UnknownNodeError naming the id
    return graph, {k: str(v) for k, v in (labels or {}).items()}


def _header(graph: InteractionGraph) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layers": [{"name": layer.name, "size": layer.size} for layer in graph.layers],
        "metadata": graph.metadata,
    }


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidGraphError(f"graph metadata is not JSON-serialisable: {exc}") from exc


def _check_layers(header: Any, source: str) -> tuple[list[str], list[int]]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GraphFormatError(f"{source} was not written by graphs (no {FORMAT!r} header)")
    if header.get("version") != FORMAT_VERSION:
        raise GraphFormatError(
            f"{source} has graph format version {header.get('version')!r}; this version reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        return [str(s["name"]) for s in header["layers"]], [
            int(s["size"]) for s in header["layers"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise GraphFormatError(f"{source}: header has no valid 'layers' list ({exc})") from exc


class _Builder:
    """Arrays of a graph being read back, filled node by node and edge by edge."""

    def __init__(self, names: list[str], sizes: list[int], source: str) -> None:
        self.names, self.sizes, self.source = names, sizes, source
        self.lam = [np.full(n, np.nan) for n in sizes]
        self.var = [np.full(n, np.nan) for n in sizes]
        self.const = [np.zeros(n, dtype=bool) for n in sizes]
        self.modules = [np.full(n, -1, dtype=np.int64) for n in sizes]
        self.edges = [np.zeros((sizes[k + 1], sizes[k])) for k in range(max(len(sizes) - 1, 0))]
        self.seen: set[tuple[int, int]] = set()

    def node(self, li: Any, i: Any, what: str) -> tuple[int, int]:
        ok = isinstance(li, int) and isinstance(i, int) and 0 <= li < len(self.sizes)
        if not ok or not 0 <= i < self.sizes[li] or (li, i) in self.seen:
            raise GraphFormatError(f"{self.source}: {what} does not fit the layers {self.sizes}")
        self.seen.add((li, i))
        return li, i

    def edge(self, src: tuple[int, int], dst: tuple[int, int], weight: Any, what: str) -> None:
        if dst[0] != src[0] + 1:
            raise GraphFormatError(f"{self.source}: {what} skips or reverses layers")
        self.edges[src[0]][dst[1], src[1]] = weight

    def build(self, metadata: Any, has_modules: bool) -> InteractionGraph:
        if len(self.seen) != sum(self.sizes):
            raise GraphFormatError(
                f"{self.source}: {len(self.seen)} nodes, the layers say {sum(self.sizes)}"
            )
        layers = [
            NodeLayer(name, n, self.lam[k], self.const[k], self.var[k])
            for k, (name, n) in enumerate(zip(self.names, self.sizes, strict=True))
        ]
        mods = self.modules if has_modules else None
        return InteractionGraph(layers, self.edges, metadata, mods)


# ---------------------------------------------------------------------------------- GEXF
def write_gexf(
    graph: InteractionGraph,
    path: PathLike,
    partition: Any = None,
    labels: Mapping[str, Any] | None = None,
) -> None:
    """Write ``graph`` as GEXF 1.2 for Gephi (atomic), with module and layer attributes.

    Parameters
    ----------
    graph : InteractionGraph
    path : path of the ``.gexf`` file
    partition : Partition or mapping node id -> module id, optional
        Written as the node attribute ``module`` (default: the graph's attached modules).
    labels : mapping node id -> str, optional
        The GEXF node ``label`` (default: the node id).

    Raises
    ------
    InvalidGraphError, UnknownNodeError
        Empty graph, bad labels/partition, metadata that is not JSON.
    GraphWriteError
        Unwritable path (nothing is written).
    """
    from graphs.export import atomic_write

    graph, text = _prepare(graph, partition, labels)
    description = _dumps(_header(graph))
    g = graph.to_networkx()
    g.graph.clear()  # metadata travels as JSON in <meta><description>
    n_mod = max((int(m.max(initial=-1)) for m in graph.modules or []), default=-1) + 1
    for li, layer in enumerate(graph.layers):
        lam = np.where(np.isfinite(layer.eigenvalues), np.maximum(layer.eigenvalues, 0), 0.0)
        rel = np.sqrt(lam / lam.max()) if lam.max(initial=0) > 0 else np.zeros(layer.size)
        for i, node_id in enumerate(layer.node_ids()):
            m = int(graph.modules[li][i]) if graph.modules is not None else -1
            rgb = colorsys.hsv_to_rgb(m / n_mod, 0.85, 0.9) if m >= 0 else (0.69, 0.69, 0.69)
            g.nodes[node_id]["label"] = text.get(node_id, node_id)
            g.nodes[node_id]["viz"] = {
                "position": {"x": 300.0 * li, "y": -10.0 * i, "z": 0.0},
                "size": 1.0 + 9.0 * float(rel[i]),
                "color": {**dict(zip("rgb", (round(255 * c) for c in rgb), strict=True)), "a": 1.0},
            }
    writer = nx.readwrite.gexf.GEXFWriter(encoding="utf-8", prettyprint=True, version="1.2draft")
    writer.add_graph(g)
    meta = writer.xml.find("meta")
    assert meta is not None  # GEXFWriter always writes <meta><creator>
    ET.SubElement(meta, "description").text = description

    def write(handle: IO[bytes]) -> None:
        writer.write(handle)

    atomic_write(path, write)


def read_gexf(path: PathLike) -> InteractionGraph:
    """Read a GEXF file written by :func:`write_gexf` (parsed by ``networkx.read_gexf``).

    Raises
    ------
    GraphFormatError
        Not GEXF, or not written by us (no ``interbasis.graph`` description), or attributes
        that do not fit the layers.
    """
    source = repr(str(path))
    try:
        g = nx.read_gexf(path)
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise
    except Exception as exc:  # ParseError, NetworkXError: not GEXF
        raise GraphFormatError(f"{source} is not a readable GEXF file ({exc})") from exc
    desc = [el.text for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "description"]
    try:
        header = json.loads(desc[0] or "") if desc else None
    except json.JSONDecodeError as exc:
        raise GraphFormatError(f"{source}: <description> is not JSON ({exc})") from exc
    names, sizes = _check_layers(header, source)
    b = _Builder(names, sizes, source)
    has_modules = any("module" in attrs for _, attrs in g.nodes(data=True))
    where: dict[str, tuple[int, int]] = {}
    for node_id, attrs in g.nodes(data=True):
        try:
            li, i = b.node(attrs["layer_index"], attrs["index"], f"node {node_id!r}")
            if node_id != f"{names[li]}:{i}":
                raise GraphFormatError(f"{source}: node {node_id!r} is not node {i} of {names[li]}")
            b.lam[li][i], b.var[li][i] = attrs["eigenvalue"], attrs["activation_variance"]
            b.const[li][i] = attrs["is_constant"]
            if has_modules:
                b.modules[li][i] = attrs["module"]
        except KeyError as exc:
            raise GraphFormatError(f"{source}: node {node_id!r} has no {exc} attribute") from exc
        where[node_id] = (li, i)
    for s, t, attrs in g.edges(data=True):
        b.edge(where[s], where[t], attrs.get("weight", 1.0), f"edge {s!r} -> {t!r}")
    assert header is not None
    return b.build(header.get("metadata", {}), has_modules)


# ---------------------------------------------------------------------------------- Neuronpedia
def _np_ids(li: int, i: int) -> tuple[str, str]:
    """circuit-tracer's ids of a feature node at layer ``li``, index ``i``, position 0."""
    return f"{li}_{i}_0", f"{li}_{i}-0"


def _value(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def to_neuronpedia(
    graph: InteractionGraph,
    partition: Any = None,
    labels: Mapping[str, Any] | None = None,
    slug: str = "interbasis-graph",
) -> dict[str, Any]:
    """The circuit-tracer / Neuronpedia graph dict of ``graph`` (see the module docstring).

    Nodes: ``node_id`` = ``"{layer index}_{node index}_0"``, ``layer`` = layer index (str),
    ``feature`` = node index, ``influence`` = Λ, ``activation`` = activation variance (null
    for NaN), ``clerp`` = our id and label. Links: ``weight`` = E. Modules are
    ``qParams.supernodes`` (``["module m", node_id, ...]``).
    """
    graph, text = _prepare(graph, partition, labels)
    nodes: list[dict[str, Any]] = []
    last = len(graph.layers) - 1
    for li, layer in enumerate(graph.layers):
        kind = "embedding" if li == 0 else "logit" if li == last else "cross layer transcoder"
        for i, our_id in enumerate(layer.node_ids()):
            node_id, js_id = _np_ids(li, i)
            clerp = f"{our_id} {text[our_id]}" if our_id in text else our_id
            nodes.append({
                "node_id": node_id, "feature": i, "layer": str(li), "ctx_idx": 0,
                "feature_type": kind, "token_prob": 0.0, "is_target_logit": False,
                "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js_id, "clerp": clerp,
                "influence": _value(float(layer.eigenvalues[i])),
                "activation": _value(float(layer.activation_variance[i])),
            })  # fmt: skip
    links = []
    for p, e in enumerate(graph.edges):
        out_idx, in_idx = np.nonzero(e)
        for o, j, w in zip(
            out_idx.tolist(), in_idx.tolist(), e[out_idx, in_idx].tolist(), strict=True
        ):
            links.append({"source": _np_ids(p, j)[0], "target": _np_ids(p + 1, o)[0], "weight": w})
    supernodes: dict[int, list[str]] = {}
    constant = []
    for li, layer in enumerate(graph.layers):
        if layer.has_constant:
            constant.append(_np_ids(li, 0)[0])
        for i, m in enumerate(graph.modules[li].tolist() if graph.modules is not None else []):
            if m >= 0:
                supernodes.setdefault(m, []).append(_np_ids(li, i)[0])
    info = {**_header(graph), "has_modules": graph.modules is not None, "constant_nodes": constant}
    return {
        "metadata": {
            "slug": slug, "scan": "interbasis", "transcoder_list": [],
            "prompt_tokens": ["<all inputs>"],
            "prompt": str(graph.metadata.get("data", "interaction graph over the data set")),
            "node_threshold": None, "schema_version": 1, "interbasis": info,
        },
        "qParams": {
            "pinnedIds": [], "supernodes": [[f"module {m}", *ids] for m, ids in
                                            sorted(supernodes.items())],
            "linkType": "both", "clickedId": "", "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }  # fmt: skip


def write_neuronpedia_json(
    graph: InteractionGraph,
    path: PathLike,
    partition: Any = None,
    labels: Mapping[str, Any] | None = None,
    slug: str = "interbasis-graph",
) -> None:
    """Write :func:`to_neuronpedia` as JSON (atomic; NaN written as null).

    Raises
    ------
    InvalidGraphError, UnknownNodeError
        Empty graph, bad labels/partition, metadata that is not JSON.
    GraphWriteError
        Unwritable path (nothing is written).
    """
    from graphs.export import atomic_write

    text = _dumps(to_neuronpedia(graph, partition, labels, slug)).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(text))


def _check_fields(obj: Any, fields: Mapping[str, tuple[Any, ...]], what: str, source: str) -> None:
    if not isinstance(obj, dict):
        raise GraphFormatError(f"{source}: {what} is not a JSON object")
    for key, kinds in fields.items():
        if key not in obj:
            raise GraphFormatError(f"{source}: {what} has no {key!r} field")
        value, ok = obj[key], False
        for kind in kinds:
            if kind is None:
                ok = ok or value is None
            elif isinstance(value, bool) and kind is not bool:
                continue  # JSON true/false is not a number
            else:
                ok = ok or isinstance(value, kind)
        if not ok:
            raise GraphFormatError(f"{source}: {what} field {key!r} has the wrong type {value!r}")


def check_neuronpedia(obj: Any, source: str = "graph JSON") -> None:
    """Validate ``obj`` against circuit-tracer's graph-file fields (``GraphFormatError`` if not)."""
    _check_fields(obj, {k: (dict,) for k in ("metadata", "qParams")} | {
        "nodes": (list,), "links": (list,)}, "the file", source)  # fmt: skip
    _check_fields(obj["metadata"], NP_METADATA, "metadata", source)
    _check_fields(obj["qParams"], NP_QPARAMS, "qParams", source)
    for k, node in enumerate(obj["nodes"]):
        _check_fields(node, NP_NODE, f"nodes[{k}]", source)
    for k, link in enumerate(obj["links"]):
        _check_fields(link, NP_LINK, f"links[{k}]", source)


def read_neuronpedia_json(path: PathLike) -> InteractionGraph:
    """Read a file written by :func:`write_neuronpedia_json`: the graph with its modules.

    Raises
    ------
    GraphFormatError
        Not JSON, a field of the circuit-tracer schema missing or mistyped, or a graph file not
        written by us (no ``metadata.interbasis``: foreign attribution graphs have edges that
        skip layers and no Λ, so they are not interaction graphs).
    """
    source = repr(str(path))
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as exc:
        raise GraphFormatError(f"{source} is not JSON ({exc})") from exc
    check_neuronpedia(obj, source)
    info = obj["metadata"].get("interbasis")
    if info is None:
        raise GraphFormatError(
            f"{source} has no metadata.interbasis block: it was not written by "
            "graphs.write_neuronpedia_json, and only those files can be read back"
        )
    names, sizes = _check_layers(info, source)
    b = _Builder(names, sizes, source)
    where: dict[str, tuple[int, int]] = {}
    for node in obj["nodes"]:
        li, i = b.node(int(node["layer"]) if node["layer"].isdigit() else -1, node["feature"],
                       f"node {node['node_id']!r}")  # fmt: skip
        if node["node_id"] != _np_ids(li, i)[0]:
            raise GraphFormatError(f"{source}: node_id {node['node_id']!r} != layer_feature_0")
        nan = float("nan")
        b.lam[li][i] = nan if node["influence"] is None else node["influence"]
        b.var[li][i] = nan if node["activation"] is None else node["activation"]
        where[node["node_id"]] = (li, i)

    def find(node_id: Any, what: str) -> tuple[int, int]:
        if node_id not in where:
            raise GraphFormatError(f"{source}: {what} names an unknown node {node_id!r}")
        return where[node_id]

    for node_id in info.get("constant_nodes", []):
        li, i = find(node_id, "metadata.interbasis.constant_nodes")
        b.const[li][i] = True
    for group in obj["qParams"]["supernodes"]:
        name = str(group[0]) if group else ""
        if not name.startswith("module ") or not name[7:].isdigit():
            raise GraphFormatError(f"{source}: supernode {name!r} is not named 'module <id>'")
        for node_id in group[1:]:
            li, i = find(node_id, f"supernode {name!r}")
            b.modules[li][i] = int(name[7:])
    for link in obj["links"]:
        s, t = link["source"], link["target"]
        what = f"link {s!r} -> {t!r}"
        b.edge(find(s, what), find(t, what), link["weight"], what)
    return b.build(info.get("metadata", {}), bool(info.get("has_modules")))
