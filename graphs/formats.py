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
from collections import Counter
from collections.abc import Mapping
from typing import IO, Any

import networkx as nx
import numpy as np

from graphs.errors import GraphFormatError, InvalidGraphError
from graphs.graph import InteractionGraph

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

    Every node, edge and attribute is checked as :func:`graphs.read_graphml` checks its own.

    Raises
    ------
    GraphFormatError
        Not GEXF, or not written by us (no ``interbasis.graph`` description), a node or an
        edge listed twice (a repeated edge would otherwise keep one of its weights silently),
        or attributes that are missing, mistyped or do not fit the layers.
    FileNotFoundError
        No file at ``path``.
    """
    from graphs.export import _graph_from_records

    source = repr(str(path))
    try:
        g = nx.read_gexf(path)
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise
    except Exception as exc:  # ParseError, NetworkXError, ValueError of a typed value: not GEXF
        raise GraphFormatError(f"{source} is not a readable GEXF file ({exc})") from exc
    desc = [el.text for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "description"]
    try:
        header = json.loads(desc[0] or "") if desc else None
    except (ValueError, RecursionError) as exc:
        raise GraphFormatError(f"{source}: <description> is not JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GraphFormatError(
            f"{source} was not written by graphs.write_gexf (no {FORMAT!r} header in <description>)"
        )
    # networkx silently merges a node or an edge listed twice (keeping one weight), keeps the
    # last of a repeated <attvalue>, and adds a node for an edge end that is not listed: read
    # the XML elements to catch all of these
    ids, pairs = [], []
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "node":
            ids.append(el.get("id"))
        elif tag == "edge":
            pairs.append((el.get("source"), el.get("target")))
        elif tag == "attvalues":
            keys = [item.get("for") for item in el]
            if len(set(keys)) != len(keys):
                raise GraphFormatError(
                    f"{source}: an <attvalues> block repeats an attribute ('for' ids {keys})"
                )
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        raise GraphFormatError(f"{source}: node {twice[0]!r} appears twice")
    twice_e = [pair for pair, n in Counter(pairs).items() if n > 1]
    if twice_e:
        s, t = twice_e[0]
        raise GraphFormatError(
            f"{source}: edge {s!r} -> {t!r} appears twice; a graph holds one weight per node pair"
        )
    listed = set(ids)
    nodes = [(n, attrs) for n, attrs in g.nodes(data=True) if n in listed]
    edges = list(g.edges(data=True))
    return _graph_from_records(header, nodes, edges, source)


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
        Not JSON, a field of the circuit-tracer schema missing or mistyped, a graph file not
        written by us (no ``metadata.interbasis``: foreign attribution graphs have edges that
        skip layers and no Λ, so they are not interaction graphs), a node or link listed
        twice, a node in two supernodes, or ids and values that do not fit the layers.
    FileNotFoundError
        No file at ``path``.
    """
    from graphs.export import _check_header, _graph_from_records, _layer_specs

    source = repr(str(path))
    try:
        with open(path, "rb") as fh:
            obj = json.loads(fh.read())
    except FileNotFoundError:
        raise
    except (ValueError, RecursionError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise GraphFormatError(f"{source} is not a readable JSON file ({exc})") from exc
    check_neuronpedia(obj, source)
    info = obj["metadata"].get("interbasis")
    if info is None:
        raise GraphFormatError(
            f"{source} has no metadata.interbasis block: it was not written by "
            "graphs.write_neuronpedia_json, and only those files can be read back"
        )
    names, sizes = _layer_specs(_check_header(info, source), source)
    has_modules = info.get("has_modules", False)
    if not isinstance(has_modules, bool):
        raise GraphFormatError(
            f"{source}: metadata.interbasis.has_modules must be true or false, got {has_modules!r}"
        )
    ours: dict[str, str] = {}  # circuit-tracer node_id -> our "{layer}:{index}"
    nodes: list[tuple[Any, dict[str, Any]]] = []
    for node in obj["nodes"]:
        layer, feature, node_id = node["layer"], node["feature"], node["node_id"]
        li = int(layer) if layer.isascii() and layer.isdigit() else -1
        if not (0 <= li < len(names) and 0 <= feature < sizes[li]):
            raise GraphFormatError(
                f"{source}: node {node_id!r} (layer {layer!r}, feature {feature}) does not fit "
                f"the layers {dict(zip(names, sizes, strict=True))}"
            )
        if node_id != _np_ids(li, feature)[0]:
            raise GraphFormatError(
                f"{source}: node_id {node_id!r} is not '{{layer}}_{{feature}}_0' "
                f"({_np_ids(li, feature)[0]!r})"
            )
        ours[node_id] = f"{names[li]}:{feature}"
        nodes.append((ours[node_id], {
            "layer_index": li, "index": feature, "eigenvalue": node["influence"],
            "activation_variance": node["activation"], "is_constant": False,
        }))  # fmt: skip

    def find(node_id: Any, what: str) -> str:
        if not isinstance(node_id, str) or node_id not in ours:
            raise GraphFormatError(f"{source}: {what} names an unknown node {node_id!r}")
        return ours[node_id]

    attrs = dict(nodes)  # a node listed twice is reported by _graph_from_records
    constant = info.get("constant_nodes", [])
    if not isinstance(constant, list):
        raise GraphFormatError(f"{source}: metadata.interbasis.constant_nodes must be a list")
    for node_id in constant:
        attrs[find(node_id, "metadata.interbasis.constant_nodes")]["is_constant"] = True
    module_of: dict[str, int] = {}
    for k, group in enumerate(obj["qParams"]["supernodes"]):
        name = group[0] if isinstance(group, list) and group else None
        if not (isinstance(name, str) and name.startswith("module ") and name[7:].isascii()
                and name[7:].isdigit()):  # fmt: skip
            raise GraphFormatError(
                f"{source}: qParams.supernodes[{k}] must be a list ['module <id>', node ids...], "
                f"got {group!r:.80}"
            )
        for node_id in group[1:]:
            ours_id = find(node_id, f"supernode {name!r}")
            if ours_id in module_of:
                raise GraphFormatError(
                    f"{source}: node {node_id!r} is in two supernodes (module "
                    f"{module_of[ours_id]} and {name!r})"
                )
            module_of[ours_id] = int(name[7:])
    if has_modules:
        for node_id, node_attrs in attrs.items():
            node_attrs["module"] = module_of.get(node_id, -1)
    links = []
    for link in obj["links"]:
        s, t = link["source"], link["target"]
        what = f"link {s!r} -> {t!r}"
        links.append((find(s, what), find(t, what), {"weight": link["weight"]}))
    return _graph_from_records(info, nodes, links, source)
