"""Is a partition real? Shuffle null model, resolution sweep and stability score.

The null model follows the shuffle test of Filan et al., "Clusterability in neural networks"
(2021): edge weights are permuted within each layer pair (constant nodes stay edge-free), the
same module search is run on each shuffled graph, and the observed partition is compared with
the shuffled ones by its cut saving (:func:`graphs.cut.cut_saving`: the share of the total
log-weighted cost it avoids cutting beyond what chance avoids). Shuffling within a pair keeps
each pair's multiset of weights, hence the total cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphs.cut import CostModel, cut_cost, cut_saving, edge_table
from graphs.errors import ModuleSearchError
from graphs.graph import InteractionGraph
from graphs.modules import Partition, adjusted_rand_index, find_modules


def shuffle_edges(graph: InteractionGraph, rng: np.random.Generator) -> InteractionGraph:
    """A copy of ``graph`` whose edge weights are permuted within each layer pair.

    Only the block between non-constant nodes is permuted, so constant nodes keep zero edges
    and each pair keeps exactly its multiset of weights.
    """
    edges = []
    for i, e in enumerate(graph.edges):
        r0 = 1 if graph.layers[i + 1].has_constant else 0
        c0 = 1 if graph.layers[i].has_constant else 0
        out = np.array(e)
        block = out[r0:, c0:]
        out[r0:, c0:] = rng.permutation(block.ravel()).reshape(block.shape)
        edges.append(out)
    meta = {**graph.metadata, "null_model": "edges shuffled within layer pairs"}
    return InteractionGraph(graph.layers, edges, meta)


@dataclass(frozen=True)
class NullModelResult:
    """Observed partition against the partitions found on edge-shuffled graphs.

    The statistic is the cut saving (:func:`graphs.cut.cut_saving`): expected minus observed
    cut fraction. ``z = (observed_saving − mean(null_saving)) / std(null_saving)``: positive =
    the observed graph is more modular than chance. ``p_value`` is the one-sided empirical
    ``(1 + #{null ≥ observed}) / (1 + n_shuffles)``. Raw cut costs (under the partition's cost
    model) and module counts are kept for inspection.
    """

    observed_saving: float
    null_saving: np.ndarray
    z: float
    p_value: float
    observed_cost: float
    null_costs: np.ndarray
    observed_n_modules: int
    null_n_modules: np.ndarray


def _saving(graph: InteractionGraph, partition: Partition) -> float:
    table = edge_table(graph, partition.epsilon)
    return cut_saving(table, table.labels(partition.membership))


def null_model(
    graph: InteractionGraph, partition: Partition, n_shuffles: int = 100, seed: int = 0
) -> NullModelResult:
    """z-score of the observed partition against edge-shuffled graphs (Filan et al. 2021).

    Each shuffled graph is partitioned with exactly the parameters recorded in ``partition``
    (:meth:`Partition.search_kwargs`), so observed and null partitions come from the same
    search. The raw cut cost is not compared directly: it rewards fewer modules (one module
    cuts nothing), and Leiden may find fewer modules on a shuffled graph. The cut saving
    subtracts the observed cut fraction from the one expected by chance for the same modules
    (per-edge costs, whatever the partition's cost model), which removes that bias.

    Parameters
    ----------
    graph : InteractionGraph
        The graph ``partition`` was computed on.
    partition : Partition
    n_shuffles : int
        Number of shuffled graphs (≥ 2).
    seed : int
        Seed of the shuffles (the search itself uses ``partition.seed``).

    Returns
    -------
    NullModelResult
        ``z = ±inf`` when all null values are equal and differ from the observed one; 0 when
        they all equal it.
    """
    if isinstance(n_shuffles, bool) or not isinstance(n_shuffles, int) or n_shuffles < 2:
        raise ModuleSearchError(f"n_shuffles must be an int >= 2, got {n_shuffles!r}")
    if not isinstance(partition, Partition):
        raise ModuleSearchError(
            f"partition must be a graphs.Partition (from find_modules), got "
            f"{type(partition).__name__}"
        )
    kwargs = partition.search_kwargs()
    observed_cost = cut_cost(graph, partition, partition.epsilon, partition.cost_model)
    observed = _saving(graph, partition)
    rng = np.random.default_rng(seed)
    shuffled = [shuffle_edges(graph, rng) for _ in range(n_shuffles)]
    null = [find_modules(h, **kwargs) for h in shuffled]
    saving = np.array([_saving(h, p) for h, p in zip(shuffled, null, strict=True)])
    spread = float(saving.std(ddof=1))
    gap = observed - float(saving.mean())
    if spread > 0:
        z = gap / spread
    else:
        z = 0.0 if gap == 0 else float(np.copysign(np.inf, gap))
    return NullModelResult(
        observed_saving=observed,
        null_saving=saving,
        z=z,
        p_value=float((1 + np.sum(saving >= observed)) / (1 + n_shuffles)),
        observed_cost=observed_cost,
        null_costs=np.array([p.cost for p in null]),
        observed_n_modules=partition.n_modules,
        null_n_modules=np.array([p.n_modules for p in null]),
    )


@dataclass(frozen=True)
class ResolutionSweep:
    """Leiden partitions over a range of resolutions: cut cost and module count per value."""

    resolutions: np.ndarray
    costs: np.ndarray
    n_modules: np.ndarray
    partitions: list[Partition]


def resolution_sweep(
    graph: InteractionGraph,
    resolutions: Iterable[float],
    epsilon: Any = None,
    *,
    quality: str = "modularity",
    engine: str = "leidenalg",
    cost: CostModel = "edge",
    seed: int = 0,
) -> ResolutionSweep:
    """Run Leiden at each resolution; report cut cost and number of modules per resolution.

    Small resolutions give few, large modules (low cut cost); large ones split the graph (for
    CPM, all singletons once the resolution exceeds every edge cost: cut cost = total cost).
    """
    try:
        res = np.asarray(list(resolutions), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModuleSearchError(
            f"resolutions must be a list of numbers, got {resolutions!r:.80}"
        ) from exc
    if res.ndim != 1 or res.size == 0:
        raise ModuleSearchError(
            f"resolutions must be a non-empty list of numbers, got {resolutions!r:.80}"
        )
    parts = [
        find_modules(
            graph,
            epsilon,
            "leiden",
            resolution=float(r),
            quality=quality,
            engine=engine,
            cost=cost,
            seed=seed,
        )
        for r in res
    ]
    return ResolutionSweep(
        resolutions=res,
        costs=np.array([p.cost for p in parts]),
        n_modules=np.array([p.n_modules for p in parts]),
        partitions=parts,
    )


def stability(
    graph: InteractionGraph,
    epsilon: Any = None,
    *,
    resolution: float = 1.0,
    quality: str = "modularity",
    engine: str = "leidenalg",
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    relative_step: float = 0.1,
) -> float:
    """Mean pairwise ARI of Leiden partitions across seeds and nearby resolutions.

    Partitions are computed for every seed at ``resolution · (1 − step, 1, 1 + step)``; the score
    is the mean adjusted Rand index (:func:`graphs.adjusted_rand_index`) over all pairs
    (1 = identical every time).
    """
    if (
        isinstance(relative_step, bool)
        or not isinstance(relative_step, int | float)
        or not 0 <= relative_step < 1
    ):
        raise ModuleSearchError(f"relative_step must be in [0, 1), got {relative_step!r}")
    if not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ModuleSearchError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    steps = sorted({1 - relative_step, 1.0, 1 + relative_step})
    parts = [
        find_modules(
            graph,
            epsilon,
            "leiden",
            resolution=resolution * s,
            quality=quality,
            engine=engine,
            seed=sd,
        )
        for s in steps
        for sd in seeds
    ]
    if len(parts) < 2:  # one seed and relative_step 0: nothing to compare
        return 1.0
    return float(np.mean([adjusted_rand_index(a, b) for a, b in itertools.combinations(parts, 2)]))
