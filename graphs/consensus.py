"""Stability of modules over Leiden seeds and resolutions; co-membership and consensus.

Leiden is a randomised heuristic: two seeds can return different partitions of the same
graph, and a resolution a little above or below the chosen one can split or merge modules.
:func:`module_stability` runs :func:`graphs.find_modules` for every ``(resolution, seed)``
and reports

* ``ari_seeds``: mean pairwise ARI between seeds at the same resolution (averaged over
  resolutions);
* ``ari_resolutions``: mean ARI between neighbouring resolutions at the same seed;
* the co-membership matrix ``P[u, v]`` = share of the partitions (among those assigning both
  nodes) that put ``u`` and ``v`` in the same module;
* the consensus partition (:func:`consensus_labels`): the connected components of the graph
  linking ``u, v`` whenever ``P[u, v] > 1/2`` — the "consensus clustering" of Lancichinetti &
  Fortunato (Sci. Rep. 2, 336, 2012) with threshold 1/2 and one round, which is
  deterministic, and equal to every input partition when they all agree.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from graphs.cut import CostModel, cut_costs, edge_table
from graphs.errors import ModuleSearchError
from graphs.graph import InteractionGraph
from graphs.modules import Partition, _canonical, adjusted_rand_index, find_modules

CONSENSUS_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModuleStability:
    """Result of :func:`module_stability` (see the module docstring)."""

    resolutions: tuple[float, ...]
    seeds: tuple[int, ...]
    partitions: dict[tuple[float, int], Partition]
    ari_seeds: float
    ari_resolutions: float | None
    node_ids: tuple[str, ...]
    co_membership: np.ndarray
    consensus: Partition


def co_membership_of_labels(labels: np.ndarray) -> np.ndarray:
    """``(n, n)`` co-membership of label rows ``(p, n)`` (−1 = unassigned; NaN: never both)."""
    labels = np.asarray(labels)
    assigned = labels >= 0
    both = np.einsum("pi,pj->ij", assigned, assigned, dtype=np.float64)
    same = np.zeros_like(both)
    for row, ok in zip(labels, assigned, strict=True):
        same += (row[:, None] == row[None, :]) & ok[:, None] & ok[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(both > 0, same / np.maximum(both, 1), np.nan)


def _sequence(values: Any, name: str) -> list[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ModuleSearchError(f"{name} must be a list, got {values!r}")
    return list(values)


def co_membership(partitions: Sequence[Partition], node_ids: Sequence[str]) -> np.ndarray:
    """``(n, n)`` share of partitions putting two nodes together (NaN: never both assigned)."""
    if not partitions:
        raise ModuleSearchError("co_membership needs at least one partition")
    return co_membership_of_labels(
        np.array([[p.membership.get(n, -1) for n in node_ids] for p in partitions])
    )


def consensus_labels(P: np.ndarray, threshold: float = CONSENSUS_THRESHOLD) -> np.ndarray:
    """Modules = connected components of ``P > threshold``; −1 where a node is never assigned.

    Raises ``ModuleSearchError`` for a threshold outside [0, 1).
    """
    if not 0 <= threshold < 1:
        raise ModuleSearchError(f"threshold must be in [0, 1), got {threshold!r}")
    ok = ~np.isnan(np.diag(P))
    link = np.nan_to_num(P, nan=0.0) > threshold
    link &= ok[:, None] & ok[None, :]
    _, comp = connected_components(sp.csr_matrix(link), directed=False)
    labels = np.where(ok, comp, -1)
    return _canonical(labels)


def consensus_partition(
    graph: InteractionGraph,
    partitions: Sequence[Partition],
    *,
    threshold: float = CONSENSUS_THRESHOLD,
    cost: CostModel = "edge",
    settings: dict[str, Any] | None = None,
) -> Partition:
    """The consensus :class:`Partition` of ``partitions`` (all found on ``graph``).

    ``settings`` (the arguments that produced the inputs, e.g. the seeds and resolutions of
    :func:`module_stability`) are recorded in ``Partition.options``; ``method`` is
    ``"module_stability"``, reproduced by calling it again with those settings.
    """
    first = partitions[0]
    table = edge_table(graph, first.epsilon)
    P = co_membership(partitions, table.node_ids)
    labels = consensus_labels(P, threshold)
    return Partition(
        membership=dict(zip(table.node_ids, labels.tolist(), strict=True)),
        cost=float(cut_costs(table, labels, cost)),
        sizes=tuple(np.bincount(labels[labels >= 0]).tolist()),
        epsilon=first.epsilon,
        method="module_stability",
        resolution=first.resolution,
        quality=first.quality,
        engine=first.engine,
        n_modules_requested=None,
        min_size=1,
        cost_model=cost,
        seed=first.seed,
        options=tuple(sorted({"threshold": threshold, **(settings or {})}.items())),
    )


def _mean_ari(pairs: list[tuple[Partition, Partition]]) -> float | None:
    if not pairs:
        return None
    return float(np.mean([adjusted_rand_index(a, b) for a, b in pairs]))


def module_stability(
    graph: InteractionGraph,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    resolutions: Sequence[float] = (0.9, 1.0, 1.1),
    epsilon: Any = None,
    *,
    quality: str = "modularity",
    engine: str = "leidenalg",
    threshold: float = CONSENSUS_THRESHOLD,
) -> ModuleStability:
    """Leiden partitions for every (resolution, seed); their agreement and consensus.

    Parameters
    ----------
    graph : InteractionGraph
    seeds : Leiden seeds (at least one).
    resolutions : resolutions, sorted ascending for "neighbouring" comparisons.
    epsilon : as in :func:`graphs.find_modules` (None = its default).
    threshold : co-membership above which two nodes are linked in the consensus.

    Returns
    -------
    ModuleStability; ``ari_resolutions`` is None for a single resolution.
    """
    seeds_l, res_l = _sequence(seeds, "seeds"), _sequence(resolutions, "resolutions")
    for s in seeds_l:
        if isinstance(s, bool | np.bool_) or not isinstance(s, int | np.integer) or s < 0:
            raise ModuleSearchError(f"seeds must be ints >= 0, got {s!r} in {seeds!r}")
    for r in res_l:
        if (
            isinstance(r, bool | np.bool_)
            or not isinstance(r, int | float | np.integer | np.floating)
            or not 0 <= r < np.inf
        ):
            raise ModuleSearchError(
                f"resolutions must be finite numbers >= 0, got {r!r} in {resolutions!r}"
            )
    seeds_t = tuple(int(s) for s in seeds_l)
    res_t = tuple(sorted(float(r) for r in res_l))
    if not seeds_t or not res_t:
        raise ModuleSearchError("module_stability needs at least one seed and one resolution")
    if len(set(seeds_t)) != len(seeds_t) or len(set(res_t)) != len(res_t):
        raise ModuleSearchError(f"seeds {seeds_t} and resolutions {res_t} must be distinct")
    parts = {
        (r, s): find_modules(graph, epsilon, "leiden", resolution=r, quality=quality,
                             engine=engine, seed=s)
        for r in res_t for s in seeds_t
    }  # fmt: skip
    by_seed = [
        (parts[r, a], parts[r, b]) for r in res_t for a, b in itertools.combinations(seeds_t, 2)
    ]
    by_res = [(parts[a, s], parts[b, s]) for a, b in itertools.pairwise(res_t) for s in seeds_t]
    all_parts = list(parts.values())
    table = edge_table(graph, all_parts[0].epsilon)
    settings = dict(seeds=list(seeds_t), resolutions=list(res_t), quality=quality, engine=engine)
    seed_ari = _mean_ari(by_seed)
    return ModuleStability(
        resolutions=res_t,
        seeds=seeds_t,
        partitions=parts,
        ari_seeds=1.0 if seed_ari is None else seed_ari,
        ari_resolutions=_mean_ari(by_res),
        node_ids=tuple(table.node_ids),
        co_membership=co_membership(all_parts, table.node_ids),
        consensus=consensus_partition(graph, all_parts, threshold=threshold, settings=settings),
    )
