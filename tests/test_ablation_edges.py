"""interbasis.ablation: edge ablation and edges_needed (issue 20, test 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import mlp
from torch import nn

import interbasis as ib
from interbasis.ablation import edge_ablation, edges_needed
from interbasis.ablation.edges import edge_mask, edge_order, log_midpoint
from interbasis.capture import capture, resolve_node_layers, run_section

pytestmark = pytest.mark.usefixtures("one_thread")
EXACT = 1e-10


def max_dev(out: torch.Tensor, target: torch.Tensor | None, clean: torch.Tensor) -> torch.Tensor:
    ref = clean if target is None else target
    return (out - ref).abs().reshape(out.shape[0], -1).amax(1)


@pytest.fixture(scope="module")
def built() -> tuple[nn.Module, torch.Tensor, list[str], list[ib.Basis], object]:
    net = mlp([3, 5, 5, 6], seed=2)  # no basis truncated
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    names = ["0", "2", "4", "output"]
    bases = ib.build_bases(net, x, names, progress=False)
    graph = ib.build_graph(net, x, names, bases=bases, progress=False)
    return net, x, names, bases, graph


def test_keep_all_is_exact(built):
    net, x, _, bases, graph = built
    res = edge_ablation(net, x, graph, 10**6, bases=bases, metric=max_dev)
    for section, vals in res.values.items():
        assert vals[0] < EXACT, section


def test_keep_none_is_constant_only_path(built):
    net, x, names, bases, graph = built
    for s, name in enumerate(names[:-1]):
        mods = resolve_node_layers(net, [name])
        acts, layouts = capture(net, x, mods)
        module = mods[name]
        assert module is not None
        mean = acts[name].mean(0, keepdim=True).expand_as(acts[name])
        with torch.no_grad():
            expected = run_section(net, x, (name, module), mean, layouts[name], ("output", None))
        res = edge_ablation(net, (x, expected), graph, 0, bases=bases, section=s, metric=max_dev)
        assert res.values[name][0] < EXACT, name
        one = edge_ablation(net, (x, expected), graph, 1, bases=bases, section=s, metric=max_dev)
        assert one.values[name][0] > 1e-4  # one edge back changes it


def test_affine_section_is_masked_linear_map():
    """Last section affine: f_hat_out'_j = sum_i K_ji f_hat_in_i G_ij, G the map in bases."""
    net = mlp([2, 4, 5], seed=1)  # "2" -> output is the Linear layer "2"
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    names = ["0", "2", "output"]
    bases = ib.build_bases(net, x, names, progress=False)
    graph = ib.build_graph(net, x, names, bases=bases, progress=False)
    b_in, b_out = bases[1], bases[2]
    lin = net[2]
    d = b_in.dim
    affine = torch.zeros(d + 1, lin.out_features, dtype=torch.float64)
    affine[:d] = lin.weight.detach().T
    affine[d] = lin.bias.detach()
    G = b_in.C_pinv @ affine @ b_out.C  # (n_in, n_out): f_hat_out = f_hat_in @ G
    acts, _ = capture(net, x, resolve_node_layers(net, ["2"]))
    f_hat = b_in.transform(acts["2"])
    for keep in (0, 3, 7, 12):
        K = torch.as_tensor(edge_mask(graph, 1, keep))  # (n_out, n_in)
        f_out = torch.einsum("ni,ji,ij->nj", f_hat, K.double(), G)
        expected = b_out.inverse_transform(f_out)
        res = edge_ablation(net, (x, expected), graph, keep, bases=bases, section="2",
                            metric=max_dev)  # fmt: skip
        assert res.values["2"][0] < EXACT, keep


def test_edge_order_and_mask(built):
    _, _, _, _, graph = built
    e = graph.edges[1]
    order = edge_order(graph, 1)
    assert order.size == (e.shape[0] - 1) * (e.shape[1] - 1)
    assert np.all(np.diff(e.ravel()[order]) <= 0)
    m = edge_mask(graph, 1, 4)
    assert m[:, 0].all() and m[:, 1:].sum() == 4
    assert m[1:, 1:].ravel()[np.argmax(e[1:, 1:])]


def test_edges_needed_equals_linear_scan(built):
    net, x, names, bases, graph = built
    total = [int(edge_order(graph, s).size) for s in range(3)]
    scan = edge_ablation(net, x, graph, list(range(max(total) + 1)), bases=bases, metric="mse")
    for tol in (1e-2, 1e-3):
        got = edges_needed(net, x, graph, tol, bases=bases, metric="mse")
        for s, name in enumerate(names[:-1]):
            dist = np.abs(scan.values[name][: total[s] + 1] - scan.baseline)
            # linear scan: the smallest k from which every larger k is within tolerance
            passing = dist <= tol
            expected = next(k for k in range(total[s] + 1) if passing[k:].all())
            assert got.needed[name] == expected, (name, tol)
            assert len(got.evaluated[name]) < total[s]  # bisection, not a scan
            for k, v in got.evaluated[name].items():
                assert v == pytest.approx(scan.values[name][k], rel=1e-12, abs=1e-15)


def test_log_midpoint():
    assert log_midpoint(0, 2) == 1
    assert log_midpoint(0, 99) == 9
    assert log_midpoint(9, 99) == 31
    assert all(lo < log_midpoint(lo, hi) < hi for lo in range(20) for hi in range(lo + 2, 60))


def test_bad_arguments(built):
    net, x, _, bases, graph = built
    with pytest.raises(ValueError, match="keep"):
        edge_ablation(net, x, graph, -1, bases=bases)
    with pytest.raises(ValueError, match="section"):
        edge_ablation(net, x, graph, 1, bases=bases, section="output")
    with pytest.raises(ValueError, match="tolerance"):
        edges_needed(net, x, graph, -0.1, bases=bases)
    with pytest.raises(ib.ShapeError, match="no basis"):
        edge_ablation(net, x, graph, 1, bases=bases[:2])
