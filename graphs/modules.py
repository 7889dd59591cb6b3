"""Modules of an interaction graph by the log-weighted cut (seed 004 §5.2.3; DESIGN §4).

Minimising the cut cost alone is solved by one module, so every method states its constraint:

``"auto"`` (default)
    Leiden (below) at each resolution ``resolution × (1, 1/2, 1/4)``; the partition kept is
    the coarsest (smallest resolution) whose null-model z-score (:func:`graphs.null_model`,
    ``AUTO_SHUFFLES`` shuffles, seed ``seed``) is within ``AUTO_Z_SLACK`` = 1 of the best
    candidate's — a one-standard-deviation parsimony rule, since z is estimated from few
    shuffles; single-module partitions (z = −inf) are chosen only when nothing else is
    found. The result is reported as ``method="leiden"`` at the
    chosen resolution (so :meth:`Partition.search_kwargs` reproduces it exactly), with the
    candidates and their z in ``Partition.options``. Chosen by the planted-module fixtures
    (docs/modules.md): Leiden at resolution 1 splits sub-networks by depth (two-task ARI
    0.54–0.72, block-diagonal 0.48); the z-selected resolution recovers every fixture
    (ARI ≥ 0.95 over 5 seeds).
``"leiden"``
    Leiden (``leidenalg`` on an undirected ``igraph`` graph weighted by the per-edge costs of
    :func:`graphs.log_weights`, as rib did) with a resolution parameter: ``quality="modularity"``
    (``RBConfigurationVertexPartition``) or ``"cpm"`` (``CPMVertexPartition``, resolution in
    cost units per node pair). leidenalg (or, with ``engine="igraph"``, igraph's own C
    implementation) gives the optimiser; we only prepare weights.
``"exact"``
    All bipartitions (k = 2) with both sides ≥ ``min_size``: the global minimum of the cut cost,
    for graphs up to 16 non-constant nodes (to validate the heuristics).
``"spectral"``
    k-way spectral clustering of the cost-weighted graph (normalised adjacency eigenvectors via
    ``scipy.linalg.eigh`` / ``scipy.sparse.linalg.eigsh``, rows normalised, ``kmeans2``); k from
    ``n_modules`` or from the largest eigengap.

Nodes without an edge above ε carry no evidence and are reported as unassigned (module −1);
constant nodes are not in the membership at all.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.cluster.vq import kmeans2
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

from graphs.cut import COST_MODELS, CostModel, EdgeTable, cut_costs, edge_table
from graphs.errors import EpsilonWarning, ModuleSearchError
from graphs.graph import InteractionGraph

Method = Literal["auto", "leiden", "exact", "spectral"]
METHODS = ("auto", "leiden", "exact", "spectral")
AUTO_SCALES = (1.0, 0.5, 0.25)  # candidate resolutions of method="auto", times `resolution`
AUTO_SHUFFLES = 10  # null-model shuffles per candidate
AUTO_Z_SLACK = 1.0  # candidates within this of the best z count as equally significant
QUALITIES = ("modularity", "cpm")
ENGINES = ("leidenalg", "igraph")
EXACT_MAX_NODES = 16


@dataclass(frozen=True)
class Partition:
    """A partition of the non-constant nodes into modules, with every parameter used.

    Attributes
    ----------
    membership : dict node id -> module id
        Modules are numbered 0.. by decreasing size (ties: earliest node); −1 = unassigned.
    cost : float
        Log-weighted cut cost under ``cost_model`` (:func:`graphs.cut_cost`).
    sizes : tuple of int
        ``sizes[m]`` = number of nodes in module ``m``.
    epsilon : tuple of float
        The ε used, one per layer pair.
    method, resolution, quality, engine, n_modules_requested, min_size, cost_model, seed
        The arguments of :func:`find_modules` (None where a method does not use one).
    notes : tuple of str
        What happened out of the ordinary (e.g. no edge above ε).
    options : tuple of (name, value) pairs
        How the arguments were chosen (``method="auto"``: the candidate resolutions, their
        null-model z and the number of shuffles; :func:`graphs.module_stability`'s
        consensus: its seeds, resolutions and threshold).
    """

    membership: dict[str, int]
    cost: float
    sizes: tuple[int, ...]
    epsilon: tuple[float, ...]
    method: str
    resolution: float | None
    quality: str | None
    engine: str | None
    n_modules_requested: int | None
    min_size: int
    cost_model: CostModel
    seed: int
    notes: tuple[str, ...] = field(default=())
    options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def n_modules(self) -> int:
        """Number of modules found (unassigned nodes not counted)."""
        return len(self.sizes)

    def modules(self) -> list[list[str]]:
        """Node ids of each module, in module order."""
        out: list[list[str]] = [[] for _ in self.sizes]
        for node_id, m in self.membership.items():
            if m >= 0:
                out[m].append(node_id)
        return out

    def unassigned(self) -> list[str]:
        """Node ids with no edge above ε (module −1)."""
        return [node_id for node_id, m in self.membership.items() if m < 0]

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make :func:`find_modules` reproduce this partition."""
        return {
            "epsilon": self.epsilon,
            "method": self.method,
            "resolution": self.resolution,
            "quality": self.quality,
            "engine": self.engine,
            "n_modules": self.n_modules_requested,
            "min_size": self.min_size,
            "cost": self.cost_model,
            "seed": self.seed,
        }


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber modules by decreasing size, ties by earliest node; −1 stays −1."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    assigned = labels >= 0
    if not assigned.any():
        return out
    uniq, first, inverse, counts = np.unique(
        labels[assigned], return_index=True, return_inverse=True, return_counts=True
    )
    order = np.lexsort((first, -counts))
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[order] = np.arange(uniq.size)
    out[assigned] = rank[inverse]
    return out


def _is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` passes ``isinstance(value, int)``)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_args(
    table: EdgeTable,
    method: str,
    resolution: float | None,
    quality: str | None,
    engine: str | None,
    n_modules: int | None,
    min_size: int,
    cost: str,
) -> None:
    if method not in METHODS:
        raise ModuleSearchError(f"method must be one of {METHODS}, got {method!r}")
    if cost not in COST_MODELS:
        raise ModuleSearchError(f"cost must be one of {COST_MODELS}, got {cost!r}")
    if not _is_int(min_size) or min_size < 1:
        raise ModuleSearchError(f"min_size must be an int >= 1, got {min_size!r}")
    if n_modules is not None and (not _is_int(n_modules) or n_modules < 1):
        raise ModuleSearchError(f"n_modules must be an int >= 1 or None, got {n_modules!r}")
    if method in ("leiden", "auto"):
        if n_modules is not None or min_size != 1:
            raise ModuleSearchError(
                "method='leiden' is constrained by `resolution`, not by n_modules/min_size; use "
                "method='exact' or 'spectral' for a fixed number of modules, or resolution_sweep"
            )
        if quality is not None and quality not in QUALITIES:
            raise ModuleSearchError(f"quality must be one of {QUALITIES}, got {quality!r}")
        if engine is not None and engine not in ENGINES:
            raise ModuleSearchError(f"engine must be one of {ENGINES}, got {engine!r}")
        return  # resolution was checked by find_modules
    if resolution is not None or quality is not None or engine is not None:
        raise ModuleSearchError(
            f"resolution/quality/engine are Leiden parameters; {method!r} uses none"
        )
    if method == "spectral" and min_size != 1:
        raise ModuleSearchError("min_size is only enforced by method='exact'")
    if method == "exact":
        if n_modules not in (None, 2):
            raise ModuleSearchError(f"exact search finds bipartitions (k = 2), got {n_modules}")
        if table.n_nodes > EXACT_MAX_NODES:
            raise ModuleSearchError(
                f"exact search enumerates all bipartitions and handles at most {EXACT_MAX_NODES} "
                f"non-constant nodes; this graph has {table.n_nodes}. Use method='leiden'."
            )


def _leiden(
    table: EdgeTable, nodes: np.ndarray, resolution: float, quality: str, engine: str, seed: int
) -> np.ndarray:
    import igraph

    position = np.full(table.n_nodes, -1)
    position[nodes] = np.arange(nodes.size)
    keep = table.cost > 0
    pairs = zip(position[table.src[keep]].tolist(), position[table.dst[keep]].tolist(), strict=True)
    g = igraph.Graph(n=nodes.size, edges=list(pairs))
    weights = table.cost[keep].tolist()
    if engine == "igraph":  # igraph's C implementation; it draws from igraph's global RNG
        igraph.set_random_number_generator(random.Random(seed))
        try:
            objective = "modularity" if quality == "modularity" else "CPM"
            clustering = g.community_leiden(
                objective_function=objective,
                weights=weights,
                resolution=resolution,
                n_iterations=-1,
            )
        finally:
            igraph.set_random_number_generator(random)
        return np.asarray(clustering.membership, dtype=np.int64)
    import leidenalg

    kind = (
        leidenalg.RBConfigurationVertexPartition
        if quality == "modularity"
        else leidenalg.CPMVertexPartition
    )
    part = leidenalg.find_partition(
        g,
        kind,
        weights=weights,
        resolution_parameter=resolution,
        n_iterations=-1,  # iterate until no improvement: independent of the iteration budget
        seed=seed,
    )
    return np.asarray(part.membership, dtype=np.int64)


def _exact(table: EdgeTable, nodes: np.ndarray, min_size: int, cost: CostModel) -> np.ndarray:
    n = nodes.size
    if n < 2 * min_size:
        raise ModuleSearchError(
            f"exact search needs >= {2 * min_size} assigned nodes for two modules of size "
            f">= {min_size}; only {n} nodes have an edge above epsilon"
        )
    # node 0 stays on side 0 (the two labelings of a bipartition are the same partition)
    codes = np.arange(2 ** (n - 1), dtype=np.int64)
    sides = (codes[:, None] >> np.arange(n - 1)) & 1  # (2^(n-1), n-1)
    sides = np.concatenate([np.zeros((codes.size, 1), np.int64), sides], axis=1)
    ones = sides.sum(axis=1)
    valid = (ones >= min_size) & (n - ones >= min_size)
    candidates = np.full((int(valid.sum()), table.n_nodes), -1, dtype=np.int64)
    candidates[:, nodes] = sides[valid]
    costs = cut_costs(table, candidates, cost)
    return candidates[int(np.argmin(costs)), nodes]


def _spectral(table: EdgeTable, nodes: np.ndarray, n_modules: int | None, seed: int) -> np.ndarray:
    n = nodes.size
    if n_modules is not None and n_modules > n:
        raise ModuleSearchError(f"n_modules={n_modules} exceeds the {n} assigned nodes")
    if n == 1 or n_modules == 1:
        return np.zeros(n, dtype=np.int64)
    position = np.full(table.n_nodes, -1)
    position[nodes] = np.arange(n)
    keep = table.cost > 0
    i, j, w = position[table.src[keep]], position[table.dst[keep]], table.cost[keep]
    adj = sp.coo_matrix((np.r_[w, w], (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    d = np.asarray(adj.sum(axis=1)).ravel() ** -0.5  # every assigned node has a costed edge
    norm = sp.diags(d) @ adj @ sp.diags(d)  # D^-1/2 A D^-1/2: top eigvecs = bottom of Laplacian
    n_eig = min(n, 21 if n_modules is None else n_modules + 1)
    if n <= 2000 or n_eig >= n:
        vals, vecs = scipy.linalg.eigh(norm.toarray(), subset_by_index=[n - n_eig, n - 1])
    else:
        vals, vecs = eigsh(norm, k=n_eig, which="LA")
    vals, vecs = vals[::-1], vecs[:, ::-1]  # descending
    k = n_modules if n_modules is not None else int(np.argmax(-np.diff(vals))) + 1
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    emb = vecs[:, :k]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "empty cluster": fewer modules, fine
        _, labels = kmeans2(emb, k, minit="++", seed=seed)
    return labels.astype(np.int64)


def _auto(graph: InteractionGraph, epsilon: Any, kwargs: dict[str, Any]) -> Partition:
    """Leiden at the candidate resolution with the largest null-model z (module docstring)."""
    from graphs.null_model import null_model

    res = 1.0 if kwargs["resolution"] is None else float(kwargs["resolution"])
    found = []
    for scale in AUTO_SCALES:
        part = find_modules(graph, epsilon, "leiden", **{**kwargs, "resolution": res * scale})
        z = -np.inf
        if part.n_modules > 1:
            z = float(null_model(graph, part, n_shuffles=AUTO_SHUFFLES, seed=part.seed).z)
        found.append((z, part))
    tried = tuple((p.resolution, z if np.isfinite(z) else None) for z, p in found)
    top = max(z for z, _ in found)
    # the coarsest candidate within one z unit of the best (a 1-sigma parsimony rule)
    chosen = next(p for z, p in reversed(found) if z >= top - AUTO_Z_SLACK or z == top)
    options = (("selected_by", "null-model z"), ("candidates", tuple(tried)),
               ("n_shuffles", AUTO_SHUFFLES))  # fmt: skip
    return replace(chosen, options=options)


def find_modules(
    graph: InteractionGraph,
    epsilon: Any = None,
    method: Method = "auto",
    *,
    resolution: float | None = None,
    quality: str | None = None,
    engine: str | None = None,
    n_modules: int | None = None,
    min_size: int = 1,
    cost: CostModel = "edge",
    seed: int = 0,
) -> Partition:
    """Partition the non-constant nodes by the log-weighted cut (seed 004 §5.2.3, eqs 34–35).

    Parameters
    ----------
    graph : InteractionGraph
    epsilon : float, sequence of floats (one per layer pair) or None
        Loss-scale cutoff; None = :func:`graphs.default_epsilon` (1e-3 of the largest edge).
    method : {"auto", "leiden", "exact", "spectral"}
        See the module docstring for the constraint each one uses.
    resolution : float, optional
        Leiden and auto (the largest of its candidates); default 1.0.
    quality : {"modularity", "cpm"}, optional
        Leiden only; default "modularity".
    engine : {"leidenalg", "igraph"}, optional
        Leiden only; default "leidenalg" (``leidenalg.find_partition``). "igraph" runs igraph's
        own C implementation of the same algorithm (``Graph.community_leiden``): about 7x faster
        end to end on a 1 000-node, 100 000-edge graph (benchmarks/bench_modules.py).
    n_modules : int, optional
        exact (must be 2) and spectral (None = largest eigengap among the first 20).
    min_size : int
        exact only: both modules need at least this many nodes.
    cost : {"edge", "mediating"}
        Cost reported (and, for exact, minimised); Leiden and spectral optimise per-edge costs.
    seed : int
        Seed of Leiden / k-means (and of auto's null model); results are deterministic for a
        fixed seed, and :meth:`Partition.search_kwargs` reproduces them.

    Returns
    -------
    Partition

    Raises
    ------
    ModuleSearchError
        ε ≤ 0 (naming the layer pair), a parameter the method does not use, exact search on
        more than 16 non-constant nodes (suggesting Leiden).

    Warns
    -----
    EpsilonWarning
        No edge exceeds ε: one module per connected component of the positive-edge graph.

    Examples
    --------
    >>> import numpy as np
    >>> from graphs import InteractionGraph, NodeLayer, find_modules
    >>> layer = lambda n: NodeLayer(n, 2, np.ones(2), np.zeros(2, bool), np.ones(2))
    >>> g = InteractionGraph([layer("a"), layer("b")], [np.array([[1.0, 1e-6], [1e-6, 1.0]])])
    >>> find_modules(g, epsilon=1e-3, method="exact").membership
    {'a:0': 0, 'a:1': 1, 'b:0': 0, 'b:1': 1}
    """
    if not isinstance(graph, InteractionGraph):
        raise ModuleSearchError(f"graph must be an InteractionGraph, got {type(graph).__name__}")
    if not _is_int(seed) or seed < 0:
        raise ModuleSearchError(f"seed must be an int >= 0, got {seed!r}")
    if resolution is not None and (
        isinstance(resolution, bool | np.bool_)
        or not isinstance(resolution, int | float | np.integer | np.floating)
        or not 0 <= resolution < np.inf
    ):
        raise ModuleSearchError(f"resolution must be a finite number >= 0, got {resolution!r}")
    table = edge_table(graph, epsilon)
    _check_args(table, method, resolution, quality, engine, n_modules, min_size, cost)
    if method == "auto" and table.assigned().any():
        kwargs = dict(resolution=resolution, quality=quality, engine=engine, cost=cost, seed=seed)
        return _auto(graph, epsilon, kwargs)
    leiden = method in ("leiden", "auto")
    res = (1.0 if resolution is None else float(resolution)) if leiden else None
    qual = (quality or "modularity") if leiden else None
    eng = (engine or "leidenalg") if leiden else None
    assigned = table.assigned()
    nodes = np.flatnonzero(assigned)
    labels = np.full(table.n_nodes, -1, dtype=np.int64)
    notes: tuple[str, ...] = ()
    if nodes.size == 0:
        largest = float(table.weight.max(initial=0.0))
        warnings.warn(
            f"no edge exceeds epsilon {table.epsilon} (largest edge {largest:.3g}); returning one "
            "module per connected component of the positive-edge graph",
            EpsilonWarning,
            stacklevel=2,
        )
        adj = sp.coo_matrix(
            (np.ones(table.src.size), (table.src, table.dst)), (table.n_nodes, table.n_nodes)
        )
        _, comp = connected_components(adj, directed=False)
        touched = np.zeros(table.n_nodes, dtype=bool)
        touched[table.src] = touched[table.dst] = True
        labels[touched] = comp[touched]
        notes = ("no edge above epsilon: modules are connected components",)
    elif res is not None and qual is not None and eng is not None:  # Leiden
        labels[nodes] = _leiden(table, nodes, res, qual, eng, seed)
    elif method == "exact":
        labels[nodes] = _exact(table, nodes, min_size, cost)
    else:
        labels[nodes] = _spectral(table, nodes, n_modules, seed)
    labels = _canonical(labels)
    return Partition(
        membership=dict(zip(table.node_ids, labels.tolist(), strict=True)),
        cost=float(cut_costs(table, labels, cost)),
        sizes=tuple(np.bincount(labels[labels >= 0]).tolist()),
        epsilon=table.epsilon,
        method=method,
        resolution=res,
        quality=qual,
        engine=eng,
        n_modules_requested=n_modules,
        min_size=min_size,
        cost_model=cost,
        seed=seed,
        notes=notes,
    )


def adjusted_rand_index(a: Any, b: Any) -> float:
    """Adjusted Rand index of two partitions over the nodes both assign (module ≥ 0).

    ``a`` and ``b`` are Partitions or mappings node id -> module id. igraph's
    ``compare_communities(method="adjusted_rand")`` does the computation; where ARI is 0/0
    (both partitions trivial) we return 1.0 if they are the same partition, else 0.0.

    Raises
    ------
    ModuleSearchError
        Fewer than two nodes assigned in both.
    """
    import igraph

    ma, mb = getattr(a, "membership", a), getattr(b, "membership", b)
    for name, m in (("a", ma), ("b", mb)):
        if not isinstance(m, Mapping) or not all(_is_int(k) for k in m.values()):
            raise ModuleSearchError(
                f"adjusted_rand_index: {name} must be a Partition or a dict node id -> int "
                f"module id, got {type(m).__name__}"
            )
    common = [n for n, m in ma.items() if m >= 0 and mb.get(n, -1) >= 0]
    if len(common) < 2:
        raise ModuleSearchError(f"ARI needs >= 2 nodes assigned in both; got {len(common)}")
    la, lb = [ma[n] for n in common], [mb[n] for n in common]
    ari = float(igraph.compare_communities(la, lb, method="adjusted_rand"))
    if np.isnan(ari):  # 0/0: both partitions are trivial (one module, or all singletons)
        same = len(set(la)) == len(set(lb)) == len(set(zip(la, lb, strict=True)))
        return 1.0 if same else 0.0
    return ari
