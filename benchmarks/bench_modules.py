"""Benchmark: Leiden on a 1 000-node, 100 000-edge layered interaction graph (issue 6, Speed).

Run:  python benchmarks/bench_modules.py [--repeats 5]

Prints the wall time of ``find_modules(method="leiden")`` end to end (edge table, igraph
construction, Leiden) and of the ``leidenalg.find_partition`` call alone, plus the ARI of the
result against the planted modules (a check that the timed run did real work).
"""

from __future__ import annotations

import argparse
import os
import time

import igraph
import leidenalg
import numpy as np

from graphs import InteractionGraph, NodeLayer, adjusted_rand_index, find_modules
from graphs.cut import edge_table


def layered_graph(
    n_layers: int = 4, width: int = 250, n_edges: int = 100_000, k: int = 4, seed: int = 0
) -> tuple[InteractionGraph, dict[str, int], float]:
    """``n_layers × width`` nodes, exactly ``n_edges`` positive edges, ``k`` planted modules.

    Within-module edges are lognormal around 1; between-module edges lie just above
    ε = 1e-3 (so every edge enters Leiden, with a small log-weight). Returns (graph, truth, ε).
    """
    rng = np.random.default_rng(seed)
    eps = 1e-3
    labels = [rng.integers(0, k, width) for _ in range(n_layers)]
    layers = [
        NodeLayer(f"layer{i}", width, np.sort(rng.uniform(0.1, 1.0, width))[::-1],
                  np.zeros(width, bool), np.ones(width))
        for i in range(n_layers)
    ]  # fmt: skip
    n_pairs = n_layers - 1
    slots = rng.choice(n_pairs * width * width, size=n_edges, replace=False)
    pair, rest = np.divmod(slots, width * width)
    out, inp = np.divmod(rest, width)
    edges = [np.zeros((width, width)) for _ in range(n_pairs)]
    for p in range(n_pairs):
        sel = pair == p
        same = labels[p + 1][out[sel]] == labels[p][inp[sel]]
        within = rng.lognormal(0.0, 0.5, sel.sum())
        between = 1.1 * eps * np.exp(np.abs(rng.normal(0.0, 0.5, sel.sum())))
        edges[p][out[sel], inp[sel]] = np.where(same, within, between)
    truth = {f"layer{i}:{j}": int(m) for i, lab in enumerate(labels) for j, m in enumerate(lab)}
    return InteractionGraph(layers, edges, {"benchmark": "bench_modules"}), truth, eps


def _time(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``fn(seed)`` for seeds 0..repeats-1 (after one warm-up call)."""
    fn(0)
    wall, cpu = [], []
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(r)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    graph, truth, eps = layered_graph()
    table = edge_table(graph, eps)
    print(
        f"graph: {graph.n_nodes} nodes, {table.src.size} edges "
        f"({int((table.cost > 0).sum())} above epsilon); load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs (wall times grow with the load, CPU times much less)"
    )
    g = igraph.Graph(n=table.n_nodes, edges=np.column_stack((table.src, table.dst)).tolist())
    weights = table.cost.tolist()
    runs = {
        "find_modules(engine='leidenalg')": lambda s: find_modules(graph, eps, "leiden", seed=s),
        "find_modules(engine='igraph')": lambda s: find_modules(
            graph, eps, "leiden", engine="igraph", seed=s
        ),
        "find_modules() default 'auto'": lambda s: find_modules(
            graph, eps, engine="igraph", seed=s
        ),
        "leidenalg.find_partition alone": lambda s: leidenalg.find_partition(
            g, leidenalg.RBConfigurationVertexPartition, weights=weights, n_iterations=-1, seed=s
        ),
        "igraph community_leiden alone": lambda s: g.community_leiden(
            objective_function="modularity", weights=weights, n_iterations=-1
        ),
    }
    for name, fn in runs.items():
        wall, cpu = _time(fn, args.repeats)
        print(
            f"{name:34s} wall median {np.median(wall):.3f} s (min {min(wall):.3f}), "
            f"CPU median {np.median(cpu):.3f} s over {args.repeats} runs"
        )
    for engine in ("leidenalg", "igraph"):
        part = find_modules(graph, eps, "leiden", engine=engine, seed=0)
        ari = adjusted_rand_index(part, truth)
        print(f"engine={engine}: {part.n_modules} modules, ARI vs planted {ari:.3f}")


if __name__ == "__main__":
    main()
