"""Files for interaction graphs: ``.npz`` (lossless), GraphML (typed) and JSON node-link.

All writes are atomic: the file is written to a temporary file in the target folder and moved
into place with ``os.replace``, so a failure never leaves a partial file behind. GraphML is
written with explicit ``attr.type`` (``double``/``int``/``string``/``boolean``) so that
``networkx.read_graphml`` and ``igraph.Graph.Read_GraphML`` read it without this package;
reading back uses ``networkx.read_graphml`` for the XML and checks that the file is ours.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import quoteattr

import networkx as nx
import numpy as np

from graphs.errors import GraphFormatError, GraphWriteError, InvalidGraphError
from graphs.graph import InteractionGraph, NodeLayer

FORMAT = "interbasis.graph"
FORMAT_VERSION = 1

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file that then replaces ``path``.

    Raises
    ------
    GraphWriteError
        The folder does not exist, ``path`` is a directory, or the OS refuses the write.
        No partial file is left behind in any case.
    """
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise GraphWriteError(f"cannot write {str(target)!r}: it is a directory")
    if not folder.is_dir():
        raise GraphWriteError(
            f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist"
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise GraphWriteError(f"cannot write {str(target)!r}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; graph files are meant to be shared
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, GraphWriteError):
            raise GraphWriteError(f"cannot write {str(target)!r}: {exc}") from exc
        raise


def _require_nodes(graph: InteractionGraph, what: str) -> None:
    if not isinstance(graph, InteractionGraph):
        raise InvalidGraphError(f"{what} needs an InteractionGraph, got {type(graph)}")
    if graph.n_nodes == 0:
        raise InvalidGraphError(f"cannot {what} an empty graph (it has no nodes)")


def _header(graph: InteractionGraph) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layers": [{"name": layer.name, "size": layer.size} for layer in graph.layers],
        "has_modules": graph.modules is not None,
        "metadata": graph.metadata,
    }


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidGraphError(f"graph metadata is not JSON-serialisable: {exc}") from exc


def _check_header(header: Any, source: str) -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GraphFormatError(f"{source} is not an interbasis graph (no {FORMAT!r} header)")
    if header.get("version") != FORMAT_VERSION:
        raise GraphFormatError(
            f"{source} has graph format version {header.get('version')!r}; this version of "
            f"graphs reads version {FORMAT_VERSION}"
        )
    for key in ("layers", "metadata"):
        if key not in header:
            raise GraphFormatError(f"{source}: header has no {key!r} entry")
    return header


# ---------------------------------------------------------------------------------- npz
def save_npz(graph: InteractionGraph, path: PathLike) -> None:
    """Save ``graph`` losslessly as ``.npz`` plus a JSON header (format version, names, metadata).

    Raises
    ------
    InvalidGraphError
        Empty graph, or metadata that is not JSON-serialisable.
    GraphWriteError
        Unwritable path (nothing is written).
    """
    _require_nodes(graph, "save")
    arrays: dict[str, np.ndarray] = {"header": np.array(_dumps(_header(graph)))}
    for i, layer in enumerate(graph.layers):
        arrays[f"eigenvalues_{i}"] = layer.eigenvalues
        arrays[f"is_constant_{i}"] = layer.is_constant
        arrays[f"activation_variance_{i}"] = layer.activation_variance
        if graph.modules is not None:
            arrays[f"modules_{i}"] = graph.modules[i]
    for i, edges in enumerate(graph.edges):
        arrays[f"edges_{i}"] = edges

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]

    atomic_write(path, write)


def load_npz(path: PathLike) -> InteractionGraph:
    """Load a graph written by :func:`save_npz` / :meth:`InteractionGraph.save`.

    Raises
    ------
    GraphFormatError
        The file is not an ``.npz`` written by us, has an unknown version or misses arrays.
    """
    source = repr(str(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, AttributeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise GraphFormatError(f"{source} is not an interbasis graph .npz file ({exc})") from exc
    if "header" not in arrays:
        raise GraphFormatError(f"{source} is not an interbasis graph (no 'header' array)")
    try:
        header = json.loads(str(arrays["header"]))
    except json.JSONDecodeError as exc:
        raise GraphFormatError(f"{source}: header is not JSON ({exc})") from exc
    header = _check_header(header, source)

    def get(key: str) -> np.ndarray:
        if key not in arrays:
            raise GraphFormatError(f"{source} is missing the array {key!r}")
        return arrays[key]

    layers = [
        NodeLayer(
            spec["name"],
            int(spec["size"]),
            get(f"eigenvalues_{i}"),
            get(f"is_constant_{i}"),
            get(f"activation_variance_{i}"),
        )
        for i, spec in enumerate(header["layers"])
    ]
    edges = [get(f"edges_{i}") for i in range(max(len(layers) - 1, 0))]
    modules = [get(f"modules_{i}") for i in range(len(layers))] if header["has_modules"] else None
    return InteractionGraph(layers, edges, header["metadata"], modules)


# ---------------------------------------------------------------------------------- GraphML
_NODE_KEYS = [  # (attribute, GraphML type); "module" is added when modules are attached
    ("layer", "string"),
    ("layer_index", "int"),
    ("index", "int"),
    ("eigenvalue", "double"),
    ("is_constant", "boolean"),
    ("activation_variance", "double"),
]


def _xml_value(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"  # XML Schema spelling, parsed by networkx (float) and igraph (strtod)
        return repr(value)  # shortest repr round-trips float64 exactly
    return str(int(value)) if isinstance(value, int | np.integer) else str(value)


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _graphml_lines(graph: InteractionGraph) -> list[str]:
    node_keys = _NODE_KEYS + ([("module", "int")] if graph.modules is not None else [])
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
        'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">',
    ]
    graph_keys = [
        ("interbasis_format", "string"),
        ("interbasis_format_version", "int"),
        ("layers", "string"),
        ("metadata", "string"),
    ]
    for where, keys in (
        ("graph", graph_keys),
        ("node", node_keys),
        ("edge", [("weight", "double")]),
    ):
        lines += [
            f'  <key id="{where[0]}_{name}" for="{where}" attr.name="{name}" attr.type="{kind}"/>'
            for name, kind in keys
        ]
    header = _header(graph)
    graph_values = [FORMAT, FORMAT_VERSION, _dumps(header["layers"]), _dumps(graph.metadata)]
    lines.append('  <graph id="G" edgedefault="directed">')
    lines += [
        f'    <data key="g_{name}">{_escape_text(_xml_value(v))}</data>'
        for (name, _), v in zip(graph_keys, graph_values, strict=True)
    ]
    for node_id, attrs in graph._node_attrs():
        data = "".join(
            f'<data key="n_{k}">{_escape_text(_xml_value(attrs[k]))}</data>' for k, _ in node_keys
        )
        lines.append(f"    <node id={quoteattr(node_id)}>{data}</node>")
    src, dst, weights = graph.edge_list()
    lines += [
        f'    <edge source={quoteattr(s)} target={quoteattr(t)}><data key="e_weight">{w!r}</data>'
        "</edge>"
        for s, t, w in zip(src, dst, weights.tolist(), strict=True)
    ]
    lines += ["  </graph>", "</graphml>", ""]
    return lines


def write_graphml(graph: InteractionGraph, path: PathLike) -> None:
    """Write ``graph`` as GraphML with typed attributes (atomic).

    Node attributes ``layer`` (string), ``layer_index``/``index`` (int), ``eigenvalue``/
    ``activation_variance`` (double, NaN as ``NaN``), ``is_constant`` (boolean) and ``module``
    (int, when modules are attached); edge attribute ``weight`` (double, exact repr). Graph
    attributes identify the format and hold layer names/sizes and metadata as JSON strings.

    Raises
    ------
    InvalidGraphError
        Empty graph, or metadata that is not JSON-serialisable.
    GraphWriteError
        Unwritable path (nothing is written).

    Examples
    --------
    >>> import networkx as nx, numpy as np, tempfile, os
    >>> from graphs import InteractionGraph, NodeLayer, write_graphml
    >>> layer = lambda n, s: NodeLayer(n, s, np.ones(s), np.zeros(s, bool), np.ones(s))
    >>> g = InteractionGraph([layer("a", 2), layer("b", 1)], [np.array([[0.5, 2.0]])])
    >>> path = os.path.join(tempfile.mkdtemp(), "g.graphml")
    >>> write_graphml(g, path)
    >>> nx.read_graphml(path).edges["a:1", "b:0"]["weight"]
    2.0
    """
    _require_nodes(graph, "export")
    text = "\n".join(_graphml_lines(graph)).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(text))


def _need(attrs: dict[str, Any], key: str, what: str, source: str) -> Any:
    if key not in attrs:
        raise GraphFormatError(f"{source}: {what} has no {key!r} attribute")
    return attrs[key]


def read_graphml(path: PathLike) -> InteractionGraph:
    """Read a GraphML file written by :func:`write_graphml`.

    The XML is parsed by ``networkx.read_graphml``; the graph is rebuilt and validated.

    Raises
    ------
    GraphFormatError
        Not GraphML, or a GraphML we did not write: the message names what is missing (the
        format attribute, a node or edge attribute) or inconsistent.
    """
    source = repr(str(path))
    try:
        g = nx.read_graphml(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # ElementTree.ParseError, NetworkXError, ... : not GraphML
        raise GraphFormatError(f"{source} is not a readable GraphML file ({exc})") from exc
    if "interbasis_format" not in g.graph:
        raise GraphFormatError(
            f"{source} was not written by graphs.write_graphml: graph attribute "
            "'interbasis_format' is missing"
        )
    try:
        specs = json.loads(_need(g.graph, "layers", "the graph", source))
        header = {
            "format": g.graph["interbasis_format"],
            "version": _need(g.graph, "interbasis_format_version", "the graph", source),
            "layers": specs,
            "metadata": json.loads(_need(g.graph, "metadata", "the graph", source)),
        }
    except (json.JSONDecodeError, TypeError) as exc:
        raise GraphFormatError(f"{source}: graph attributes are not valid JSON ({exc})") from exc
    _check_header(header, source)
    sizes = [int(spec["size"]) for spec in specs]
    values = {k: [np.full(n, np.nan) for n in sizes] for k in ("eigenvalue", "activation_variance")}
    constant = [np.zeros(n, dtype=bool) for n in sizes]
    has_modules = any("module" in attrs for _, attrs in g.nodes(data=True))
    modules = [np.full(n, -1, dtype=np.int64) for n in sizes]
    names = [spec["name"] for spec in specs]
    for node_id, attrs in g.nodes(data=True):
        what = f"node {node_id!r}"
        li = _need(attrs, "layer_index", what, source)
        i = _need(attrs, "index", what, source)
        if not (isinstance(li, int) and isinstance(i, int)):
            raise GraphFormatError(f"{source}: {what} has non-integer layer_index/index")
        if not (0 <= li < len(sizes) and 0 <= i < sizes[li]) or node_id != f"{names[li]}:{i}":
            raise GraphFormatError(f"{source}: {what} does not match the layers {specs}")
        for key in values:
            values[key][li][i] = _need(attrs, key, what, source)
        constant[li][i] = _need(attrs, "is_constant", what, source)
        if has_modules:
            modules[li][i] = _need(attrs, "module", what, source)
    if g.number_of_nodes() != sum(sizes):
        raise GraphFormatError(f"{source}: {g.number_of_nodes()} nodes, layers say {sum(sizes)}")
    edges = [np.zeros((sizes[k + 1], sizes[k])) for k in range(max(len(sizes) - 1, 0))]
    for s, t, attrs in g.edges(data=True):
        ls, js = g.nodes[s]["layer_index"], g.nodes[s]["index"]
        lt, jt = g.nodes[t]["layer_index"], g.nodes[t]["index"]
        if lt != ls + 1:
            raise GraphFormatError(f"{source}: edge {s!r} -> {t!r} skips or reverses layers")
        edges[ls][jt, js] = _need(attrs, "weight", f"edge {s!r} -> {t!r}", source)
    layers = [
        NodeLayer(name, n, values["eigenvalue"][k], constant[k], values["activation_variance"][k])
        for k, (name, n) in enumerate(zip(names, sizes, strict=True))
    ]
    return InteractionGraph(layers, edges, header["metadata"], modules if has_modules else None)


# ---------------------------------------------------------------------------------- JSON
def to_node_link(graph: InteractionGraph) -> dict[str, Any]:
    """JSON-ready node-link dict (d3 / ``networkx.node_link_graph(..., edges="links")``).

    NaN values become ``null`` so the result is strict JSON.
    """
    _require_nodes(graph, "export")

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    nodes = [
        {"id": nid, **{k: clean(v) for k, v in attrs.items()}} for nid, attrs in graph._node_attrs()
    ]
    src, dst, weights = graph.edge_list()
    links = [
        {"source": s, "target": t, "weight": w}
        for s, t, w in zip(src, dst, weights.tolist(), strict=True)
    ]
    header = _header(graph)
    header.pop("has_modules")
    return {"directed": True, "multigraph": False, "graph": header, "nodes": nodes, "links": links}


def write_json(graph: InteractionGraph, path: PathLike) -> None:
    """Write :func:`to_node_link` as a JSON file for web viewers (atomic).

    Raises
    ------
    InvalidGraphError
        Empty graph or non-serialisable metadata.
    GraphWriteError
        Unwritable path.
    """
    text = _dumps(to_node_link(graph)).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(text))
