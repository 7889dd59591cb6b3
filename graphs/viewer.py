"""Interactive viewer: one self-contained HTML file that explores an interaction graph.

:func:`write_html` writes a page that works opened from disk, offline (no CDN, no external
resource): the graph is embedded as JSON, the viewer is plain JavaScript + canvas + SVG from
``graphs/viewer_assets/`` inlined into the page. Layers are columns (forward order left to
right, node 0 on top, as :func:`graphs.draw_graph`); node area ∝ Λ / max Λ of the layer
(constant nodes, Λ = NaN, are small white squares); colour = module; edge width ∝ E / max E of
the layer pair. A slider sets the kept fraction ``f`` of edge weight: per layer pair the
largest edges whose cumulative weight first reaches ``f`` × the pair's total are drawn — the
rule of :meth:`InteractionGraph.prune`, so the visible edge count at ``f`` (all modules shown)
is ``sum(graph.edges_needed(f))``. Hovering or clicking a node shows its id, layer, Λ,
activation variance, module, label, its top in/out edges and links to those neighbours; a
search box finds nodes by id or label; the legend toggles modules. Wheel zooms, drag pans.

Test hooks: ``#ib-viewer`` carries ``data-rendered-nodes``, ``data-visible-edges``,
``data-fraction``, ``data-load-ms`` and ``data-frame-ms``; the side-panel fields are
``#ib-node-{id,layer,lambda,variance,module,label}`` (``data-value`` holds the exact number).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graphs.errors import GraphFormatError, InvalidGraphError
from graphs.graph import InteractionGraph

ASSETS = Path(__file__).resolve().parent / "viewer_assets"

__all__ = ["read_graph_file", "render_html", "viewer_data", "write_html"]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _attach(graph: InteractionGraph, partition: Any) -> InteractionGraph:
    if not isinstance(graph, InteractionGraph):
        raise InvalidGraphError(f"the viewer needs an InteractionGraph, got {type(graph)}")
    if graph.n_nodes == 0:
        raise InvalidGraphError("cannot view an empty graph (it has no nodes)")
    return graph if partition is None else graph.with_modules(partition)


def _labels(graph: InteractionGraph, labels: Mapping[str, Any] | None) -> list[str]:
    out = [""] * graph.n_nodes
    if labels is None:
        return out
    if not isinstance(labels, Mapping):
        raise InvalidGraphError(f"labels must be a mapping node id -> text, got {type(labels)}")
    offsets = np.cumsum([0] + [layer.size for layer in graph.layers])
    for node_id, text in labels.items():
        li, i = graph.locate(node_id)  # UnknownNodeError naming the id
        out[int(offsets[li]) + i] = "" if text is None else str(text)
    return out


def viewer_data(
    graph: InteractionGraph,
    partition: Any = None,
    labels: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """The JSON the viewer reads: nodes (columns) and, per layer pair, edges sorted by weight.

    Parameters
    ----------
    graph : InteractionGraph
    partition : Partition or mapping node id -> module id, optional
        Modules to colour by (default: the graph's attached modules, else none).
    labels : mapping node id -> str, optional
        Shown in the side panel and searchable (e.g. a Fourier frequency).
    title : str, optional

    Returns
    -------
    dict
        ``layers`` [{name, size}]; ``nodes`` with parallel lists ``id``, ``layer``, ``index``,
        ``lam`` (Λ, None for NaN), ``variance``, ``module`` (−1 = none), ``constant``,
        ``label``; ``pairs`` [{``s``, ``t`` global node positions, ``w`` weights}] holding the
        positive edges of each pair in ``numpy.argsort(-E.ravel(), kind="stable")`` order, so
        the viewer's cumulative sums equal those of :meth:`InteractionGraph.prune`.
    """
    graph = _attach(graph, partition)
    layer_of, index, lam, var, module, constant = [], [], [], [], [], []
    for li, layer in enumerate(graph.layers):
        layer_of += [li] * layer.size
        index += list(range(layer.size))
        lam += [_finite(v) for v in layer.eigenvalues.tolist()]
        var += [_finite(v) for v in layer.activation_variance.tolist()]
        constant += [int(c) for c in layer.is_constant.tolist()]
        mods = graph.modules[li] if graph.modules is not None else np.full(layer.size, -1)
        module += [int(m) for m in mods.tolist()]
    offsets = np.cumsum([0] + [layer.size for layer in graph.layers])
    pairs = []
    for p, e in enumerate(graph.edges):
        flat = e.ravel()
        order = np.argsort(-flat, kind="stable")
        order = order[flat[order] > 0]
        out_idx, in_idx = np.divmod(order, e.shape[1])
        pairs.append(
            {
                "s": (in_idx + offsets[p]).tolist(),
                "t": (out_idx + offsets[p + 1]).tolist(),
                "w": flat[order].tolist(),
            }
        )
    return {
        "title": title or str(graph.metadata.get("title", "interaction graph")),
        "layers": [{"name": layer.name, "size": layer.size} for layer in graph.layers],
        "nodes": {
            "id": graph.node_ids(),
            "layer": layer_of,
            "index": index,
            "lam": lam,
            "variance": var,
            "module": module,
            "constant": constant,
            "label": _labels(graph, labels),
        },
        "pairs": pairs,
    }


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style></head><body>
<div id="ib-viewer" data-ready="0">
<div id="ib-bar"><h1>{title}</h1>
<label>edge weight shown <input id="ib-fraction" type="range" min="0.01" max="1" step="0.01"
 value="{fraction}"> <span id="ib-fraction-value"></span></label>
<span id="ib-edge-count"></span>
<input id="ib-search" type="search" placeholder="search node id or label"><span id="ib-search-count"
 class="ib-note"></span>
<button id="ib-reset" type="button">reset view</button>
<span class="ib-note">{n_nodes} nodes, {n_edges} edges · wheel: zoom, drag: pan</span></div>
<div id="ib-main"><div id="ib-plot"><canvas id="ib-canvas"></canvas><svg id="ib-svg"></svg></div>
<div id="ib-side"><div id="ib-search-results"></div>
<h2>Node</h2><p id="ib-hint" class="ib-note">hover or click a node</p>
<div id="ib-details"><table>
<tr><td>id</td><td id="ib-node-id"></td></tr><tr><td>layer</td><td id="ib-node-layer"></td></tr>
<tr><td>Λ (eigenvalue)</td><td id="ib-node-lambda"></td></tr>
<tr><td>activation variance</td><td id="ib-node-variance"></td></tr>
<tr><td>module</td><td id="ib-node-module"></td></tr>
<tr><td>label</td><td id="ib-node-label"></td></tr></table>
<h2>In-edges</h2><div id="ib-in-edges-count" class="ib-note"></div><ol id="ib-in-edges"></ol>
<h2>Out-edges</h2><div id="ib-out-edges-count" class="ib-note"></div><ol id="ib-out-edges"></ol>
</div>
<h2>Modules</h2><div id="ib-legend"></div>
<p class="ib-note">Edges: per layer pair, the largest edges whose cumulative weight reaches the
slider's share of the pair's total (InteractionGraph.prune). Node area ∝ Λ; width ∝ E.</p>
</div></div></div>
<script type="application/json" id="ib-data">{data}</script>
<script>{js}</script>
</body></html>
"""


def render_html(
    graph: InteractionGraph,
    partition: Any = None,
    labels: Mapping[str, Any] | None = None,
    title: str | None = None,
    fraction: float = 1.0,
) -> str:
    """The viewer page as a string (see :func:`write_html`)."""
    if not (isinstance(fraction, int | float) and 0.01 <= fraction <= 1.0):
        raise InvalidGraphError(f"fraction must be in [0.01, 1], got {fraction!r}")
    data = viewer_data(graph, partition, labels, title)
    # NaN were mapped to None, and a graph holds no Inf (its arrays are validated, read-only
    # copies), so strict JSON cannot fail here
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    n_edges = sum(len(p["w"]) for p in data["pairs"])
    return _PAGE.format(
        title=html.escape(data["title"]),
        css=(ASSETS / "viewer.css").read_text(encoding="utf-8"),
        js=(ASSETS / "viewer.js").read_text(encoding="utf-8"),
        data=text.replace("</", "<\\/"),  # a label holding "</script>" cannot end the block
        fraction=f"{float(fraction):g}",
        n_nodes=graph.n_nodes,
        n_edges=n_edges,
    )


def write_html(
    graph: InteractionGraph,
    path: str | os.PathLike[str],
    partition: Any = None,
    labels: Mapping[str, Any] | None = None,
    title: str | None = None,
    fraction: float = 1.0,
) -> None:
    """Write the interactive viewer of ``graph`` as one self-contained HTML file (atomic).

    Parameters
    ----------
    graph : InteractionGraph
    path : path of the ``.html`` file
    partition : Partition or mapping node id -> module id, optional
        Module colours (default: the graph's attached modules).
    labels : mapping node id -> str, optional
        Per-node text (e.g. ``"k = 14"``), shown and searchable.
    title : str, optional
        Page title (default: ``graph.metadata["title"]`` or "interaction graph").
    fraction : float in [0.01, 1]
        Initial slider position (share of each pair's edge weight shown).

    Raises
    ------
    InvalidGraphError
        Empty graph, bad ``fraction`` or ``labels``; ``UnknownNodeError`` for a label or
        module of a node that is not in the graph.
    GraphWriteError
        Unwritable path (nothing is written).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from graphs import InteractionGraph, NodeLayer
    >>> from graphs.viewer import write_html
    >>> layer = lambda n, s: NodeLayer(n, s, np.ones(s), np.zeros(s, bool), np.ones(s))
    >>> g = InteractionGraph([layer("a", 2), layer("b", 3)], [np.ones((3, 2))])
    >>> path = os.path.join(tempfile.mkdtemp(), "graph.html")
    >>> write_html(g, path, labels={"a:0": "first"})
    >>> "ib-data" in open(path, encoding="utf-8").read()
    True
    """
    from graphs.export import atomic_write  # export re-exports this module's neighbours

    page = render_html(graph, partition, labels, title, fraction).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(page))


def read_graph_file(path: str | os.PathLike[str]) -> InteractionGraph:
    """A graph from any file ``graphs`` writes, chosen by suffix: ``.npz``, ``.graphml``,
    ``.gexf``, ``.json`` (node-link, or Neuronpedia when it has ``qParams``/``metadata.slug``).
    Modules come from the file when it has them.

    Raises
    ------
    GraphFormatError
        An unknown suffix, or a file the reader refuses (the message says why).
    """
    import graphs

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".json":
        with open(file, encoding="utf-8") as fh:
            head = fh.read(4096)
        neuronpedia = '"qParams"' in head or '"metadata": {"slug"' in head
        return graphs.read_neuronpedia_json(file) if neuronpedia else graphs.export.read_json(file)
    readers = {".npz": graphs.load_npz, ".graphml": graphs.read_graphml, ".gexf": graphs.read_gexf}
    if suffix not in readers:
        raise GraphFormatError(f"{str(file)!r}: graph files end in .npz, .graphml, .gexf or .json")
    return readers[suffix](file)
