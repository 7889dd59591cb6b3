"""Modules by log-weighted cut (issue 6): objective, exact/Leiden/spectral, null model, errors."""

from __future__ import annotations

import itertools
import math
import random
import warnings
from dataclasses import replace
from typing import cast

import igraph
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs import (
    EpsilonWarning,
    InteractionGraph,
    InvalidGraphError,
    ModuleSearchError,
    NodeLayer,
    Partition,
    adjusted_rand_index,
    cut_cost,
    default_epsilon,
    find_modules,
    log_weights,
    null_model,
    read_graphml,
    resolution_sweep,
    shuffle_edges,
    stability,
    write_graphml,
)
from graphs.cut import cut_saving, edge_table


# ------------------------------------------------------------------------------ synthetic graphs
def layer(name: str, size: int, constant: bool, rng: np.random.Generator) -> NodeLayer:
    eig = np.sort(rng.uniform(0.1, 1.0, size))[::-1]
    is_const = np.zeros(size, dtype=bool)
    if constant:
        eig[0], is_const[0] = np.nan, True
    return NodeLayer(name, size, eig, is_const, rng.uniform(0.0, 1.0, size))


def planted(
    sizes: list[int], k: int, seed: int, between: float = 1e-2, sigma: float = 1.0
) -> tuple[InteractionGraph, dict[str, int]]:
    """Layered graph whose nodes are split evenly into k planted modules.

    Within-module edges ~ lognormal(0, sigma), between-module edges ~ ``between`` times that.
    Every layer but the last has a constant node 0 (no edges).
    """
    rng = np.random.default_rng(seed)
    layers, labels, truth = [], [], {}
    for li, n in enumerate(sizes):
        const = li < len(sizes) - 1
        lab = rng.permutation(np.arange(n - const) % k)
        lab = np.r_[-1, lab] if const else lab
        layers.append(layer(f"l{li}", n, const, rng))
        labels.append(lab)
        truth.update({f"l{li}:{i}": int(m) for i, m in enumerate(lab) if m >= 0})
    edges = []
    for a, b in itertools.pairwise(labels):
        same = b[:, None] == a[None, :]
        e = np.exp(rng.normal(0.0, sigma, same.shape)) * np.where(same, 1.0, between)
        e[(b[:, None] < 0) | (a[None, :] < 0)] = 0.0
        edges.append(e)
    return InteractionGraph(layers, edges, {"planted": k}), truth


def iid_graph(sizes: list[int], seed: int) -> InteractionGraph:
    """Same layout as `planted`, but i.i.d. lognormal weights: no modules."""
    g, _ = planted(sizes, 1, seed)
    rng = np.random.default_rng(seed + 1)
    edges = [np.exp(rng.normal(0.0, 1.0, e.shape)) * (e > 0) for e in g.edges]
    return InteractionGraph(g.layers, edges, {})


def same_partition(a: dict[str, int], b: dict[str, int]) -> bool:
    """Equal as set partitions (module labels may differ), with identical unassigned sets."""

    def blocks(m: dict[str, int]) -> set[frozenset[str]]:
        groups: dict[int, set[str]] = {}
        for node, mod in m.items():
            groups.setdefault(mod, set()).add(node)
        return {frozenset(v) for key, v in groups.items() if key >= 0} | {
            frozenset(("-1", *groups.get(-1, ())))
        }

    return blocks(a) == blocks(b)


# ------------------------------------------------------------------------------ brute force
def brute_edge_cost(graph: InteractionGraph, membership: dict[str, int], eps: float) -> float:
    total = 0.0
    for u, v, w in graph.to_networkx().edges(data="weight"):
        mu, mv = membership.get(u, -1), membership.get(v, -1)
        if mu >= 0 and mv >= 0 and mu != mv:
            total += 0.5 * max(0.0, math.log(w / eps))
    return total


def brute_mediating_cost(graph: InteractionGraph, membership: dict[str, int], eps: float) -> float:
    G = graph.to_networkx()
    total = 0.0
    for v in G.nodes:
        mv = membership.get(v, -1)
        if mv < 0:
            continue
        into: dict[int, float] = {}
        for _, u, w in G.out_edges(v, data="weight"):
            mu = membership.get(u, -1)
            if mu >= 0 and mu != mv:
                into[mu] = into.get(mu, 0.0) + math.sqrt(w)
        total += sum(max(0.0, math.log(s / math.sqrt(eps))) for s in into.values())
    return total


# ------------------------------------------------------------------------------ the objective
def test_log_weights_closed_form() -> None:
    eps = 0.01
    rng = np.random.default_rng(0)
    layers = [layer("a", 4, True, rng), layer("b", 3, False, rng)]
    costs = np.array([[0.0, 1.0, 2.5], [0.3, 0.0, 4.0], [1.5, 0.2, 0.0]])  # target costs
    e = np.zeros((3, 4))
    e[:, 1:] = eps * np.exp(2 * costs)  # E = ε e^{2c}  =>  ½ log(E/ε) = c
    e[2, 3] = 0.5 * eps  # below ε: costs nothing
    g = InteractionGraph(layers, [e], {})
    (c,) = log_weights(g, eps)
    want = np.zeros((3, 4))
    want[:, 1:] = costs
    want[2, 3] = 0.0
    np.testing.assert_allclose(c, want, rtol=1e-13, atol=1e-15)
    assert (c[:, 0] == 0).all()  # the constant node has no edges, hence no cost
    (c2,) = log_weights(g, [eps * math.e**2])  # per-pair ε: every cost drops by 1 (floor 0)
    np.testing.assert_allclose(c2, np.maximum(want - 1.0, 0.0) * (e > 0), atol=1e-13)


def test_seed_eq35_and_footnote10_mediating_nodes() -> None:
    """Two weak mediating nodes cost as much as one strong one with the summed log (eq. 35)."""
    rng = np.random.default_rng(0)
    eps, w_a = 1e-4, 0.05  # w_A / ε^½ = 5
    layers = [layer("a", 3, False, rng), layer("b", 2, False, rng)]
    membership = {"a:0": 0, "a:1": 0, "a:2": 1, "b:0": 0, "b:1": 1}
    # network A: a:0 and a:1 (module 0) each feed b:1 (module 1) with strength w_A
    net_a = np.array([[1.0, 1.0, 0.0], [w_a**2, w_a**2, 1.0]])
    # network B: only a:0 feeds b:1, with log(w_B/ε^½) = 2 log(w_A/ε^½)
    w_b = math.sqrt(eps) * (w_a / math.sqrt(eps)) ** 2
    net_b = np.array([[1.0, 1.0, 0.0], [w_b**2, 0.0, 1.0]])
    cost_a = cut_cost(InteractionGraph(layers, [net_a]), membership, eps, "mediating")
    cost_b = cut_cost(InteractionGraph(layers, [net_b]), membership, eps, "mediating")
    np.testing.assert_allclose(cost_a, 2 * math.log(5.0), rtol=1e-13)
    np.testing.assert_allclose(cost_a, cost_b, rtol=1e-13)
    # one cut edge per mediating node: per-edge and per-mediating-node sums agree
    np.testing.assert_allclose(cut_cost(InteractionGraph(layers, [net_a]), membership, eps), cost_a)
    # footnote 10: a:2 (module 1) feeds b:0 and ... w = √E1 + √E2 summed before the log
    layers3 = [layer("a", 2, False, rng), layer("b", 3, False, rng)]
    e = np.array([[0.0, 0.04], [0.0, 0.09], [1.0, 0.0]])
    mem = {"a:0": 1, "a:1": 0, "b:0": 1, "b:1": 1, "b:2": 1}
    g3 = InteractionGraph(layers3, [e])
    want = math.log((0.2 + 0.3) / math.sqrt(eps))
    np.testing.assert_allclose(cut_cost(g3, mem, eps, "mediating"), want, rtol=1e-13)
    edge_model = 0.5 * math.log(0.04 / eps) + 0.5 * math.log(0.09 / eps)
    np.testing.assert_allclose(cut_cost(g3, mem, eps, "edge"), edge_model, rtol=1e-13)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), eps=st.floats(1e-3, 2.0))
def test_cut_cost_matches_brute_force(seed: int, k: int, eps: float) -> None:
    g, _ = planted([5, 6, 4], 2, seed, between=0.1)
    rng = np.random.default_rng(seed)
    ids = [
        nid for nid in g.node_ids() if not g.layers[g.locate(nid)[0]].is_constant[g.locate(nid)[1]]
    ]
    membership = {nid: int(m) for nid, m in zip(ids, rng.integers(-1, k, len(ids)), strict=True)}
    np.testing.assert_allclose(
        cut_cost(g, membership, eps), brute_edge_cost(g, membership, eps), rtol=1e-12
    )
    np.testing.assert_allclose(
        cut_cost(g, membership, eps, "mediating"),
        brute_mediating_cost(g, membership, eps),
        rtol=1e-12,
    )
    assert cut_cost(g, dict.fromkeys(ids, 0), eps) == 0.0  # one module: nothing is cut


# ------------------------------------------------------------------------------ exact search
@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    min_size=st.integers(1, 4),
    cost=st.sampled_from(["edge", "mediating"]),
)
def test_exact_search_is_the_brute_force_minimum(seed: int, min_size: int, cost: str) -> None:
    g, _ = planted([4, 4, 4], 2, seed, between=0.3)  # 11 non-constant nodes
    eps = cast(float, default_epsilon(g))
    part = find_modules(g, method="exact", min_size=min_size, cost=cost)  # type: ignore[arg-type]
    nodes = [n for n, m in part.membership.items() if m >= 0]
    reference = brute_edge_cost if cost == "edge" else brute_mediating_cost
    best = math.inf
    for sides in itertools.product((0, 1), repeat=len(nodes) - 1):
        labels = (0, *sides)
        if min(labels.count(0), labels.count(1)) < min_size:
            continue
        best = min(best, reference(g, dict(zip(nodes, labels, strict=True)), eps))
    np.testing.assert_allclose(part.cost, best, rtol=1e-12)
    assert part.n_modules == 2 and min(part.sizes) >= min_size


# ------------------------------------------------------------------------------ test 1: recovery
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leiden_recovers_planted_modules(seed: int) -> None:
    g, truth = planted([31, 31, 31, 30], 3, seed)
    part = find_modules(g, seed=0)
    assert adjusted_rand_index(part, truth) >= 0.95
    fast = find_modules(g, engine="igraph", seed=0)  # igraph's C Leiden: the same optimum
    assert same_partition(fast.membership, part.membership)
    spectral = find_modules(g, method="spectral", n_modules=3, seed=0)
    assert adjusted_rand_index(spectral, truth) >= 0.95
    assert find_modules(g, method="spectral").n_modules == 3  # the eigengap finds k


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_exact_agrees_with_leiden_on_small_graphs(seed: int) -> None:
    g, truth = planted([5, 5, 5, 4], 2, seed, between=2e-3, sigma=0.5)  # 16 non-constant nodes
    exact, leiden = find_modules(g, method="exact"), find_modules(g, method="leiden")
    assert leiden.n_modules == 2
    assert exact.membership == leiden.membership
    np.testing.assert_allclose(exact.cost, leiden.cost, rtol=1e-12)
    assert same_partition(exact.membership, truth)


# ------------------------------------------------------------------------------ test 3: null
@pytest.mark.parametrize("between", [1e-2, 0.1])
def test_null_model_z_scores(between: float) -> None:
    # between = 0.1: every edge lies above ε and Leiden finds fewer modules on some shuffles,
    # where a raw cut-cost comparison would call the planted graph *less* modular than chance
    g, _ = planted([21, 21, 21, 20], 3, seed=5, between=between)
    result = null_model(g, find_modules(g), n_shuffles=40, seed=0)
    assert result.z > 3, result
    assert result.p_value == 1 / 41  # no shuffle saves as much as the planted graph
    gi = iid_graph([21, 21, 21, 20], seed=5)
    result = null_model(gi, find_modules(gi), n_shuffles=40, seed=0)
    assert abs(result.z) < 2, result
    assert result.null_costs.shape == (40,) and result.null_n_modules.shape == (40,)


def test_cut_saving_is_modularity_of_the_cost_graph() -> None:
    g, truth = planted([9, 9, 8], 3, seed=3, between=0.2)
    table = edge_table(g)
    keep = table.cost > 0
    ig = igraph.Graph(
        n=table.n_nodes, edges=list(zip(table.src[keep], table.dst[keep], strict=True))
    )
    rng = np.random.default_rng(0)
    for labels in [
        table.labels(truth),
        rng.integers(0, 4, table.n_nodes),
        np.arange(table.n_nodes),
    ]:
        want = ig.modularity(
            labels.tolist(), weights=table.cost[keep].tolist()
        )  # igraph, independent
        np.testing.assert_allclose(cut_saving(table, labels), want, rtol=1e-12, atol=1e-15)
    assert cut_saving(table, np.zeros(table.n_nodes, dtype=np.int64)) == pytest.approx(
        0.0, abs=1e-15
    )


def test_shuffle_keeps_each_pair_multiset() -> None:
    g, _ = planted([6, 5, 4], 2, seed=1)
    s = shuffle_edges(g, np.random.default_rng(0))
    for a, b, lo, hi in zip(g.edges, s.edges, g.layers[:-1], g.layers[1:], strict=True):
        np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
        assert not np.array_equal(a, b)
        assert not b[:, lo.is_constant].any() and not b[hi.is_constant, :].any()


# ------------------------------------------------------------------------------ test 4: invariance
@settings(max_examples=8, deadline=None)
@given(perm_seed=st.integers(0, 10_000), method=st.sampled_from(["leiden", "spectral"]))
def test_permuting_nodes_permutes_the_partition(perm_seed: int, method: str) -> None:
    g, _ = planted([16, 16, 16, 15], 3, seed=3)
    rng = np.random.default_rng(perm_seed)
    perms = [
        np.r_[0, 1 + rng.permutation(n.size - 1)] if n.has_constant else rng.permutation(n.size)
        for n in g.layers
    ]
    layers = [
        NodeLayer(n.name, n.size, n.eigenvalues[p], n.is_constant[p], n.activation_variance[p])
        for n, p in zip(g.layers, perms, strict=True)
    ]
    edges = [e[np.ix_(perms[i + 1], perms[i])] for i, e in enumerate(g.edges)]
    h = InteractionGraph(layers, edges, {})
    kwargs = {"method": method, "n_modules": 3} if method == "spectral" else {}
    a, b = find_modules(g, **kwargs), find_modules(h, **kwargs)  # type: ignore[arg-type]
    # node i of the permuted layer is node perms[i] of the original one
    back = {
        f"{n.name}:{int(p[i])}": b.membership[f"{n.name}:{i}"]
        for n, p in zip(layers, perms, strict=True)
        for i in range(n.size)
        if f"{n.name}:{i}" in b.membership
    }
    assert same_partition(a.membership, back)
    assert a.sizes == b.sizes
    np.testing.assert_allclose(a.cost, b.cost, rtol=1e-12)


def test_fixed_seed_is_deterministic_and_parameters_reproduce() -> None:
    g, _ = planted([21, 21, 20], 3, seed=7, between=0.05)
    for method, kw in (
        ("leiden", {}),
        ("leiden", {"engine": "igraph"}),
        ("spectral", {"n_modules": 3}),
    ):
        a = find_modules(g, method=method, seed=11, **kw)  # type: ignore[arg-type]
        b = find_modules(g, method=method, seed=11, **kw)  # type: ignore[arg-type]
        assert a == b
        assert find_modules(g, **a.search_kwargs()) == a
    # method="auto" (the default) picks among resolution × (1, 1/2, 1/4) and reports Leiden
    auto = find_modules(g, 0.05, resolution=0.7, quality="cpm", seed=3)
    assert auto.method == "leiden" and auto.resolution in (0.7, 0.35, 0.175)
    assert dict(auto.options)["selected_by"] == "null-model z"
    assert find_modules(g, **auto.search_kwargs()) == replace(auto, options=())
    part = find_modules(g, 0.05, "leiden", resolution=0.7, quality="cpm", seed=3)
    assert (part.epsilon, part.method, part.resolution, part.quality, part.seed) == (
        (0.05, 0.05),
        "leiden",
        0.7,
        "cpm",
        3,
    )
    assert (part.n_modules_requested, part.min_size, part.cost_model) == (None, 1, "edge")
    assert part.engine == "leidenalg"
    exact_small, _ = planted([4, 4, 3], 2, seed=0)
    exact = find_modules(exact_small, method="exact")
    assert (exact.resolution, exact.quality, exact.engine) == (None, None, None)
    # engine="igraph" seeds igraph's global RNG and must hand it back to Python's `random`
    find_modules(exact_small, engine="igraph", seed=5)
    draws = []
    for _ in range(2):
        random.seed(1)
        draws.append(igraph.Graph.Erdos_Renyi(30, 0.2).get_edgelist())
    assert draws[0] == draws[1]


# ------------------------------------------------------------------------------ partition contents
def test_partition_membership_unassigned_and_sizes() -> None:
    g, truth = planted([9, 9, 8], 2, seed=2, between=1e-6)
    e0 = np.array(g.edges[0])
    e0[:, 4] = np.where(e0[:, 4] > 0, 1e-9, 0.0)  # node l0:4 keeps only edges far below ε
    g = InteractionGraph(g.layers, [e0, g.edges[1]], {})
    part = find_modules(g)
    assert "l0:0" not in part.membership and "l1:0" not in part.membership  # constant nodes
    assert part.membership["l0:4"] == -1 and part.unassigned() == ["l0:4"]
    assert sum(part.sizes) == len(part.membership) - 1 == sum(len(m) for m in part.modules())
    assert part.sizes == tuple(sorted(part.sizes, reverse=True))
    assert same_partition(part.membership, {**truth, "l0:4": -1})
    np.testing.assert_allclose(
        part.cost, brute_edge_cost(g, part.membership, cast(float, default_epsilon(g))), rtol=1e-12
    )


def test_modules_are_exported_to_graphml(tmp_path) -> None:
    g, _ = planted([7, 7, 6], 2, seed=4)
    part = find_modules(g)
    write_graphml(g.with_modules(part), tmp_path / "m.graphml")
    G = nx.read_graphml(tmp_path / "m.graphml")
    assert {n: G.nodes[n]["module"] for n in part.membership} == part.membership
    assert G.nodes["l0:0"]["module"] == -1  # constant
    assert read_graphml(tmp_path / "m.graphml").module_membership() == part.membership


def test_adjusted_rand_index_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 3, 30), rng.integers(0, 4, 30)
        table = np.zeros((3, 4))
        np.add.at(table, (a, b), 1)
        pairs = lambda x: (x * (x - 1) / 2).sum()  # noqa: E731
        index, rows, cols, total = (
            pairs(table),
            pairs(table.sum(1)),
            pairs(table.sum(0)),
            30 * 29 / 2,
        )
        expected = (index - rows * cols / total) / (0.5 * (rows + cols) - rows * cols / total)
        ma = {str(i): int(x) for i, x in enumerate(a)}
        mb = {str(i): int(x) for i, x in enumerate(b)}
        np.testing.assert_allclose(adjusted_rand_index(ma, mb), expected, rtol=1e-12)
    assert adjusted_rand_index({"x": 0, "y": 0}, {"x": 5, "y": 5}) == 1.0  # both trivial


# ------------------------------------------------------------------------------ sweep, stability
def test_resolution_sweep_limits() -> None:
    g, _ = planted([11, 11, 10], 2, seed=6)
    sweep = resolution_sweep(g, [1e-6, 0.3, 1e6], quality="cpm")
    total = float(sum(c.sum() for c in log_weights(g)))
    assert sweep.n_modules[0] == 1 and sweep.costs[0] == 0.0  # tiny resolution: one module
    assert sweep.n_modules[-1] == 30  # huge resolution: singletons, every edge is cut
    np.testing.assert_allclose(sweep.costs[-1], total, rtol=1e-12)
    assert sweep.n_modules[1] == 2 and len(sweep.partitions) == 3


def test_stability_is_one_for_clear_modules_only() -> None:
    g, _ = planted([16, 16, 15], 3, seed=8)
    assert stability(g) == 1.0
    assert stability(iid_graph([16, 16, 15], seed=8)) < 0.95


# ------------------------------------------------------------------------------ bad input
def test_bad_epsilon_names_the_layer_pair() -> None:
    g, _ = planted([4, 4, 3], 2, seed=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ModuleSearchError, match=r"'l0' -> 'l1'.*positive"):
            find_modules(g, bad)
    with pytest.raises(ModuleSearchError, match="'l1' -> 'l2'"):
        log_weights(g, [0.1, -0.1])
    with pytest.raises(ModuleSearchError, match=r"3 entries.*2 layer pairs"):
        find_modules(g, [0.1, 0.1, 0.1])


def test_all_edges_below_epsilon_warns_and_returns_components() -> None:
    g, _ = planted([5, 5, 4], 2, seed=0, between=0.0)  # two disconnected sub-networks
    e0 = np.array(g.edges[0])
    isolated = int(np.flatnonzero(e0.any(axis=0))[0])
    e0[:, isolated] = 0.0  # one node without any edge
    g = InteractionGraph(g.layers, [e0, g.edges[1]], {})
    with pytest.warns(EpsilonWarning, match="no edge exceeds epsilon"):
        part = find_modules(g, 1e6)
    assert part.n_modules == 2 and part.cost == 0.0
    assert part.unassigned() == [f"l0:{isolated}"]
    assert part.notes


def test_invalid_weights_and_parameters() -> None:
    g, _ = planted([4, 4, 3], 2, seed=0)
    for bad in (-1.0, float("nan")):
        e = np.array(g.edges[1])
        e[1, 1] = bad
        with pytest.raises(InvalidGraphError, match="'l1' -> 'l2'"):
            InteractionGraph(g.layers, [g.edges[0], e], {})
    with pytest.raises(ModuleSearchError, match="resolution"):
        find_modules(g, method="leiden", n_modules=2)
    with pytest.raises(ModuleSearchError, match="Leiden parameters"):
        find_modules(g, method="exact", resolution=1.0)
    with pytest.raises(ModuleSearchError, match="method must be"):
        find_modules(g, method="louvain")  # type: ignore[arg-type]
    with pytest.raises(ModuleSearchError, match="n_modules=99 exceeds the 9 assigned nodes"):
        find_modules(g, method="spectral", n_modules=99)
    singletons = find_modules(g, method="spectral", n_modules=9)
    assert singletons.sizes == (1,) * 9  # every node alone: every costed edge is cut
    np.testing.assert_allclose(singletons.cost, sum(c.sum() for c in log_weights(g)), rtol=1e-12)
    with pytest.raises(ModuleSearchError, match="k = 2"):
        find_modules(g, method="exact", n_modules=3)
    with pytest.raises(ModuleSearchError, match="assigned nodes"):
        find_modules(g, method="exact", min_size=6)
    big, _ = planted([7, 7, 6], 2, seed=0)  # 18 non-constant nodes
    with pytest.raises(ModuleSearchError, match=r"at most 16.*has 18.*method='leiden'"):
        find_modules(big, method="exact")


@pytest.mark.parametrize("method", ["leiden", "spectral", "exact"])
def test_disconnected_graphs_keep_components_apart(method: str) -> None:
    g, truth = planted([5, 5, 5, 4], 2, seed=9, between=0.0)  # two disconnected sub-networks
    kwargs = {"n_modules": 2} if method == "spectral" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a valid disconnected graph
        part = find_modules(g, method=method, **kwargs)  # type: ignore[arg-type]
    assert isinstance(part, Partition) and part.cost == 0.0
    assert same_partition(part.membership, truth)
