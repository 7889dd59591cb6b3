"""Edges and build_graph: closed forms, invariance, brute force (graph issue tests 1-3)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from nets import PositionMixer, linear_names, mlp
from test_build_bases import _orthogonalish, _reparametrised
from torch import nn

from interbasis import DataError, ShapeError, build_bases, build_graph
from interbasis.capture import capture, resolve_node_layers


def _acts(net: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    with torch.no_grad():
        return capture(net, x, resolve_node_layers(net, [name]))[0][name]


# 1. disconnected sub-networks -----------------------------------------------------------------
def _block_diagonal_mlp() -> nn.Sequential:
    """Two 2-3-3-2 tanh MLPs side by side, as one 4-6-6-4 MLP with block-diagonal weights."""
    g = torch.Generator().manual_seed(3)
    widths = [4, 6, 6, 4]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        lin = nn.Linear(a, b).double()
        W = torch.zeros(b, a, dtype=torch.float64)
        W[: b // 2, : a // 2] = torch.randn(b // 2, a // 2, generator=g, dtype=torch.float64)
        W[b // 2 :, a // 2 :] = 2.5 * torch.randn(b // 2, a // 2, generator=g, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(0.2 * torch.randn(b, generator=g, dtype=torch.float64))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).eval()


def _product_grid() -> torch.Tensor:
    """Inputs (a, b) over a Cartesian product: the two blocks' inputs are exactly independent."""
    g = torch.Generator().manual_seed(4)
    A = torch.randn(9, 2, generator=g, dtype=torch.float64)
    B = 0.7 * torch.randn(9, 2, generator=g, dtype=torch.float64) + 0.3
    return torch.cat([A.repeat_interleave(9, 0), B.repeat(9, 1)], dim=1)


def _block_of_nodes(basis, half: int) -> np.ndarray:
    """0/1 block of each non-constant node from where its activation-space column lives."""
    A = (basis.C[:-1, 1:] if basis.has_constant else basis.C).abs() ** 2
    share = A[:half].sum(0) / A.sum(0)
    assert ((share > 1 - 1e-10) | (share < 1e-10)).all(), share  # each node in one block
    return (share < 0.5).numpy().astype(int)


@pytest.mark.parametrize("basis", ["interaction", "pca", "neuron"])
def test_disconnected_subnetworks_have_no_edges_between_them(basis: str) -> None:
    net = _block_diagonal_mlp()
    x = _product_grid()
    graph = build_graph(net, x, ["0", "2", "4", "output"], basis=basis, progress=False)
    bases = build_bases(net, x, ["0", "2", "4", "output"], basis=basis, progress=False)
    blocks = [_block_of_nodes(b, b.dim // 2) for b in bases]
    largest = max(E.max() for E in graph.edges)
    for i, E in enumerate(graph.edges):
        out_block, in_block = blocks[i + 1], blocks[i]
        lo_out = 1 if bases[i + 1].has_constant else 0
        cross = E[lo_out:, 1:][out_block[:, None] != in_block[None, :]]
        within = E[lo_out:, 1:][out_block[:, None] == in_block[None, :]]
        assert cross.max() <= 1e-12 * largest
        assert within.max() > 1e-3 * largest


# 2. deep linear net ---------------------------------------------------------------------------
def test_deep_linear_edges_are_diagonal() -> None:
    g = torch.Generator().manual_seed(5)
    d = 5
    net = nn.Sequential(*[nn.Linear(d, d, bias=False).double() for _ in range(3)]).eval()
    with torch.no_grad():
        for lin in net:
            lin.weight.copy_(_orthogonalish(d, g))
    x = torch.randn(300, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d)
    graph = build_graph(
        net, x, [*linear_names(net), "output"], center=False, fold_bias=False, progress=False
    )
    for E in graph.edges[:-1]:  # between interaction-basis layers
        assert np.abs(E - np.diag(np.diag(E))).max() < 1e-10 * E.max()
        # E_ii = T_ii^2 E[f_hat_i^2] = Λ_i (the basis functions have variance Λ)
    np.testing.assert_allclose(np.diag(graph.edges[0]), graph.layers[0].eigenvalues, rtol=1e-8)
    E_out = graph.edges[-1]  # into the neuron-basis output: dense
    assert np.abs(E_out - np.diag(np.diag(E_out))).max() > 1e-3 * E_out.max()


# 3. reparametrisation invariance ----------------------------------------------------------------
def test_edges_invariant_to_reparametrisation() -> None:
    g = torch.Generator().manual_seed(6)
    net = mlp([3, 5, 5, 8], seed=6)
    x = torch.randn(150, 3, generator=g, dtype=torch.float64)
    R = torch.randn(5, 5, generator=g, dtype=torch.float64) + 2 * torch.eye(5)
    other = _reparametrised(net, R, at=2)
    a = build_graph(net, x, ["0", "2", "4", "output"], progress=False)
    b = build_graph(other, x, ["0", "3", "5", "output"], progress=False)
    for Ea, Eb in zip(a.edges, b.edges, strict=True):
        np.testing.assert_allclose(Eb, Ea, rtol=1e-7, atol=1e-12 * Ea.max())


# brute force ------------------------------------------------------------------------------------
def test_squared_edges_match_brute_force_with_positions() -> None:
    net = PositionMixer().eval()
    x = torch.randn(30, 4, 5, dtype=torch.float64)
    names = ["first", "second", "output"]
    bases = build_bases(net, x, names, progress=False)
    graph = build_graph(net, x, names, bases=bases, batch_size=7, progress=False)
    b0, b1 = bases[0], bases[1]
    f_hat = b0.transform(x)  # (N, P, n0)

    def in_basis(fh: torch.Tensor) -> torch.Tensor:  # f_hat^0 -> f_hat^1
        return b1.transform(net.mix(b0.inverse_transform(fh)))

    E = torch.zeros(b1.n_nodes, b0.n_nodes, dtype=torch.float64)
    for fh in f_hat:  # independent reference: full per-sample Jacobian in the bases
        J = torch.func.jacrev(in_basis)(fh)  # (P_out, n1, P_in, n0)
        E += (torch.einsum("tisj,sj->tij", J, fh) ** 2).sum(0)
    E /= x.shape[0] * x.shape[1]
    E[:, 0] = 0
    E[0, :] = 0
    E = E.detach()
    np.testing.assert_allclose(graph.edges[0], E.numpy(), rtol=1e-10, atol=1e-14 * float(E.max()))


def test_functional_edges_are_complete() -> None:
    """Integrated gradients add up: sum_j E_ij = mean_x sum_t (f_hat_i(x) - f_hat_i(path 0))^2."""
    from interbasis.build import prepare
    from interbasis.edges import functional_edges

    net = mlp([3, 6, 4], act=nn.Tanh)
    x = torch.randn(80, 3, dtype=torch.float64)
    bases = build_bases(net, x, ["2", "output"], progress=False)
    run = prepare(net, x, ["2", "output"], progress=False)
    E = functional_edges(run.section("2", "output"), run.batches(), *bases, n_points=24)
    h = _acts(net, x, "2")
    b = bases[0]
    start = h - b.inverse_transform(b.transform(h)) + b.mean  # the path at alpha = 0
    F0 = ((net[2](h) - net[2](start)) ** 2).mean(0)
    np.testing.assert_allclose(E.sum(1), F0.detach().numpy(), rtol=1e-9)


def test_weight_edges_equal_squared_on_linear_sections() -> None:
    """On affine sections, one Jacobian (edges="weight", and the fast path build_graph takes by
    itself) gives the squared edges of per-sample VJPs (used when bases are passed in)."""
    net = nn.Sequential(nn.Linear(4, 5).double(), nn.Linear(5, 3).double()).eval()
    x = torch.randn(90, 4, dtype=torch.float64)
    names = ["0", "1", "output"]
    bases = build_bases(net, x, names, progress=False)
    per_sample = build_graph(net, x, names, bases=bases, progress=False)
    weight = build_graph(net, x, names, bases=bases, edges="weight", progress=False)
    fast = build_graph(net, x, names, progress=False)
    for a, b, c in zip(per_sample.edges, weight.edges, fast.edges, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-14 * a.max())
        np.testing.assert_allclose(c, a, rtol=1e-10, atol=1e-14 * a.max())
    with pytest.raises(DataError, match="needs an affine section"):
        build_graph(mlp([4, 5, 3]), x, names, edges="weight", progress=False)


def test_graph_types_and_metadata() -> None:
    net = mlp([3, 4, 2])
    x = torch.randn(40, 3, dtype=torch.float64)
    g = build_graph(net, x, ["0", "2", "output"], progress=False)
    assert [layer.name for layer in g.layers] == ["0", "2", "output"]
    assert [E.shape for E in g.edges] == [
        (g.layers[1].size, g.layers[0].size),
        (2, g.layers[1].size),
    ]
    assert g.layers[0].is_constant[0] and not g.layers[-1].is_constant.any()
    assert (g.edges[0][:, 0] == 0).all() and (g.edges[0][0, :] == 0).all()
    np.testing.assert_allclose(  # interaction basis: variance of node i is Λ_i
        g.layers[1].activation_variance[1:], g.layers[1].eigenvalues[1:], rtol=1e-9
    )
    assert g.metadata["edges"] == "squared" and g.metadata["n_samples"] == 40
    assert next(iter(g.to_networkx().nodes)) == "0:0"


def test_bases_from_another_model_are_rejected() -> None:
    x = torch.randn(40, 3, dtype=torch.float64)
    other = build_bases(mlp([3, 6, 2]), x, ["0", "2", "output"], progress=False)
    with pytest.raises(
        ShapeError, match="basis of '2' has width 6 but the model's '2' has width 4"
    ):
        build_graph(mlp([3, 4, 2]), x, ["0", "2", "output"], bases=other, progress=False)
    with pytest.raises(ShapeError, match="bases are for"):
        build_graph(mlp([3, 6, 2]), x, ["0", "2", "output"], bases=other[::-1], progress=False)


def test_functional_edges_match_a_brute_force_loop() -> None:
    """Every entry, against autograd per output node and quadrature point (rib-style loop)."""
    from interbasis.build import prepare
    from interbasis.edges import functional_edges, gauss_legendre

    net = mlp([3, 6, 8], act=nn.Tanh)  # 8 outputs: M full rank, no node truncated
    x = torch.randn(40, 3, dtype=torch.float64)
    bases = build_bases(net, x, ["2", "output"], progress=False)
    b = bases[0]
    assert b.n_nodes == 7
    run = prepare(net, x, ["2", "output"], progress=False)
    E = functional_edges(run.section("2", "output"), run.batches(), *bases, n_points=8)
    h = _acts(net, x, "2")
    f_hat = b.transform(h)
    out_1 = net[2](h)
    ref = torch.zeros(8, 7, dtype=torch.float64)
    for alpha, w in zip(*gauss_legendre(8), strict=True):
        scale = torch.ones(7, dtype=torch.float64)
        scale[1:] = float(alpha)
        fa = (f_hat * scale).detach().requires_grad_(True)
        out_a = net[2](b.inverse_transform(fa))
        for i in range(8):
            F_i = ((out_1[:, i] - out_a[:, i]) ** 2).sum()
            (g,) = torch.autograd.grad(F_i, fa, retain_graph=True)
            ref[i] -= float(w) * (g * f_hat).sum(0).detach()
    ref /= len(x)
    ref[:, 0] = 0
    np.testing.assert_allclose(E, ref.numpy(), rtol=1e-9, atol=1e-13 * float(ref.abs().max()))
