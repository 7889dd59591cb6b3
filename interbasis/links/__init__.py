"""Links: one model, every view — the interaction graph tied to Hessian, D_LR and spectral edge.

- :mod:`.jvp`: node functions and their change along parameter directions (JVP in the basis);
- :mod:`.stages`: weight layers between node layers as transitions ``T = C^l_pinv W^T C^{l+1}``;
- :mod:`.hessian`: eigenvector energy per (out-node, in-node), module shares, curvature masses;
- :mod:`.nullspace`: zero-curvature directions attributed to the degeneracy mechanisms;
- :mod:`.dlr`: D_LR with interaction-basis features of layers and modules;
- :mod:`.edge`: nodes and modules moved by a direction, Fourier labels and match;
- :mod:`.series`: a training run's checkpoints, lazily loaded, and per-checkpoint summaries;
- :mod:`.atlas` / :mod:`.report`: the HTML + JSON report; :mod:`.cli`: ``interbasis atlas``.

See ``docs/links.md``.
"""

from interbasis.links.atlas import (
    AtlasData,
    AtlasSettings,
    model_report,
    render,
    series_report,
    write_atlas,
)
from interbasis.links.dlr import GraphDLR, graph_dlr, layer_activations
from interbasis.links.edge import (
    EdgeGraphLinks,
    FourierGrid,
    edge_graph_links,
    key_classes,
    key_frequencies,
)
from interbasis.links.hessian import HessianGraphLinks, hessian_eigenpairs, hessian_graph_links
from interbasis.links.jvp import (
    NodeJVPs,
    node_function_jvps,
    node_functions,
    split_directions,
)
from interbasis.links.nullspace import (
    BehaviouralNullSpace,
    MechanismDirections,
    NullAttribution,
    attribute_null_directions,
    behavioural_null_space,
    mechanism_directions,
    null_vectors,
)
from interbasis.links.series import (
    CheckpointSeries,
    ModelSummary,
    load_series,
    spectral_gaps,
    summarize_model,
)
from interbasis.links.stages import (
    GraphStage,
    find_graph_stages,
    node_pair_direction,
    second_moments,
    stage_transitions,
)

__all__ = [
    "AtlasData",
    "AtlasSettings",
    "BehaviouralNullSpace",
    "CheckpointSeries",
    "EdgeGraphLinks",
    "FourierGrid",
    "GraphDLR",
    "GraphStage",
    "HessianGraphLinks",
    "MechanismDirections",
    "ModelSummary",
    "NodeJVPs",
    "NullAttribution",
    "attribute_null_directions",
    "behavioural_null_space",
    "edge_graph_links",
    "find_graph_stages",
    "graph_dlr",
    "hessian_eigenpairs",
    "hessian_graph_links",
    "key_classes",
    "key_frequencies",
    "layer_activations",
    "load_series",
    "mechanism_directions",
    "model_report",
    "node_function_jvps",
    "node_functions",
    "node_pair_direction",
    "null_vectors",
    "render",
    "second_moments",
    "series_report",
    "spectral_gaps",
    "split_directions",
    "stage_transitions",
    "summarize_model",
    "write_atlas",
]
