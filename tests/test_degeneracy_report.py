"""Degeneracy report vs the measured nullity of the behavioural-loss Hessian (seed 004 §3)."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from interbasis import DataError
from interbasis.degeneracy import (
    Stage,
    behavioural_hessian_nullity,
    degeneracy_report,
    mlp_block_stages,
    mlp_stages,
)

RTOL = 1e-9  # issue 7: eigenvalues below 1e-9 relative to the largest count as zero


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def T(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def relu_mlp(weights) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def exact_nullity(model: nn.Module, x: torch.Tensor, rtol: float = RTOL) -> int:
    """Independent reference: torch.func.hessian of the behavioural MSE on flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = model(x).detach()

    def loss(t: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = t[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        out = torch.func.functional_call(model, params, (x,))
        return ((out - target) ** 2).sum() / x.shape[0]

    ev = torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))
    return int((ev.abs() <= rtol * ev.abs().max()).sum())


def square(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 1


def generic_net(widths: list[int], x: torch.Tensor, seed: int = 0) -> nn.Sequential:
    """Distinct hyperplanes through the data: the first layer's pass through points of the
    square with distinct normals; later layers' biases put each median pre-activation at 0."""
    g = torch.Generator().manual_seed(seed)
    weights, h = [], x
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        if k == 0:
            angle = torch.arange(b, dtype=torch.float64) * math.pi / b + 0.1
            w = torch.stack([angle.cos(), angle.sin()], 1)
            c = 0.4 * torch.stack(
                [torch.cos(2.0 * torch.arange(b)), torch.sin(2.0 * torch.arange(b))], 1
            )
            bias = -(w * c.double()).sum(1)
        else:
            w = torch.randn(b, a, generator=g, dtype=torch.float64)
            last = k == len(widths) - 2
            bias = torch.zeros(b, dtype=torch.float64) if last else -(h @ w.T).median(0).values
        weights.append((w, bias))
        h = torch.relu(h @ w.T + bias)
    return relu_mlp(weights)


@pytest.mark.parametrize(("widths", "seed"), [([2, 6, 2], 0), ([2, 6, 5, 2], 3)])
def test_generic_mlp_nullity_is_one_rescaling_per_hidden_neuron(widths, seed):
    x = square()
    net = generic_net(widths, x, seed)
    rep = degeneracy_report(net, x, rtol=RTOL)
    hidden = sum(widths[1:-1])
    for layer in rep.layers:
        assert layer.sync.dead == () and layer.sync.always_on == ()
        assert all(len(b) == 1 for b in layer.sync.blocks)
    assert all(s.total == 0 for s in rep.stages)  # no G/K drops, no co-silent weights
    assert rep.predicted == hidden
    assert rep.measured is not None and rep.measured.nullity == hidden
    assert exact_nullity(net, x) == hidden
    # the count does not hinge on rtol: a wide gap around the threshold
    lam = float(rep.measured.eigenvalues[0])
    assert rep.measured.largest_zero < 1e-13 * lam < 1e-7 * lam < rep.measured.smallest_nonzero


def rank_deficient_data(n: int = 300) -> torch.Tensor:
    """``(u, v, u + v)`` with ``|u|`` in [0.5, 1]: rank 2 (+ constant), gap around u = 0."""
    g = torch.Generator().manual_seed(0)
    u = (0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)) * torch.where(
        torch.rand(n, generator=g) < 0.5, 1.0, -1.0
    ).double()
    v = 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1
    return torch.stack([u, v, u + v], 1)


# neurons 0 and 1 synchronized (hyperplanes u = 0 and u + 0.3 v = 0 agree on the data),
# neuron 2 dead, neurons 3 and 4 generic
W0 = T([[1.0, 0, 0], [1.0, 0.3, 0], [0.1, 0.2, 0.1], [0.2, 1.0, -0.3], [-0.5, 0.4, 0.6]])
B0 = T([0.0, 0.0, -3.0, 0.1, -0.2])
W1 = T([[1.0, -0.7, 0.4, 0.8, -1.1], [0.3, 0.9, -0.5, -0.6, 0.7]])


def test_hand_built_sync_dead_and_rank_deficient_input():
    x = rank_deficient_data()
    net = relu_mlp([(W0, B0), (W1, T([0.1, -0.2]))])
    rep = degeneracy_report(net, x, rtol=RTOL, hessian="exact")
    s0, s1 = rep.stages
    assert (s0.g, s0.kappa, s0.g_dirs, s0.k_dirs, s0.overlap) == (1, 1, 5, 4, 1)  # x3 = x1 + x2
    assert (s1.g, s1.kappa, s1.g_dirs) == (1, 0, 2)  # the dead neuron's out-weights
    (layer,) = rep.layers
    assert layer.sync.blocks == ((0, 1), (2,), (3,), (4,)) and layer.sync.dead == (2,)
    assert layer.s == (2, 1, 1, 1) and layer.t == (2, 0, 1, 1)
    assert layer.counted == 6 and layer.removed == 1  # the dead neuron's self-sync term
    assert rep.predicted == (5 + 4 - 1) + 2 + 6 == 16
    assert rep.measured is not None and rep.measured.nullity == 16 == exact_nullity(net, x)


def test_hand_built_two_hidden_layers():
    x = rank_deficient_data()
    w1 = T([[1.0, -0.7, 0.4, 0.8, -1.1], [0.3, 0.9, -0.5, -0.6, 0.7], [0.5, 0.5, 0.5, -0.4, 0.9]])
    b1 = -(torch.relu(x @ W0.T + B0) @ w1.T).median(0).values
    w2 = T([[0.7, -0.4, 1.2], [0.5, 1.1, -0.3]])
    net = relu_mlp([(W0, B0), (w1, b1), (w2, T([0.0, 0.0]))])
    rep = degeneracy_report(net, x, rtol=RTOL, hessian="exact")
    assert rep.predicted == 20
    assert rep.measured is not None and rep.measured.nullity == 20 == exact_nullity(net, x)


def test_dependent_block_counts_s_times_t_not_eq22():
    # neuron 1 = 2 x neuron 0: one block, s = 1 (eq. 21), but its Jacobians are independent
    x = square(400)
    w0 = T([[1.0, 0.3], [2.0, 0.6], [-0.4, 1.0], [0.7, -0.8], [0.2, 0.9]])
    b0 = T([0.1, 0.2, -0.1, 0.05, 0.3])
    net = relu_mlp([(w0, b0), (W1, T([0.1, -0.2]))])
    rep = degeneracy_report(net, x, rtol=RTOL)
    (layer,) = rep.layers
    blk = layer.sync.blocks.index((0, 1))
    assert layer.sync.ranks[blk] == 1 and layer.t[blk] == 2
    assert layer.sync.predicted == 4 and layer.counted == 5  # eq. 22 vs sum s*t
    assert rep.stages[1].g == 1  # f_1 = 2 f_0
    measured = exact_nullity(net, x)
    assert rep.predicted == measured == 7
    assert sum(s.total for s in rep.stages) + layer.sync.predicted == 6 != measured


def test_always_on_neuron_joins_the_bias_constant():
    x = square(400)
    w0 = T([[1.0, 0.3], [0.2, 0.1], [-0.4, 1.0], [0.7, -0.8]])
    net = relu_mlp([(w0, T([0.1, 2.0, -0.1, 0.05])), (W1[:, :4], T([0.1, -0.2]))])
    rep = degeneracy_report(net, x, rtol=RTOL)
    (layer,) = rep.layers
    assert layer.sync.always_on == (1,)
    blk = layer.sync.blocks.index((1,))
    assert layer.sync.ranks[blk] == 1 and layer.sync.ranks_with_constant[blk] == 2
    assert rep.predicted == exact_nullity(net, x) == 5  # 4 rescalings + its bias shift


def test_leaky_relu_linear_neurons_form_one_block():
    # neuron 1 always on, neuron 4 never on: with slope 0.1 both are linear on the data
    x = square(400)
    w0 = T([[1.0, 0.3], [0.2, 0.1], [-0.4, 1.0], [0.7, -0.8], [0.1, 0.2]])
    net = nn.Sequential(nn.Linear(2, 5), nn.LeakyReLU(0.1), nn.Linear(5, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(w0)
        net[0].bias.copy_(T([0.1, 2.0, -0.1, 0.05, -2.0]))
        net[2].weight.copy_(W1)
    rep = degeneracy_report(net.eval(), x, rtol=RTOL)
    (layer,) = rep.layers
    assert (
        layer.sync.always_on == (1,)
        and layer.sync.dead == (4,)
        and layer.sync.slope == pytest.approx(0.1)
    )
    assert (1, 4) in layer.blocks  # merged: s = rank(p1, p4, 1) = 3, t = 2
    assert layer.s[layer.blocks.index((1, 4))] == 3 and layer.t[layer.blocks.index((1, 4))] == 2
    assert rep.predicted == exact_nullity(net, x) == 9


def test_co_silent_weights():
    # layer-2 neuron 0 reads only neuron 1 (on for u < 0) and fires for u < -0.1, so it never
    # fires together with neuron 0 (on for u > 0): that weight is free
    x = square(400)
    w0, b0 = T([[1.0, 0.0], [-1.0, 0.0], [0.3, 1.0], [0.5, -1.0]]), T([0.0, 0.0, 0.2, 0.1])
    w1 = T([[0.0, 1.0, 0.0, 0.0], [0.6, -0.3, 1.0, 0.4], [-0.5, 0.8, -0.7, 1.0]])
    net = relu_mlp(
        [
            (w0, b0),
            (w1, T([-0.1, -0.3, 0.1])),
            (T([[0.7, -0.4, 1.2], [0.5, 1.1, -0.3]]), T([0.0, 0.1])),
        ]
    )
    rep = degeneracy_report(net, x, rtol=RTOL)
    assert [s.co_silent for s in rep.stages] == [0, 1, 0]
    assert rep.predicted == exact_nullity(net, x) == 8


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    d_in=st.integers(1, 3),
    d_hidden=st.integers(2, 6),
    d_out=st.integers(1, 3),
    leaky=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_hidden_layer_prediction_is_exact(d_in, d_hidden, d_out, leaky, seed):
    """Any one-hidden-layer (leaky) ReLU net whose gate regions are sampled and whose Hessian
    spectrum has a clear gap: predicted == measured (dead, always-on, synchronized included)."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(150, d_in, generator=g, dtype=torch.float64) - 1
    net = nn.Sequential(
        nn.Linear(d_in, d_hidden),
        nn.LeakyReLU(0.2) if leaky else nn.ReLU(),
        nn.Linear(d_hidden, d_out),
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    on = (net[0](x) >= 0).sum(0)
    few = torch.minimum(on, 150 - on)
    assume(bool(((few == 0) | (few >= 2 * (d_in + 1))).all()))  # no sparsely sampled region
    rep = degeneracy_report(net.eval(), x, rtol=RTOL)
    m = rep.measured
    assert m is not None
    assume(m.largest_zero < 1e-13 * float(m.eigenvalues[0]) < m.smallest_nonzero)  # clear gap
    assert rep.predicted == m.nullity


def test_task_loss_is_refused_with_an_explanation():
    x = rank_deficient_data(60)
    net = relu_mlp([(W0, B0), (W1, T([0.1, -0.2]))])
    with pytest.raises(DataError, match=r"task loss, not a behavioural loss.*L_B\(theta\)"):
        degeneracy_report(net, x, loss=F.cross_entropy)
    with pytest.raises(DataError, match="task loss"):
        behavioural_hessian_nullity(
            net, [(x, torch.zeros(60, dtype=torch.long))], loss=nn.CrossEntropyLoss()
        )
    with pytest.raises(DataError, match="callable"):
        behavioural_hessian_nullity(net, x, loss="mse")  # type: ignore[arg-type]
    # a behavioural loss is accepted and gives the same nullity
    assert behavioural_hessian_nullity(net, x, loss=nn.MSELoss()).nullity == 16


def test_ggn_lanczos_agrees_with_the_exact_hessian():
    x = rank_deficient_data(100)
    net = relu_mlp([(W0, B0), (W1, T([0.1, -0.2]))])
    exact = behavioural_hessian_nullity(net, x, method="exact")
    ggn = behavioural_hessian_nullity(net, x, method="ggn")
    assert ggn.complete and ggn.method == "ggn-lanczos" and exact.method == "exact"
    assert ggn.nullity == exact.nullity == 16
    torch.testing.assert_close(ggn.eigenvalues[:5], exact.eigenvalues[:5], rtol=1e-8, atol=0)


def test_too_few_samples_warn_with_the_numbers():
    net = relu_mlp([(W0, B0), (W1, T([0.1, -0.2]))])
    with pytest.warns(UserWarning, match=r"10 output values .* P = 32 .* at least 22 null"):
        behavioural_hessian_nullity(net, rank_deficient_data(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        degeneracy_report(net, rank_deficient_data(3), hessian=None)
    text = "\n".join(str(w.message) for w in caught)
    assert "'1': 3 samples (positions pooled) for pre-activations of width 5" in text
    assert "'0': 3 samples (positions pooled) for the activation Gram of width 4" in text


def test_stage_detection_and_its_errors():
    from experiments.models import MLP, MLPConfig

    mlp = MLP(MLPConfig(d_in=2, d_hidden=[4, 3], d_out=1, seed=0)).double().eval()
    stages = mlp_stages(mlp, square(8))  # registration order differs from call order
    assert [(s.input, s.output) for s in stages] == [
        ("layers.0", "acts.0"), ("layers.1", "acts.1"), ("layers.2", "output")
    ]  # fmt: skip
    assert stages[0].params == ("layers.0.weight", "layers.0.bias")
    tanh = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    with pytest.raises(DataError, match=r"module '1' \(Tanh\) is not ReLU-like"):
        degeneracy_report(tanh, square(20))
    tail = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1), nn.ReLU()).double()
    with pytest.raises(DataError, match="must end with a Linear"):
        mlp_stages(tail, square(8))
    net = relu_mlp([(W0, B0), (W1, T([0.1, -0.2]))])
    wrong = [
        Stage("0", "1", ("0.weight",), bias=True),
        Stage("2", "output", ("2.weight", "2.bias")),
    ]
    with pytest.raises(DataError, match=r"stage 0 .* have 15 entries, but input width 4"):
        degeneracy_report(net, rank_deficient_data(30), wrong, hessian=None)
    with pytest.raises(DataError, match="unknown parameter 'nope'"):
        degeneracy_report(net, rank_deficient_data(30), [Stage("0", "output", ("nope",))])


def test_transformer_mlp_block_against_the_restricted_hessian():
    from experiments.models import Transformer, TransformerConfig

    cfg = TransformerConfig(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=12, n_ctx=3, d_vocab=7, d_vocab_out=5,
        seed=0,
    )  # fmt: skip
    model = Transformer(cfg).double().eval()
    tokens = torch.randint(0, 7, (200, 3), generator=torch.Generator().manual_seed(0))
    rep = degeneracy_report(model, tokens, mlp_block_stages("blocks.0"), rtol=RTOL)
    assert not rep.whole_model and rep.n_params == 8 * 12 + 12 + 12 * 8 + 8
    # K of the residual stream -> 5 logits has rank <= 5: kappa = 8 - 5 = 3
    assert rep.stages[1].kappa == 3
    assert rep.measured is not None and rep.measured.nullity == rep.predicted == 65
    assert "a subset of the model's" in rep.table()


def test_table_shows_prediction_and_measurement():
    x = rank_deficient_data(100)
    text = str(degeneracy_report(relu_mlp([(W0, B0), (W1, T([0.1, -0.2]))]), x))
    assert "predicted nullity: 16" in text and "measured nullity:  16 (exact Hessian" in text
    assert "Σs·t" in text and "-G∩K" in text and "1e-09" in text
