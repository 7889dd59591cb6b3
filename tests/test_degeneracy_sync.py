"""Synchronized neurons (seed 004 eqs 17, 20-22): exact blocks, measures, invariances, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from interbasis import DataError, NodeLayerError
from interbasis.degeneracy import synchronized_neurons

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def relu_mlp(weights, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``nn.Sequential`` of Linear/act (modules "0", "1", ...) with the given (W, b), float64."""
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def T(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def gap_data(n: int = 200, seed: int = 0) -> torch.Tensor:
    """``u`` in ±[0.5, 1], ``v`` in [-1, 1]: hyperplanes u = 0 and u + 0.3 v = 0 agree on it."""
    g = torch.Generator().manual_seed(seed)
    u = (0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)) * torch.where(
        torch.rand(n, generator=g) < 0.5, 1.0, -1.0
    ).double()
    return torch.stack([u, 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1], 1)


# neuron 0: u; 1: u + 0.3 v (same gates on gap_data); 2: dead; 3: u + 0.6 v + 0.1; 4: 2 x neuron 0
W_SYNC = T([[1.0, 0.0], [1.0, 0.3], [0.1, 0.1], [1.0, 0.9], [2.0, 0.0]])
B_SYNC = T([0.0, 0.0, -3.0, 0.1, 0.0])
W_OUT = T([[1.0, -0.7, 0.4, 0.8, -1.1], [0.3, 0.9, -0.5, -0.6, 0.7]])


def sync_net() -> nn.Sequential:
    return relu_mlp([(W_SYNC, B_SYNC), (W_OUT, T([0.1, -0.2]))])


def gate_groups(p: np.ndarray) -> list[tuple[int, ...]]:
    """Independent reference: group neurons by hashing their gate pattern bytes."""
    groups: dict[bytes, list[int]] = {}
    for i in range(p.shape[1]):
        groups.setdefault((p[:, i] >= 0).tobytes(), []).append(i)
    return sorted(tuple(g) for g in groups.values())


def test_exact_blocks_ranks_dead_and_counts():
    x = gap_data()
    res = synchronized_neurons(sync_net(), x, "1")
    p = (x @ W_SYNC.T + B_SYNC).numpy()
    assert list(res.blocks) == gate_groups(p)
    assert res.blocks == ((0, 1, 4), (2,), (3,))
    # eq. 21: s_a = rank of the block's pre-activations (independent: SVD rank of the columns)
    assert res.ranks[0] == np.linalg.matrix_rank(p[:, [0, 1, 4]]) == 2
    assert res.dead == (2,) and res.always_on == ()
    assert res.naive == 9 + 1 + 1 and res.predicted == 4 + 1 + 1  # eq. 22
    assert res.labels.tolist() == [0, 0, 1, 2, 0]
    assert res.n_samples == 200 and res.width == 5 and res.slope == 0.0
    assert res.post == "1:output"


def test_pair_measures_match_brute_force():
    x = gap_data(60, seed=3)
    res = synchronized_neurons(sync_net(), x, "1")
    p = (x @ W_SYNC.T + B_SYNC).numpy()
    f = np.maximum(p, 0.0)
    on = p >= 0
    d = p.shape[1]
    for i, j in itertools.product(range(d), range(d)):
        mism = on[:, i] != on[:, j]
        assert res.hamming[i, j] == pytest.approx(mism.mean(), abs=1e-15)
        assert res.eq20_pairs[i, j] == pytest.approx(((f[:, i] - f[:, j]) ** 2).mean(), abs=1e-12)
        if i != j:
            share_i = (p[mism, i] ** 2).sum() / (p[:, i] ** 2).sum()
            share_j = (p[mism, j] ** 2).sum() / (p[:, j] ** 2).sum()
            assert res.distance[i, j] == pytest.approx(0.5 * (share_i + share_j), abs=1e-12)
    # eq. 20 as printed: sum over ordered pairs of the block
    blk = [0, 1, 4]
    want = sum(((f[:, a] - f[:, b]) ** 2).mean() for a in blk for b in blk)
    assert res.block_eq20[0] == pytest.approx(want, rel=1e-12)


def test_streaming_does_not_depend_on_batching():
    x = gap_data(90, seed=5)
    a = synchronized_neurons(sync_net(), x, "1")
    b = synchronized_neurons(sync_net(), x, "1", batch_size=7)
    assert a.blocks == b.blocks and a.ranks == b.ranks
    torch.testing.assert_close(a.distance, b.distance, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.hamming, b.hamming, rtol=0, atol=0)


def test_near_synchrony_blocks_are_connected_components():
    # thresholds 0, 0.1, 0.2 along u: neighbours disagree on a thin slab, 0 and 2 on a wider one
    x = torch.stack([torch.linspace(-1, 1, 401, dtype=torch.float64), torch.zeros(401)], 1)
    w = T([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    net = relu_mlp([(w, T([0.0, -0.1, -0.2, -0.5])), (T([[1.0, 1.0, 1.0, 1.0]]), T([0.0]))])
    exact = synchronized_neurons(net, x, "1")
    assert exact.blocks == ((0,), (1,), (2,), (3,))
    d01, d12, d02 = (float(exact.distance[i, j]) for i, j in [(0, 1), (1, 2), (0, 2)])
    assert max(d01, d12) < d02
    tol = 0.5 * (max(d01, d12) + d02)
    near = synchronized_neurons(net, x, "1", tol=tol)
    assert (0, 1, 2) in near.blocks  # the chain 0~1~2 joins although d(0, 2) > tol
    assert near.block_spread[near.blocks.index((0, 1, 2))] == pytest.approx(d02)
    assert near.tol == tol and near.measure == "scale_invariant"
    # eq. 20 as printed uses activation units; with a tiny tol nothing is linked
    assert synchronized_neurons(net, x, "1", tol=1e-12, measure="eq20").blocks == exact.blocks


def transformed(perm: list[int], scale: list[float]) -> nn.Sequential:
    """The sync net with hidden neurons permuted and rescaled: the same function."""
    s = T(scale)
    w, b, wo = W_SYNC * s[:, None], B_SYNC * s, W_OUT / s[None, :]
    return relu_mlp([(w[perm], b[perm]), (wo[:, perm], T([0.1, -0.2]))])


@settings(max_examples=25, deadline=None)
@given(
    perm=st.permutations(list(range(5))),
    scale=st.lists(st.floats(0.05, 20.0), min_size=5, max_size=5),
    tol=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_permutation_and_rescaling_invariance(perm, scale, tol):
    x = gap_data(80, seed=1)
    base = synchronized_neurons(sync_net(), x, "1", tol=tol)
    net = transformed(list(perm), scale)
    torch.testing.assert_close(net(x), sync_net()(x), rtol=1e-12, atol=1e-12)
    got = synchronized_neurons(net, x, "1", tol=tol)
    idx = torch.tensor(perm)
    # new neuron k is old neuron perm[k]: blocks map back through perm
    mapped = sorted(tuple(sorted(perm[k] for k in b)) for b in got.blocks)
    assert mapped == sorted(base.blocks)
    assert sorted(got.ranks) == sorted(base.ranks)
    torch.testing.assert_close(got.hamming, base.hamming[idx][:, idx], rtol=0, atol=1e-15)
    torch.testing.assert_close(got.distance, base.distance[idx][:, idx], rtol=1e-9, atol=1e-12)
    assert got.dead == tuple(sorted(perm.index(i) for i in base.dead))


def test_eq20_as_printed_is_not_rescaling_invariant():
    x = gap_data(80, seed=1)
    base = synchronized_neurons(sync_net(), x, "1")
    scaled = synchronized_neurons(transformed([0, 1, 2, 3, 4], [3.0, 1, 1, 1, 1]), x, "1")
    assert scaled.eq20_pairs[0, 1] > 2 * base.eq20_pairs[0, 1]
    torch.testing.assert_close(scaled.distance, base.distance, rtol=1e-9, atol=1e-12)


def test_leaky_relu_is_a_documented_generalisation():
    x = gap_data()
    leaky = relu_mlp([(W_SYNC, B_SYNC), (W_OUT, T([0.1, -0.2]))], act=lambda: nn.LeakyReLU(0.1))
    res = synchronized_neurons(leaky, x, "1")
    assert res.blocks == synchronized_neurons(sync_net(), x, "1").blocks
    assert res.slope == pytest.approx(0.1)


@pytest.mark.parametrize("act", [nn.Tanh, nn.GELU, nn.Softplus])
def test_non_relu_layer_is_refused(act):
    net = relu_mlp([(W_SYNC, B_SYNC), (W_OUT, T([0.1, -0.2]))], act=act)
    with pytest.raises(DataError, match=r"layer '1' is not ReLU-like"):
        synchronized_neurons(net, gap_data(), "1")


def test_reading_the_wrong_module_is_refused():
    # "3" receives the next layer's pre-activations, not relu of "1"'s input
    net = relu_mlp(
        [(W_SYNC, B_SYNC), (torch.eye(5, dtype=torch.float64), -B_SYNC), (W_OUT, T([0, 0]))]
    )
    with pytest.raises(DataError, match="layer '1' is not ReLU-like"):
        synchronized_neurons(net, gap_data(), "1", post="3")
    with pytest.raises(DataError, match=r"pre-activations \(200, 5\) and activations \(200, 2\)"):
        synchronized_neurons(net, gap_data(), "1", post="0")


@pytest.mark.parametrize("tol", [-1e-3, float("nan"), float("inf")])
def test_bad_tolerance(tol):
    with pytest.raises(DataError, match="tol must be a finite number >= 0"):
        synchronized_neurons(sync_net(), gap_data(), "1", tol=tol)


def test_bad_measure_rtol_and_layer():
    with pytest.raises(DataError, match="measure must be one of"):
        synchronized_neurons(sync_net(), gap_data(), "1", tol=0.1, measure="l2")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="rtol must be"):
        synchronized_neurons(sync_net(), gap_data(), "1", rtol=-1.0)
    with pytest.raises(NodeLayerError, match="acts.0"):
        synchronized_neurons(sync_net(), gap_data(), "acts.0")


def test_too_little_data_warns_with_the_numbers():
    with pytest.warns(UserWarning, match=r"3 samples .* width 5: ranks are capped at 3"):
        synchronized_neurons(sync_net(), gap_data(3), "1")


def _tiny_transformer(act_fn: str = "relu", n_layers: int = 1):
    from experiments.models import Transformer, TransformerConfig

    cfg = TransformerConfig(
        n_layers=n_layers, d_model=8, n_heads=2, d_head=4, d_mlp=12, n_ctx=3, d_vocab=7,
        d_vocab_out=5, act_fn=act_fn, seed=0,
    )  # fmt: skip
    return Transformer(cfg).double().eval()


def test_transformer_hook_pre_with_positions():
    model = _tiny_transformer(n_layers=2)
    tokens = torch.randint(0, 7, (50, 3), generator=torch.Generator().manual_seed(0))
    res = synchronized_neurons(model, tokens, "blocks.0.mlp.hook_pre")
    assert res.post == "blocks.0.mlp.hook_post:input"
    assert res.n_samples == 50 * 3  # positions pooled as samples (DESIGN §4)
    pre: list[torch.Tensor] = []
    h = model.blocks[0].mlp.hook_pre.register_forward_hook(lambda m, a, o: pre.append(a[0]))
    with torch.no_grad():
        model(tokens)
    h.remove()
    assert list(res.blocks) == gate_groups(pre[0].reshape(-1, 12).numpy())


def test_transformer_gelu_is_refused():
    tokens = torch.randint(0, 7, (20, 3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="'blocks.0.mlp.hook_pre' is not ReLU-like"):
        synchronized_neurons(_tiny_transformer("gelu"), tokens, "blocks.0.mlp.hook_pre")
