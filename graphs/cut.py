"""The log-weighted cut objective (seed 004 §5.2.3, eqs 34–35, footnote 10; DESIGN §4).

An interaction of strength ``w`` between two modules removes ``γ ∝ 1 − 2 log w / log ε``
degrees of freedom (seed 004 eq. 34), i.e. an amount proportional to ``max(0, log(w / ε^½))``
(zero once ``w ≤ ε^½``, seed footnote 11), and such amounts add across mediating nodes
(eq. 35). Our squared edges ``E`` scale as ``w²`` (effect on the loss), so ``w = √E`` and the
cost of an edge is ``½ · max(0, log(E / ε))``.

Two ways of summing the cost over the interface between modules are offered:

``"edge"`` (default, DESIGN §4)
    sum over cut edges of ``½ · max(0, log(E / ε))`` — a documented simplification.
``"mediating"`` (the seed's own form)
    sum over mediating nodes ``v`` (the input side of a cut edge: the module downstream
    depends on ``v``) and over each other module ``m`` that reads ``v`` of
    ``max(0, log(w_{v,m} / ε^½))`` with ``w_{v,m} = Σ_{u ∈ m} √E_{u v}`` (footnote 10: the
    sum of the weights connecting ``v`` to ``m``). With one cut edge per mediating node both
    forms agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from graphs.errors import ModuleSearchError
from graphs.graph import InteractionGraph

CostModel = Literal["edge", "mediating"]
COST_MODELS = ("edge", "mediating")
DEFAULT_EPSILON_FRACTION = 1e-3


def default_epsilon(
    graph: InteractionGraph, fraction: float = DEFAULT_EPSILON_FRACTION, per_pair: bool = False
) -> float | tuple[float, ...]:
    """The default cutoff: ``fraction`` (1e-3) of the largest edge weight.

    ε lives on the loss scale, like ``E``. With the default, an interaction counts only if its
    ``E`` exceeds 0.1 % of the strongest one (its strength ``w = √E`` exceeds ≈3 %), and the
    strongest edge costs ``½ log(1000) ≈ 3.45``. ``per_pair=True`` takes the largest edge of
    each layer pair instead (one ε per pair). A graph (or pair) with no positive edge gets
    ε = 1.0: any ε gives the same, empty, objective there.

    Examples
    --------
    >>> import numpy as np
    >>> from graphs import InteractionGraph, NodeLayer, default_epsilon
    >>> layer = lambda n, s: NodeLayer(n, s, np.ones(s), np.zeros(s, bool), np.ones(s))
    >>> default_epsilon(InteractionGraph([layer("a", 1), layer("b", 1)], [np.array([[4.0]])]))
    0.004
    """
    if (
        isinstance(fraction, bool | np.bool_)
        or not isinstance(fraction, int | float | np.integer | np.floating)
        or not 0.0 < fraction < math.inf
    ):
        raise ModuleSearchError(f"fraction must be positive and finite, got {fraction!r}")
    maxima = [float(e.max()) if e.size else 0.0 for e in graph.edges]
    if per_pair:
        return tuple(fraction * m if m > 0 else 1.0 for m in maxima)
    largest = max(maxima, default=0.0)
    return fraction * largest if largest > 0 else 1.0


def resolve_epsilon(graph: InteractionGraph, epsilon: Any = None) -> tuple[float, ...]:
    """One ε per layer pair from ``None`` (:func:`default_epsilon`), a number or a sequence.

    Raises
    ------
    ModuleSearchError
        ε ≤ 0, NaN or Inf (naming the layer pair), or a sequence of the wrong length.
    """
    n_pairs = len(graph.edges)
    if epsilon is None:
        epsilon = default_epsilon(graph)
    if isinstance(epsilon, Sequence | np.ndarray) and not isinstance(epsilon, str):
        values = list(epsilon)
        if len(values) != n_pairs:
            raise ModuleSearchError(
                f"epsilon has {len(values)} entries; the graph has {n_pairs} layer pairs"
            )
    else:
        values = [epsilon] * n_pairs
    out = []
    for i, value in enumerate(values):
        pair = f"{graph.layers[i].name!r} -> {graph.layers[i + 1].name!r}"
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise ModuleSearchError(f"epsilon for {pair} must be a number, got {value!r}")
        if not (0.0 < float(value) < math.inf):
            raise ModuleSearchError(
                f"epsilon for {pair} must be positive and finite (it is a loss-scale cutoff), "
                f"got {value!r}"
            )
        out.append(float(value))
    return tuple(out)


def log_weights(graph: InteractionGraph, epsilon: Any = None) -> list[np.ndarray]:
    """Per-edge costs ``½ · max(0, log(E / ε))`` (seed 004 eqs 34–35; DESIGN §4).

    Derivation: an interaction of strength ``w`` removes a share ``1 − 2 log w / log ε`` of a
    constraint's degrees of freedom (eq. 34), proportional to ``log(w / ε^½)`` and zero for
    ``w ≤ ε^½``; these logs add across mediating nodes (eq. 35). ``E ∝ w²``, so
    ``log(w / ε^½) = ½ log(E / ε)``.

    Parameters
    ----------
    graph : InteractionGraph
    epsilon : float, sequence of floats (one per layer pair) or None
        Loss-scale cutoff; None uses :func:`default_epsilon`.

    Returns
    -------
    list of float64 arrays
        Same shapes as ``graph.edges``; zero on constant nodes (they have no edges) and on
        edges with ``E ≤ ε``.
    """
    eps = resolve_epsilon(graph, epsilon)
    return [0.5 * np.log(np.maximum(e / ep, 1.0)) for e, ep in zip(graph.edges, eps, strict=True)]


@dataclass(frozen=True)
class EdgeTable:
    """Flat view of a graph for the module search: non-constant nodes and positive edges.

    ``src``/``dst`` index ``node_ids`` (``src`` in layer ``i``, ``dst`` in layer ``i + 1``),
    ``weight`` is ``E``, ``cost`` the log weight, ``eps_src`` the ε of the edge's layer pair.
    """

    node_ids: list[str]
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    cost: np.ndarray
    eps_src: np.ndarray
    epsilon: tuple[float, ...]

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    def assigned(self) -> np.ndarray:
        """Nodes with at least one edge above ε (the others carry no evidence)."""
        mask = np.zeros(self.n_nodes, dtype=bool)
        above = self.cost > 0
        mask[self.src[above]] = True
        mask[self.dst[above]] = True
        return mask

    def labels(self, membership: Mapping[str, int]) -> np.ndarray:
        """Module id per table node from a membership mapping (missing -> −1)."""
        return np.array([membership.get(nid, -1) for nid in self.node_ids], dtype=np.int64)


def edge_table(graph: InteractionGraph, epsilon: Any = None) -> EdgeTable:
    """Build the :class:`EdgeTable` of ``graph`` (vectorised per layer pair)."""
    eps = resolve_epsilon(graph, epsilon)
    node_ids: list[str] = []
    offsets = []  # table position of node 0 of each layer (constant nodes are skipped)
    for layer in graph.layers:
        first = 1 if layer.has_constant else 0
        offsets.append(len(node_ids) - first)
        node_ids += [f"{layer.name}:{i}" for i in range(first, layer.size)]
    parts: list[tuple[np.ndarray, ...]] = []
    for i, (e, ep) in enumerate(zip(graph.edges, eps, strict=True)):
        out, inp = np.nonzero(e)  # constant rows/columns are zero, hence never listed
        w = e[out, inp]
        parts.append((inp + offsets[i], out + offsets[i + 1], w, np.full(w.size, ep)))
    src, dst, weight, eps_src = (
        (np.concatenate([p[k] for p in parts]) for k in range(4))
        if parts
        else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    )
    cost = 0.5 * np.log(np.maximum(weight / eps_src, 1.0)) if weight.size else np.zeros(0)
    return EdgeTable(
        node_ids, src.astype(np.int64), dst.astype(np.int64), weight, cost, eps_src, eps
    )


def cut_costs(table: EdgeTable, labels: np.ndarray, cost: CostModel = "edge") -> np.ndarray:
    """Cut cost of many candidate partitions at once.

    Parameters
    ----------
    table : EdgeTable
    labels : int array (n_candidates, n_nodes) or (n_nodes,)
        Module id per table node, −1 = unassigned (its edges belong to no module, so they
        cost nothing).
    cost : {"edge", "mediating"}
        How costs are summed (module docstring).

    Returns
    -------
    float64 array (n_candidates,) or float
    """
    if cost not in COST_MODELS:
        raise ModuleSearchError(f"cost must be one of {COST_MODELS}, got {cost!r}")
    labels = np.asarray(labels, dtype=np.int64)
    single = labels.ndim == 1
    lab = np.atleast_2d(labels)
    ls, ld = lab[:, table.src], lab[:, table.dst]
    cut = (ls != ld) & (ls >= 0) & (ld >= 0)  # (n_candidates, n_edges)
    if cost == "edge":
        result = cut.astype(np.float64) @ table.cost
    else:
        n, n_edges = table.n_nodes, table.src.size
        # incidence: edge -> its mediating (source) node; w = Σ √E over the edges to module m
        incidence = sp.csr_matrix((np.ones(n_edges), (np.arange(n_edges), table.src)), (n_edges, n))
        eps_node = np.ones(n)
        eps_node[table.src] = table.eps_src
        result = np.zeros(lab.shape[0])
        sqrt_w = np.sqrt(table.weight)
        for m in range(int(lab.max(initial=-1)) + 1):
            into_m = (cut & (ld == m)).astype(np.float64) * sqrt_w  # (n_candidates, n_edges)
            w_vm = np.asarray((incidence.T @ into_m.T).T)  # (n_candidates, n_nodes)
            result += (0.5 * np.log(np.maximum(w_vm**2 / eps_node, 1.0))).sum(axis=1)
    return result[0] if single else result


def cut_cost(
    graph: InteractionGraph, partition: Any, epsilon: Any = None, cost: CostModel = "edge"
) -> float:
    """Log-weighted cut cost of a partition (seed 004 §5.2.3; module docstring).

    Parameters
    ----------
    graph : InteractionGraph
    partition : Partition or mapping node id -> module id
        Nodes that are missing or have module −1 are unassigned and contribute nothing.
    epsilon : float, sequence (one per layer pair) or None (:func:`default_epsilon`)
    cost : {"edge", "mediating"}

    Returns
    -------
    float
        Non-negative; 0 for a single module.
    """
    membership = getattr(partition, "membership", partition)
    table = edge_table(graph, epsilon)
    for node_id in membership:
        graph.locate(node_id)  # raises UnknownNodeError for ids that are not in the graph
    return float(cut_costs(table, table.labels(membership), cost))


def cut_saving(table: EdgeTable, labels: np.ndarray) -> float:
    """Share of the total cost a partition avoids cutting, beyond what chance would avoid.

    ``saving = (1 − Σ_m (S_m / 2W)²) − cut / W`` with ``W`` the total per-edge cost, ``S_m``
    the summed cost-strength of module ``m``'s nodes and ``cut`` its per-edge cut cost. The
    first term is the cut fraction expected when edges are placed at random with every node's
    strength kept (configuration model), so this is Newman's modularity of the cost-weighted
    graph, read as a cut statistic: 0 for one module, > 0 when less is cut than by chance.

    Parameters
    ----------
    table : EdgeTable
    labels : int array (n_nodes,)
        Module per table node, −1 = unassigned (such nodes have no costed edge).
    """
    labels = np.asarray(labels, dtype=np.int64)
    total = float(table.cost.sum())
    if total == 0:
        return 0.0
    strength = np.bincount(table.src, table.cost, table.n_nodes) + np.bincount(
        table.dst, table.cost, table.n_nodes
    )
    assigned = labels >= 0
    module_strength = np.bincount(labels[assigned], strength[assigned])
    cut = float(cut_costs(table, labels, "edge"))
    return float(1.0 - ((module_strength / (2 * total)) ** 2).sum() - cut / total)
