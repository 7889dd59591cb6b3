"""Sparsifying transforms of seed 004 §4 (eqs 23-27): same function, the promised zeros."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interbasis import RankError, ShapeError, activation_grams
from interbasis.degeneracy import (
    reduce_dependent_inputs,
    sync_block_transform,
    synchronized_neurons,
)


def T(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def folded_gram(f: torch.Tensor) -> torch.Tensor:
    fb = torch.cat([f, torch.ones(f.shape[0], 1, dtype=torch.float64)], 1)
    return fb.T @ fb / f.shape[0]


def rank_deficient_data(n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    u = (0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)) * torch.where(
        torch.rand(n, generator=g) < 0.5, 1.0, -1.0
    ).double()
    v = 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1
    return torch.stack([u, v, u + v], 1)


W0 = T([[1.0, 0, 0], [1.0, 0.3, 0], [0.1, 0.2, 0.1], [0.2, 1.0, -0.3], [-0.5, 0.4, 0.6]])
B0 = T([0.0, 0.0, -3.0, 0.1, -0.2])
W1 = T([[1.0, -0.7, 0.4, 0.8, -1.1], [0.3, 0.9, -0.5, -0.6, 0.7]])
B1 = T([0.1, -0.2])


def test_eq24_disconnects_the_dependent_input():
    x = rank_deficient_data()
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    G = activation_grams(net.double().eval(), x, ["0"])["0"].gram()  # [x, 1], constant last
    torch.testing.assert_close(G, folded_gram(x))
    red = reduce_dependent_inputs(W0, G, B0)
    assert red.kept == (3, 0, 1) and red.dependent == (2,)  # constant first, then x1, x2
    torch.testing.assert_close(red.coefficients[:, 0], T([0.0, 1.0, 1.0]), atol=1e-12, rtol=0)
    assert bool((red.weight[:, 2] == 0).all())  # d_out = 5 zero weights for one dependency
    torch.testing.assert_close(x @ red.weight.T + red.bias, x @ W0.T + B0, rtol=1e-12, atol=1e-12)


def test_eq24_on_a_hidden_layer_with_a_dead_neuron():
    f = torch.relu(rank_deficient_data() @ W0.T + B0)  # neuron 2 is dead
    red = reduce_dependent_inputs(W1, folded_gram(f), B1)
    assert red.dependent == (2,)
    torch.testing.assert_close(f @ red.weight.T + red.bias, f @ W1.T + B1, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    d=st.integers(2, 6),
    rank=st.integers(1, 6),
    d_out=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    bias=st.booleans(),
)
def test_eq24_preserves_the_map_and_zeroes_d_out_per_dependency(d, rank, d_out, seed, bias):
    rank = min(rank, d)
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(80, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, d, generator=g, dtype=torch.float64
    )
    w = torch.randn(d_out, d, generator=g, dtype=torch.float64)
    b = torch.randn(d_out, generator=g, dtype=torch.float64) if bias else None
    gram = folded_gram(f) if bias else f.T @ f / f.shape[0]
    red = reduce_dependent_inputs(w, gram, b)
    folded_rank = int(torch.linalg.matrix_rank(gram))
    assert len(red.kept) == folded_rank and len(red.dependent) == gram.shape[0] - folded_rank
    neuron_dep = [j for j in red.dependent if j < d]
    assert bool((red.weight[:, neuron_dep] == 0).all())
    want = f @ w.T + (b if b is not None else 0)
    got = f @ red.weight.T + (red.bias if red.bias is not None else 0)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


def test_eq25_27_identity_blocks_and_unchanged_function():
    x = rank_deficient_data()
    red = reduce_dependent_inputs(W0, folded_gram(x), B0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)
    ).double()
    with torch.no_grad():
        (
            net[0].weight.copy_(W0),
            net[0].bias.copy_(B0),
            net[2].weight.copy_(W1),
            net[2].bias.copy_(B1),
        )
    blocks = synchronized_neurons(net.eval(), x, "1").blocks
    assert (0, 1) in blocks
    tr = sync_block_transform(red.weight, blocks, red.bias)
    assert tr.blocks == ((0, 1),) and tr.columns == ((0, 1),)  # eq. 27: consecutive columns
    torch.testing.assert_close(tr.weight[[0, 1]][:, [0, 1]], torch.eye(2, dtype=torch.float64))
    # the seed's count: sum_a s_a^2 - d = (4 + 1 + 1 + 1) - 5 = 2 extra zero weights
    assert int((tr.weight[[0, 1]][:, [0, 1]].abs() < 1e-12).sum()) == 2
    torch.testing.assert_close(tr.C @ tr.C_inv, torch.eye(5, dtype=torch.float64))
    p = x @ red.weight.T + red.bias
    f_hat = torch.relu(p) @ tr.C.T  # transformed neurons f̂ = C f
    # interaction form: f̂ = r(x) ∘ (Ŵ x̄) with each block's shared gate r
    gate = (p >= 0).double()
    torch.testing.assert_close(f_hat, gate * (x @ tr.weight.T + tr.bias), rtol=1e-12, atol=1e-12)
    # the network's function with the next weights W1 C^{-1}
    torch.testing.assert_close(f_hat @ (W1 @ tr.C_inv).T + B1, net(x), rtol=1e-12, atol=1e-12)
    # eq. 28 as printed, ReLU(C p) = C ReLU(p), fails here: C has negative entries
    assert bool((tr.C < 0).any())
    assert not torch.allclose(torch.relu(p @ tr.C.T), f_hat)


def test_transforms_repeat_layer_by_layer():
    """§4 'repeat for every layer': eq. 24 then eqs 25-27 on each layer, function unchanged."""
    x = rank_deficient_data()
    # second hidden layer: neurons 0 and 1 read f >= 0 with positive weights: always on, so
    # synchronized with independent pre-activations
    w1 = T([[0.5, 0.2, 0.3, 0.1, 0.4], [0.1, 0.6, 0.2, 0.5, 0.3], [0.5, 0.5, 0.5, -0.4, 0.9]])
    b1 = T([0.1, 0.2, -0.1])
    w2, b2 = T([[0.7, -0.4, 1.2], [0.5, 1.1, -0.3]]), T([0.0, 0.1])
    want = torch.relu(torch.relu(x @ W0.T + B0) @ w1.T + b1) @ w2.T + b2
    h, weight, bias, C_inv_prev = x, W0, B0, None
    transformed, zeroed = [], []
    for w_next in (w1, w2):
        if C_inv_prev is not None:
            weight = weight @ C_inv_prev  # this layer now reads the transformed neurons
        red = reduce_dependent_inputs(weight, folded_gram(h), bias)
        p = h @ red.weight.T + red.bias
        gates = (p >= 0).double()
        groups: dict[bytes, list[int]] = {}
        for i in range(p.shape[1]):
            groups.setdefault(gates[:, i].numpy().tobytes(), []).append(i)
        tr = sync_block_transform(red.weight, list(groups.values()), red.bias)
        transformed.append(tr.blocks)
        zeroed.append(red.dependent)
        h = torch.relu(p) @ tr.C.T
        weight, bias, C_inv_prev = w_next, (b1 if w_next is w1 else b2), tr.C_inv
    out = h @ (weight @ C_inv_prev).T + bias
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    # layer 1: x3 = x1 + x2 and the sync pair (0, 1); layer 2: the dead neuron 2 (still
    # coordinate 2 of the transformed basis) and the always-on pair (0, 1)
    assert zeroed == [(2,), (2,)] and transformed == [((0, 1),), ((0, 1),)]


def test_transform_errors():
    with pytest.raises(RankError, match=r"block \[0, 1\] on input columns \[0, 1\]"):
        sync_block_transform(T([[1.0, 2.0, 0.0], [2.0, 4.0, 1.0]]), [(0, 1)])
    with pytest.raises(ShapeError, match="disjoint"):
        sync_block_transform(W0, [(0, 1), (1, 2)])
    with pytest.raises(ShapeError, match="needs 4 input columns"):
        sync_block_transform(W0[:, :2], [(0, 1), (2, 3)])
    with pytest.raises(ShapeError, match="gram must be"):
        reduce_dependent_inputs(W0, torch.eye(3, dtype=torch.float64), B0)
    # explicit columns avoid a singular consecutive choice
    tr = sync_block_transform(T([[1.0, 2.0, 0.0], [2.0, 4.0, 1.0]]), [(0, 1)], columns=[(0, 2)])
    torch.testing.assert_close(tr.weight[:, [0, 2]], torch.eye(2, dtype=torch.float64))
