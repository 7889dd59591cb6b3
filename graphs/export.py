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
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

import numpy as np

from graphs.errors import GraphFormatError, GraphWriteError, InvalidGraphError
from graphs.formats import read_gexf, read_neuronpedia_json, write_gexf, write_neuronpedia_json  # noqa: F401
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
        The file is not an ``.npz`` written by us, has an unknown version, misses arrays or
        holds arrays that do not form a valid graph (the message names the file and the array).
    FileNotFoundError
        No file at ``path``.
    """
    source = repr(str(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # BadZipFile, ValueError, EOFError, NotImplementedError, ...
        raise GraphFormatError(f"{source} is not an interbasis graph .npz file ({exc})") from exc
    if not isinstance(arrays, dict) or "header" not in arrays:  # np.load also reads a bare .npy
        raise GraphFormatError(f"{source} is not an interbasis graph (no 'header' array)")
    if arrays["header"].shape != () or arrays["header"].dtype.kind != "U":
        raise GraphFormatError(f"{source}: 'header' is not a JSON string")
    try:
        header = json.loads(str(arrays["header"]))
    except (ValueError, RecursionError) as exc:
        raise GraphFormatError(f"{source}: header is not JSON ({exc})") from exc
    header = _check_header(header, source)
    names, sizes = _layer_specs(header, source)
    has_modules = header.get("has_modules")
    if not isinstance(has_modules, bool):
        raise GraphFormatError(f"{source}: header 'has_modules' must be true or false")

    def get(key: str) -> np.ndarray:
        if key not in arrays:
            raise GraphFormatError(f"{source} is missing the array {key!r}")
        return arrays[key]

    def make() -> InteractionGraph:
        layers = [
            NodeLayer(
                name,
                n,
                get(f"eigenvalues_{i}"),
                get(f"is_constant_{i}"),
                get(f"activation_variance_{i}"),
            )
            for i, (name, n) in enumerate(zip(names, sizes, strict=True))
        ]
        edges = [get(f"edges_{i}") for i in range(max(len(layers) - 1, 0))]
        modules = [get(f"modules_{i}") for i in range(len(layers))] if has_modules else None
        return InteractionGraph(layers, edges, header["metadata"], modules)

    return _build(source, make)


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


def _typed(attrs: dict[str, Any], key: str, kind: str, what: str, source: str) -> Any:
    """Attribute ``key`` checked to be an ``"int"``, ``"bool"`` or ``"number"`` (None = NaN)."""
    value = _need(attrs, key, what, source)
    if kind == "number" and value is None:
        return math.nan  # JSON spells NaN as null
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise GraphFormatError(f"{source}: {what} has {key}={value!r}, expected a {kind}")
    if kind == "int" and not -(2**63) <= value < 2**63:  # would overflow int64 arrays
        raise GraphFormatError(f"{source}: {what} has {key}={value!r}, out of the int64 range")
    if kind == "number" and isinstance(value, int) and abs(value) > 2**1023:  # float() overflows
        raise GraphFormatError(f"{source}: {what} has {key}={value!r}, out of the float64 range")
    return value


def _layer_specs(header: dict[str, Any], source: str) -> tuple[list[str], list[int]]:
    specs = header["layers"]
    if not isinstance(specs, list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and isinstance(s.get("size"), int)
        and not isinstance(s.get("size"), bool)
        and s["size"] >= 0
        for s in specs
    ):
        raise GraphFormatError(
            f"{source}: header 'layers' must be a list of {{'name': str, 'size': int >= 0}}, "
            f"got {specs!r:.200}"
        )
    if not isinstance(header["metadata"], dict):
        raise GraphFormatError(f"{source}: header 'metadata' must be a JSON object")
    return [s["name"] for s in specs], [s["size"] for s in specs]


def _build(source: str, make: Callable[[], InteractionGraph]) -> InteractionGraph:
    """Run ``make``; a graph that fails validation is a bad file, so say which file."""
    try:
        return make()
    except InvalidGraphError as exc:
        raise GraphFormatError(f"{source}: {exc}") from exc


Records = list[tuple[Any, dict[str, Any]]]


def _graph_from_records(
    header: Any, nodes: Records, edges: list[tuple[Any, Any, dict[str, Any]]], source: str
) -> InteractionGraph:
    """Rebuild a graph from node and edge records (GraphML and JSON), checking every field.

    Every node of the layers must appear exactly once, every edge at most once (a repeated
    edge would silently keep one of its weights), and edges must join consecutive layers.
    """
    header = _check_header(header, source)
    names, sizes = _layer_specs(header, source)
    seen: set[str] = set()
    for node_id, _ in nodes:
        if isinstance(node_id, str) and node_id in seen:
            raise GraphFormatError(f"{source}: node {node_id!r} appears twice")
        if isinstance(node_id, str):
            seen.add(node_id)
    if len(nodes) != sum(sizes):  # checked before anything of size sum(sizes) is allocated
        raise GraphFormatError(f"{source}: {len(nodes)} nodes, layers say {sum(sizes)}")
    position = {f"{name}:{i}": (li, i) for li, name in enumerate(names) for i in range(sizes[li])}
    values = {k: [np.full(n, np.nan) for n in sizes] for k in ("eigenvalue", "activation_variance")}
    constant = [np.zeros(n, dtype=bool) for n in sizes]
    has_modules = any("module" in attrs for _, attrs in nodes)
    modules = [np.full(n, -1, dtype=np.int64) for n in sizes]
    for node_id, attrs in nodes:
        what = f"node {node_id!r}"
        if not isinstance(node_id, str) or node_id not in position:
            raise GraphFormatError(
                f"{source}: {what} is not a node of the layers {header['layers']}"
            )
        li, i = position[node_id]
        got = tuple(_typed(attrs, k, "int", what, source) for k in ("layer_index", "index"))
        if got != (li, i):
            raise GraphFormatError(f"{source}: {what} has layer_index/index {got}, not {(li, i)}")
        for key in values:
            values[key][li][i] = _typed(attrs, key, "number", what, source)
        constant[li][i] = _typed(attrs, "is_constant", "bool", what, source)
        if has_modules:
            modules[li][i] = _typed(attrs, "module", "int", what, source)
    matrices = [np.zeros((sizes[k + 1], sizes[k])) for k in range(max(len(sizes) - 1, 0))]
    seen_edges: set[tuple[str, str]] = set()
    for s, t, attrs in edges:
        what = f"edge {s!r} -> {t!r}"
        if not (isinstance(s, str) and isinstance(t, str) and s in position and t in position):
            raise GraphFormatError(f"{source}: {what} joins a node that is not in the file")
        (ls, js), (lt, jt) = position[s], position[t]
        if lt != ls + 1:
            raise GraphFormatError(f"{source}: {what} skips or reverses layers")
        if (s, t) in seen_edges:
            raise GraphFormatError(
                f"{source}: {what} appears twice (weights {matrices[ls][jt, js]!r} and "
                f"{attrs.get('weight')!r}); a graph holds one weight per node pair"
            )
        seen_edges.add((s, t))
        matrices[ls][jt, js] = _typed(attrs, "weight", "number", what, source)

    def make() -> InteractionGraph:
        layers = [
            NodeLayer(
                name, n, values["eigenvalue"][k], constant[k], values["activation_variance"][k]
            )
            for k, (name, n) in enumerate(zip(names, sizes, strict=True))
        ]
        return InteractionGraph(
            layers, matrices, header["metadata"], modules if has_modules else None
        )

    return _build(source, make)


def _xml_bool(text: str) -> bool:
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(f"{text!r} is not a boolean")
    return value


_NS = "{http://graphml.graphdrawing.org/xmlns}"
_XML_TYPES: dict[str, Callable[[str], Any]] = {
    "double": float,
    "float": float,
    "int": int,
    "long": int,
    "string": str,
    "boolean": _xml_bool,
}


def _graphml_records(path: PathLike, source: str) -> tuple[dict[str, Any], Records, list[Any]]:
    """Typed ``(graph attributes, nodes, edges)`` of a GraphML file (keys, data, no defaults)."""
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        raise
    except (ElementTree.ParseError, OSError, ValueError, LookupError) as exc:
        raise GraphFormatError(f"{source} is not a readable GraphML file ({exc})") from exc
    graphs = root.findall(f"{_NS}graph")
    if root.tag != f"{_NS}graphml" or len(graphs) != 1:
        raise GraphFormatError(
            f"{source} is not a readable GraphML file (root <{root.tag}> with {len(graphs)} "
            "<graph> elements; expected <graphml> with one)"
        )
    keys: dict[str, tuple[str, str]] = {}
    for key in root.findall(f"{_NS}key"):
        kid, name, kind = key.get("id"), key.get("attr.name"), key.get("attr.type", "string")
        if kid is None or name is None or kind not in _XML_TYPES or kid in keys:
            raise GraphFormatError(
                f"{source}: <key id={kid!r} attr.name={name!r} attr.type={kind!r}> is invalid "
                f"or repeated (types: {sorted(_XML_TYPES)})"
            )
        keys[kid] = (name, kind)

    def data(element: ElementTree.Element, what: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in element.findall(f"{_NS}data"):
            name, kind = keys.get(item.get("key") or "", (None, ""))
            if name is None or name in out:
                raise GraphFormatError(
                    f"{source}: {what} has an undeclared or repeated <data key={item.get('key')!r}>"
                )
            try:
                out[name] = _XML_TYPES[kind](item.text or "")
            except ValueError as exc:
                raise GraphFormatError(
                    f"{source}: {what} has {name}={item.text!r}, not a GraphML {kind}"
                ) from exc
        return out

    graph = graphs[0]
    nodes = [(n.get("id"), data(n, f"node {n.get('id')!r}")) for n in graph.findall(f"{_NS}node")]
    edges = [
        (
            e.get("source"),
            e.get("target"),
            data(e, f"edge {e.get('source')!r} -> {e.get('target')!r}"),
        )
        for e in graph.findall(f"{_NS}edge")
    ]
    return data(graph, "the graph"), nodes, edges


def read_graphml(path: PathLike) -> InteractionGraph:
    """Read a GraphML file written by :func:`write_graphml`.

    The XML is parsed with ``xml.etree.ElementTree`` (typed ``<key>`` declarations, ``<data>``
    values); every node, edge and attribute is checked before the graph is rebuilt.

    Raises
    ------
    GraphFormatError
        Not GraphML, or a GraphML we did not write: the message names what is missing (the
        format attribute, a node or edge attribute), repeated (a node or an edge listed twice)
        or inconsistent.
    FileNotFoundError
        No file at ``path``.
    """
    source = repr(str(path))
    attrs, nodes, edges = _graphml_records(path, source)
    if "interbasis_format" not in attrs:
        raise GraphFormatError(
            f"{source} was not written by graphs.write_graphml: graph attribute "
            "'interbasis_format' is missing"
        )
    header: dict[str, Any] = {"format": attrs["interbasis_format"]}
    header["version"] = _need(attrs, "interbasis_format_version", "the graph", source)
    for key in ("layers", "metadata"):
        text = _need(attrs, key, "the graph", source)
        try:
            header[key] = json.loads(text if isinstance(text, str) else "not JSON")
        except (ValueError, RecursionError) as exc:
            raise GraphFormatError(
                f"{source}: graph attribute {key!r} is not JSON ({exc})"
            ) from exc
    return _graph_from_records(header, nodes, edges, source)


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


def read_json(path: PathLike) -> InteractionGraph:
    """Read a node-link JSON file written by :func:`write_json` (``null`` values are NaN).

    Raises
    ------
    GraphFormatError
        Not JSON, not a node-link graph, or not written by :func:`write_json`: the message
        names what is missing, repeated (a node or an edge listed twice) or inconsistent.
    FileNotFoundError
        No file at ``path``.
    """
    source = repr(str(path))
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise
    except (ValueError, RecursionError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise GraphFormatError(f"{source} is not a readable JSON file ({exc})") from exc
    if not (
        isinstance(data, dict)
        and isinstance(data.get("nodes"), list)
        and isinstance(data.get("links"), list)
        and all(isinstance(x, dict) for x in data["nodes"] + data["links"])
    ):
        raise GraphFormatError(f"{source} is not a node-link graph (lists of 'nodes' and 'links')")
    nodes = [(n.get("id"), {k: v for k, v in n.items() if k != "id"}) for n in data["nodes"]]
    edges = [(e.get("source"), e.get("target"), e) for e in data["links"]]
    return _graph_from_records(data.get("graph"), nodes, edges, source)
