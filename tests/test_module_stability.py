"""graphs.module_stability and the default find_modules on planted modules (issue 20, test 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_links_hessian import LAYERS as BLOCK_LAYERS
from test_links_hessian import Split
from test_modules import planted
from torch import nn

import interbasis as ib
from experiments.modules_two_tasks import capture_inputs, mixed_subnetworks, node_layers
from graphs import adjusted_rand_index, find_modules
from graphs.consensus import (
    co_membership_of_labels,
    consensus_labels,
    module_stability,
)
from graphs.errors import ModuleSearchError

pytestmark = pytest.mark.usefixtures("one_thread")
SEEDS = range(5)


def test_co_membership_and_consensus_closed_form():
    labels = np.array([[0, 0, 1, 1, -1], [0, 0, 0, 1, -1], [1, 1, 0, 0, 0]])
    P = co_membership_of_labels(labels)
    assert P[0, 1] == 1.0 and P[0, 2] == pytest.approx(1 / 3) and P[2, 3] == pytest.approx(2 / 3)
    assert P[2, 4] == 1.0 and P[0, 4] == 0.0  # 4 is assigned once (row 3), apart from 0
    assert np.isnan(co_membership_of_labels(np.array([[0, -1], [0, -1]]))[0, 1])
    np.testing.assert_array_equal(P, P.T)
    assert consensus_labels(P).tolist() == [1, 1, 0, 0, 0]  # 2~3 (2/3), 3~4, 2~4; by size
    same = np.array([[2, 2, 0, 1], [5, 5, 3, 4]])
    assert consensus_labels(co_membership_of_labels(same)).tolist() == [0, 0, 1, 2]
    with pytest.raises(ModuleSearchError, match="threshold"):
        consensus_labels(P, 1.0)


def test_module_stability_on_clear_and_unclear_modules():
    g, truth = planted([21, 21, 21, 20], 3, seed=1)
    st = module_stability(g, seeds=[0, 1, 2], resolutions=[0.9, 1.0, 1.1])
    assert st.ari_seeds == 1.0 and st.ari_resolutions == 1.0
    assert adjusted_rand_index(st.consensus, truth) == 1.0
    assert len(st.partitions) == 9 and st.consensus.method == "module_stability"
    assert dict(st.consensus.options)["seeds"] == [0, 1, 2]
    P = st.co_membership
    assert P.shape == (len(st.node_ids),) * 2 and np.nanmax(P) == 1.0 and np.nanmin(P) == 0.0
    # no modules at all: seeds disagree
    rng = np.random.default_rng(0)
    iid = [np.exp(rng.normal(size=e.shape)) * (e > 0) for e in g.edges]
    noisy = module_stability(type(g)(g.layers, iid, {}), seeds=[0, 1, 2], resolutions=[1.0])
    assert noisy.ari_seeds < 1.0 and noisy.ari_resolutions is None
    with pytest.raises(ModuleSearchError, match="distinct"):
        module_stability(g, seeds=[0, 0])


def tasks_by_anova(bases, acts, m: int, k: int) -> dict[str, int]:
    """Node -> the input whose main effect explains most of its variance (product grid)."""
    out = {}
    for b in bases:
        g = b.transform(acts[b.name]).cpu().numpy().reshape(*([m] * k), -1)
        mean = g.mean(axis=tuple(range(k)))
        main = [((g.mean(axis=tuple(a for a in range(k) if a != i)) - mean) ** 2).mean(0)
                for i in range(k)]  # fmt: skip
        best = np.argmax(np.stack(main), axis=0)
        out.update({f"{b.name}:{i}": int(best[i]) for i in range(int(b.has_constant), b.n_nodes)})
    return out


def subnetwork_fixture(k: int, width: int, depth: int, seed: int, m: int, scales=None):
    net = mixed_subnetworks(k, width, depth, seed, scales=scales)
    axis = torch.linspace(-1, 1, m, dtype=torch.float64)
    x = torch.cartesian_prod(*([axis] * k))
    names = node_layers(depth)
    bases = ib.build_bases(net, x, names, progress=False)
    graph = ib.build_graph(net, x, names, bases=bases, progress=False)
    return graph, tasks_by_anova(bases, capture_inputs(net, x, names), m, k)


def block_diagonal_fixture():
    """The block-diagonal atlas case of tests/test_links_hessian.py (two 2-3-2-1 blocks)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        Split(2, 2, 3, 3), nn.Tanh(), Split(3, 3, 2, 2), nn.Tanh(), Split(2, 2, 1, 1)
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    g = torch.Generator().manual_seed(0)
    u = 2 * torch.rand(24, 2, generator=g, dtype=torch.float64) - 1
    w = 2 * torch.rand(24, 2, generator=g, dtype=torch.float64) - 1
    x = torch.cat([u.repeat_interleave(24, 0), w.repeat(24, 1)], dim=1)
    bases = ib.build_bases(net.eval(), x, BLOCK_LAYERS, progress=False)
    graph = ib.build_graph(net, x, BLOCK_LAYERS, bases=bases, progress=False)
    truth = {}
    for b in bases:  # block of a node: where its C column puts its weight
        A = (b.C[:-1] if b.has_constant else b.C).abs()
        half = b.dim // 2 if b.name != "output" else 1
        for i in range(int(b.has_constant), b.n_nodes):
            truth[f"{b.name}:{i}"] = int(float(A[half:, i].sum()) > float(A[:half, i].sum()))
    return graph, truth


FIXTURES = {
    "planted k=3": lambda: planted([31, 31, 31, 30], 3, seed=0),
    "two-task quick": lambda: subnetwork_fixture(2, 3, 2, 0, 24),
    "two-task full s0": lambda: subnetwork_fixture(2, 8, 3, 0, 40),
    "two-task full s2": lambda: subnetwork_fixture(2, 8, 3, 2, 40),
    "three disguised, scaled layers": lambda: subnetwork_fixture(
        3, 4, 3, 2, 12, scales=[1.0, 3.0, 0.3, 2.0]
    ),
    "block-diagonal atlas": block_diagonal_fixture,
}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_default_find_modules_recovers_planted_modules(name):
    graph, truth = FIXTURES[name]()
    for seed in SEEDS:
        part = find_modules(graph, seed=seed)
        assert adjusted_rand_index(part, truth) >= 0.95, (name, seed, part.sizes)
