"""Hessian ↔ graph: eigenvector energy per module and curvature masses (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import interbasis as ib
from graphs import find_modules
from interbasis.curvature import ParamLayout, eigh_descending, hessian_matrix
from interbasis.errors import DataError, ShapeError
from interbasis.links import find_graph_stages, hessian_eigenpairs, hessian_graph_links

LAYERS = ["0", "1", "2", "3", "4", "output"]


class Split(nn.Module):
    """Two independent Linear maps side by side: ``[a(x[:, :cut]), b(x[:, cut:])]``."""

    def __init__(self, a_in: int, b_in: int, a_out: int, b_out: int) -> None:
        super().__init__()
        self.cut = a_in
        self.a = nn.Linear(a_in, a_out)
        self.b = nn.Linear(b_in, b_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[..., : self.cut]), self.b(x[..., self.cut :])], dim=-1)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def two_blocks():
    """Two disconnected tanh sub-networks 2-3-2-1 on a product grid of their inputs.

    The inputs of the blocks are exactly uncorrelated in the data (every pair of a block-A
    point with a block-B point), so each interaction-basis node belongs to one block; weights
    are scaled up so that every Λ lies far above the truncation floor.
    """
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
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], x[:, 2] ** 2 - x[:, 3]], dim=1)
    bases = ib.build_bases(net.eval(), x, LAYERS, progress=False)
    graph = ib.build_graph(net, x, LAYERS, bases=bases, progress=False)
    eps = 1e-9 * max(float(e.max()) for e in graph.edges)  # every real edge counts
    part = find_modules(graph, eps, method="spectral", n_modules=2)
    return net, x, y, bases, part


def _block_of(node: str, bases: list[ib.Basis]) -> str:
    """Which sub-network a node's function belongs to ("a" or "b"), from its C column."""
    layer, idx = node.rsplit(":", 1)
    b = next(b for b in bases if b.name == layer)
    col = (b.C[:-1] if b.has_constant else b.C)[:, int(idx)].abs()
    half = b.dim // 2 if layer != "output" else 1
    return "a" if float(col[:half].sum()) > float(col[half:].sum()) else "b"


def test_block_diagonal_model_eigenvectors_live_in_one_module(two_blocks) -> None:
    """Issue 12 test 1: share >= 0.999 per eigenvector; masses add up to the trace."""
    net, x, y, bases, part = two_blocks
    assert part.n_modules == 2 and not part.unassigned()
    # the modules are the two sub-networks
    for m, nodes in enumerate(part.modules()):
        assert len({_block_of(n, bases) for n in nodes}) == 1, (m, nodes)
    stages, notes = find_graph_stages(net, x, LAYERS)
    assert len(stages) == 3 and not notes  # every parameter is in a graph stage
    H = hessian_matrix(net, F.mse_loss, (x, y))
    pairs = eigh_descending(H)  # all 40 eigenpairs
    layout = ParamLayout.from_model(net)
    links = hessian_graph_links(
        net, x, bases, stages, pairs.values, pairs.vectors, layout, part.membership
    )
    _, share = links.top_module()
    assert float(share.min()) >= 0.999
    np.testing.assert_allclose(links.table().sum(axis=1), 1.0, rtol=0, atol=1e-12)
    mass = links.curvature_mass()
    modules = mass["module 0"] + mass["module 1"]
    # the trace is the sum of all eigenvalues: equal up to float64 round-off of eigh
    assert modules == pytest.approx(float(H.trace()), rel=1e-10)
    # each module's mass is the trace of its sub-network's Hessian block
    for m, nodes in enumerate(part.modules()):
        block = _block_of(nodes[0], bases)
        idx = layout.indices([n for n in layout.names if f".{block}." in n])
        assert mass[f"module {m}"] == pytest.approx(float(H[idx][:, idx].trace()), rel=1e-9)


def test_energy_is_the_kfac_quadratic_form(two_blocks) -> None:
    """sum_ij E_ij + off_basis = E_x ||delta f_hat^{l+1}||^2 per stage, off_basis >= 0.

    The first stage reads the full-rank input, whose basis drops nothing: off_basis = 0
    there. The later stages read tanh layers of width 3 + 3 whose basis keeps only the
    directions the next layer reads (M-null ones dropped): a random change also reads the
    dropped ones, which is what off_basis measures.
    """
    from interbasis.links import node_function_jvps, split_directions

    net, x, _, bases, part = two_blocks
    stages, _ = find_graph_stages(net, x, LAYERS)
    layout = ParamLayout.from_model(net)
    gen = torch.Generator().manual_seed(3)
    for st in stages:
        v = torch.zeros(2, layout.size, dtype=torch.float64)
        idx = layout.indices(list(st.params))
        v[:, idx] = torch.randn(2, len(idx), generator=gen, dtype=torch.float64)
        links = hessian_graph_links(
            net, x, bases, [st], torch.ones(2), v.T, layout, part.membership
        )
        jv = node_function_jvps(net, x, bases, v, layout)
        # the stage's parameters are read only from node layer st.input on: the JVP at
        # st.output is exactly the stage's change
        want = jv.movement()[st.output].sum(dim=1).numpy()
        np.testing.assert_allclose(links.energy, want, rtol=1e-9)
        on_edges = links.stage_energy[0].sum(axis=(1, 2))
        off = links.energy - on_edges
        assert (off >= -1e-12 * links.energy).all()
        if st.input == "0":
            np.testing.assert_allclose(off, 0.0, atol=1e-12 * float(links.energy.max()))
        else:
            assert (off > 1e-6 * links.energy).all()
        # coverage 1: shares are energy fractions; the off-basis part is inside the modules
        np.testing.assert_allclose(links.off_basis, off / links.energy, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(links.table().sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert split_directions(layout, v)[st.params[0]].shape[0] == 2


def test_energy_split_is_exact_for_uncentred_bases(two_blocks) -> None:
    """Uncentred bases (no constant node; Λ = second moments, not variances) on inputs with a
    non-zero mean: for a change of the weights (a bias change has no in-node here, it is
    off-basis) the edge energies add up to the whole change where the basis drops nothing, so
    no energy is invented or lost by reading Λ as a variance."""
    net, x, _, _, _ = two_blocks
    x = x + 1.0
    bases = ib.build_bases(net, x, LAYERS, center=False, fold_bias=False, progress=False)
    stages, _ = find_graph_stages(net, x, LAYERS)
    layout = ParamLayout.from_model(net)
    st = next(s for s in stages if s.input == "0")
    v = torch.zeros(3, layout.size, dtype=torch.float64)
    idx = layout.indices([p for p in st.params if p.endswith("weight")])
    v[:, idx] = torch.randn(3, len(idx), generator=torch.Generator().manual_seed(5),
                            dtype=torch.float64)  # fmt: skip
    membership = {n: 0 for b in bases for n in (f"{b.name}:{i}" for i in range(b.n_nodes))}
    links = hessian_graph_links(net, x, bases, [st], torch.ones(3), v.T, layout, membership)
    on_edges = links.stage_energy[0].sum(axis=(1, 2))
    np.testing.assert_allclose(on_edges, links.energy, rtol=1e-9)


def test_coverage_invisible_and_outside() -> None:
    """Parameters outside the stages go to "outside"; null directions of G are "invisible"."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(2)
    u = torch.randn(300, 2, generator=g, dtype=torch.float64)
    x = torch.cat([u, u.sum(dim=1, keepdim=True)], dim=1)  # x3 = x1 + x2: a null vector of G
    layers = ["0", "1", "2", "output"]
    bases = ib.build_bases(net.eval(), x, layers, progress=False)
    stages, _ = find_graph_stages(net, x, layers)
    assert [(s.input, s.output) for s in stages] == [("0", "1"), ("2", "output")]
    layout = ParamLayout.from_model(net)
    sl = layout.slices
    v_null = torch.zeros(layout.size, dtype=torch.float64)  # W0 += e_0 (1, 1, -1): reads x1+x2-x3
    v_null[sl["0.weight"].start : sl["0.weight"].start + 3] = torch.tensor([1.0, 1.0, -1.0])
    v_mixed = torch.zeros(layout.size, dtype=torch.float64)
    v_mixed[sl["0.weight"].start + 3] = 1.0  # a real weight of stage 0
    v_mixed[sl["2.bias"]] = 1.0  # and the output bias (2 entries: 2/3 of ||v||^2)
    member = {f"{b.name}:{i}": 0 for b in bases for i in range(1, b.n_nodes)}
    member.update({f"output:{i}": 0 for i in range(2)})
    V = torch.stack([v_null / v_null.norm(), v_mixed / v_mixed.norm()], dim=1)
    links = hessian_graph_links(net, x, bases, stages, torch.ones(2), V, layout, member)
    assert links.invisible[0] == pytest.approx(1.0) and links.shares[0].sum() == 0.0
    assert links.invisible[1] == 0.0 and links.shares[1, 0] == pytest.approx(1.0, rel=1e-12)
    # with the first stage left out, everything of v_null is outside the graph
    links = hessian_graph_links(net, x, bases, stages[1:], torch.ones(2), V, layout, member)
    assert links.outside[0] == pytest.approx(1.0) and links.outside[1] == pytest.approx(1 / 3)
    # no stage at all (e.g. node layers around attention only): everything is outside
    links = hessian_graph_links(net, x, bases, [], torch.tensor([2.0, 1.0]), V, layout, member)
    np.testing.assert_array_equal(links.outside, [1.0, 1.0])
    assert links.curvature_mass()["outside"] == 3.0 and not links.stage_energy


def test_eigenpairs_dense_and_lanczos_agree(two_blocks) -> None:
    net, x, y, *_ = two_blocks
    dense, how = hessian_eigenpairs(net, F.mse_loss, (x, y), 4)
    assert how == "dense" and len(dense) == ParamLayout.from_model(net).size == 40
    top, how = hessian_eigenpairs(net, F.mse_loss, (x, y), 4, bottom=True, max_dense=10)
    assert how == "lanczos"
    np.testing.assert_allclose(top.values[:4], dense.values[:4], rtol=1e-8)
    np.testing.assert_allclose(top.values[4:], dense.values[-4:], rtol=1e-8)


def test_bad_input(two_blocks) -> None:
    net, x, y, bases, _ = two_blocks
    stages, _ = find_graph_stages(net, x, LAYERS)
    layout = ParamLayout.from_model(net)
    with pytest.raises(ShapeError, match="vectors must be"):
        hessian_graph_links(
            net, x, bases, stages, torch.ones(3), torch.zeros(layout.size, 2), layout, {}
        )
    small = ParamLayout.from_model(net, ["0.a.weight"])
    with pytest.raises(DataError, match="not in the eigenvectors' layout"):
        hessian_graph_links(
            net, x, bases, stages, torch.ones(1), torch.zeros(small.size, 1), small, {}
        )
    with pytest.raises(DataError, match="k must be"):
        hessian_eigenpairs(net, F.mse_loss, (x, y), 0)
