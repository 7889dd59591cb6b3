"""graphs: the torch-free side of interbasis (interaction graphs, modules, export, drawing).

Never imports torch or interbasis (DESIGN §2); uses numpy, scipy, networkx, igraph, leidenalg
and matplotlib (drawing only, imported lazily by :func:`draw_graph`).
"""

from __future__ import annotations

from typing import Any

from graphs.consensus import ModuleStability, module_stability
from graphs.cut import cut_cost, default_epsilon, log_weights, resolve_epsilon
from graphs.errors import (
    EpsilonWarning,
    GraphError,
    GraphFormatError,
    GraphWriteError,
    InvalidGraphError,
    ModuleSearchError,
    UnknownNodeError,
)
from graphs.export import (
    load_npz,
    read_graphml,
    read_json,
    save_npz,
    to_node_link,
    write_graphml,
    write_json,
)
from graphs.formats import read_gexf, read_neuronpedia_json, write_gexf, write_neuronpedia_json
from graphs.graph import InteractionGraph, NodeLayer
from graphs.modules import Partition, adjusted_rand_index, find_modules
from graphs.null_model import (
    NullModelResult,
    ResolutionSweep,
    null_model,
    resolution_sweep,
    shuffle_edges,
    stability,
)
from graphs.viewer import write_html


def draw_graph(graph: InteractionGraph, *args: Any, **kwargs: Any) -> Any:
    """Layered drawing; see :func:`graphs.draw.draw_graph` (imports matplotlib on first use)."""
    from graphs.draw import draw_graph as _draw

    return _draw(graph, *args, **kwargs)


__all__ = [
    "EpsilonWarning",
    "GraphError",
    "GraphFormatError",
    "GraphWriteError",
    "InteractionGraph",
    "InvalidGraphError",
    "ModuleSearchError",
    "ModuleStability",
    "NodeLayer",
    "NullModelResult",
    "Partition",
    "ResolutionSweep",
    "UnknownNodeError",
    "adjusted_rand_index",
    "cut_cost",
    "default_epsilon",
    "draw_graph",
    "find_modules",
    "load_npz",
    "log_weights",
    "module_stability",
    "null_model",
    "read_gexf",
    "read_graphml",
    "read_json",
    "read_neuronpedia_json",
    "resolution_sweep",
    "resolve_epsilon",
    "save_npz",
    "shuffle_edges",
    "stability",
    "to_node_link",
    "write_gexf",
    "write_graphml",
    "write_html",
    "write_json",
    "write_neuronpedia_json",
]
