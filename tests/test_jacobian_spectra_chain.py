"""Layer Jacobians D_l W_l and their products equal torch.func.jacrev (issue 11, test 3)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from interbasis.errors import DataError, NodeLayerError, ShapeError
from interbasis.jacobian_spectra import (
    FixedGatesMLP,
    NotPiecewiseLinearError,
    jacobian_product,
    layer_jacobians,
)

F64 = torch.float64
RTOL = 1e-10  # issue 11: products and jacrev are both float64 matmul chains


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def mlp(widths: list[int], act: nn.Module, bias: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        mods.append(nn.Linear(a, b, bias=bias, dtype=F64))
        if k < len(widths) - 2:
            mods.append(act)
    return nn.Sequential(*mods)


def jacrev_batched(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.func.vmap(torch.func.jacrev(fn))(x)


class LayersActsMLP(nn.Module):
    """The layout of experiments.models.MLP: layers.{k} and acts.{k}."""

    def __init__(self, widths: list[int], slope: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b, dtype=F64) for a, b in itertools.pairwise(widths)
        )
        self.acts = nn.ModuleList(nn.LeakyReLU(slope) for _ in widths[1:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.acts):
                x = self.acts[k](x)
        return x


class TLBlock(nn.Module):
    """TransformerLens MLP layout: act(x @ W_in + b_in) @ W_out + b_out."""

    def __init__(self, d_model: int, d_mlp: int, act_fn: str = "relu") -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp, dtype=F64) / d_model**0.5)
        self.b_in = nn.Parameter(torch.randn(d_mlp, dtype=F64) * 0.1)
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model, dtype=F64) / d_mlp**0.5)
        self.b_out = nn.Parameter(torch.randn(d_model, dtype=F64) * 0.1)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1)])
def test_full_product_equals_jacrev(act: nn.Module) -> None:
    model = mlp([5, 7, 6, 7, 3], act)
    x = torch.randn(11, 5, dtype=F64)
    jac = layer_jacobians(model, x)
    torch.testing.assert_close(jac.product(), jacrev_batched(model, x), rtol=RTOL, atol=0)
    torch.testing.assert_close(jac.output, model(x), rtol=RTOL, atol=1e-14)
    assert jac.widths == [5, 7, 6, 7, 3]
    assert jac.names == ["0", "2", "4", "6"]


def test_partial_products_equal_jacrev_of_subnetworks() -> None:
    model = mlp([4, 6, 5, 6, 3], nn.ReLU())
    x = torch.randn(9, 4, dtype=F64)
    jac = layer_jacobians(model, x)
    h1 = model[:2](x)  # activation 1 = input of model[2]
    j_12 = jacrev_batched(model[2:4], h1)  # layer 1 -> layer 2
    torch.testing.assert_close(jac.product(1, 2), j_12, rtol=RTOL, atol=0)
    j_1l = jacrev_batched(model[2:], h1)
    torch.testing.assert_close(jac.product(1, 4), j_1l, rtol=RTOL, atol=0)
    prefix, suffix = jac.prefix_products(), jac.suffix_products()
    for cut in range(jac.depth + 1):
        torch.testing.assert_close(prefix[cut], jac.product(0, cut), rtol=RTOL, atol=0)
        torch.testing.assert_close(suffix[cut], jac.product(cut, 4), rtol=RTOL, atol=0)
    assert torch.equal(prefix[0][0], torch.eye(4, dtype=F64))


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=6),
    slope=st.sampled_from([0.0, 0.01, 0.3, -0.5]),
    seed=st.integers(0, 10_000),
)
def test_product_equals_jacrev_property(widths: list[int], slope: float, seed: int) -> None:
    model = mlp(widths, nn.LeakyReLU(slope) if slope else nn.ReLU(), seed=seed)
    x = torch.randn(3, widths[0], dtype=F64, generator=torch.Generator().manual_seed(seed))
    jac = layer_jacobians(model, x)
    torch.testing.assert_close(jac.product(), jacrev_batched(model, x), rtol=RTOL, atol=1e-15)


def test_layers_acts_mlp_and_positions_pooled() -> None:
    model = LayersActsMLP([4, 8, 8, 2], slope=0.2)
    x = torch.randn(3, 5, 4, dtype=F64)  # (batch, pos, d): positions pooled as samples
    jac = layer_jacobians(model, x)
    assert jac.names == ["layers.0", "layers.1", "layers.2"]
    assert jac.factors[0].shape == (15, 8, 4)
    ref = jacrev_batched(model, x.reshape(-1, 4))
    torch.testing.assert_close(jac.product(), ref, rtol=RTOL, atol=0)
    assert jac.index("layers.1") == 1 and jac.index("output") == 3


def test_transformerlens_mlp_block() -> None:
    block = TLBlock(6, 10)
    x = torch.randn(4, 3, 6, dtype=F64)
    jac = layer_jacobians(block, x)
    assert [f.shape for f in jac.factors] == [(12, 10, 6), (12, 6, 10)]
    ref = jacrev_batched(block, x.reshape(-1, 6))
    torch.testing.assert_close(jac.product(), ref, rtol=RTOL, atol=0)


def test_experiments_models_mlp_and_transformer_block() -> None:
    """The project's own models (float32): MLP layers/acts and the TransformerLens MLP block."""
    from experiments.models import MLP, MLPConfig, Transformer, TransformerConfig

    cfg = MLPConfig(3, [8, 8], 2, "leaky_relu", seed=0)
    model, model64 = MLP(cfg), MLP(cfg).double()
    x = torch.randn(5, 3)
    jac = layer_jacobians(model, x)
    ref = jacrev_batched(lambda v: model64(v[None])[0], x.double())  # type: ignore[arg-type]
    torch.testing.assert_close(jac.product(), ref, rtol=RTOL, atol=0)
    tcfg = TransformerConfig(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=3, d_vocab=5, seed=0
    )
    transformer = Transformer(tcfg)
    block = transformer.blocks[0].mlp
    x = torch.randn(4, 3, 8)
    jac = layer_jacobians(block, x)
    ref = jacrev_batched(block.double(), x.double().reshape(-1, 8))
    torch.testing.assert_close(jac.product(), ref, rtol=RTOL, atol=0)
    with pytest.raises(NotPiecewiseLinearError, match="blocks"):
        layer_jacobians(transformer, torch.zeros(2, 3))
    with pytest.raises(NotPiecewiseLinearError, match=r"acts\.0 is GELU"):
        layer_jacobians(MLP(MLPConfig(3, [4], 1, "gelu")), torch.zeros(2, 3))


def test_kink_convention_matches_autograd() -> None:
    """At z == 0 the gate is the negative slope (0 for ReLU), as torch's autograd uses."""
    for act, slope in ((nn.ReLU(), 0.0), (nn.LeakyReLU(0.25), 0.25)):
        model = mlp([3, 5, 4], act, bias=False)
        x = torch.zeros(2, 3, dtype=F64)  # every pre-activation sits exactly at the kink
        jac = layer_jacobians(model, x)
        assert jac.n_kinks == [10, 0]
        assert torch.all(jac.gates[0] == slope)
        torch.testing.assert_close(jac.product(), jacrev_batched(model, x), rtol=0, atol=0)


def test_fixed_gates_from_model_matches_model_on_region() -> None:
    model = mlp([4, 9, 9, 3], nn.ReLU())
    x0 = torch.randn(4, dtype=F64)
    fixed = FixedGatesMLP.from_model(model, x0)
    torch.testing.assert_close(fixed(x0[None]), model(x0[None]), rtol=RTOL, atol=1e-14)
    x = torch.randn(6, 4, dtype=F64)
    jac = layer_jacobians(fixed, x)  # same Jacobian for every input: the region of x0
    ref = layer_jacobians(model, x0[None]).product()
    torch.testing.assert_close(jac.product(), ref.expand(6, 3, 4), rtol=RTOL, atol=0)
    torch.testing.assert_close(jac.product(), jacrev_batched(fixed, x), rtol=RTOL, atol=0)


def test_random_fixed_gates_masks() -> None:
    gen = torch.Generator().manual_seed(3)
    net = FixedGatesMLP.random([200, 200, 200, 5], keep_prob=0.25, generator=gen)
    masks = net.masks
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    assert torch.all(masks[-1] == 1)
    kept = torch.cat(masks[:-1]).mean().item()
    assert abs(kept - 0.25) < 4 * (0.25 * 0.75 / 400) ** 0.5  # binomial s.e. of 400 draws
    w_var = net.weights[0].var().item() * 200  # N(0, (1/p)/n): n·var = 4 ± s.e. 4·(2/4e4)^.5
    assert abs(w_var - 4.0) < 4 * 4.0 * (2 / 40_000) ** 0.5


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.GELU(), nn.Tanh(), nn.Sigmoid()])
def test_smooth_activation_is_rejected(act: nn.Module) -> None:
    with pytest.raises(NotPiecewiseLinearError, match=type(act).__name__):
        layer_jacobians(mlp([3, 4, 2], act), torch.randn(2, 3, dtype=F64))


def test_transformer_block_with_gelu_is_rejected() -> None:
    with pytest.raises(NotPiecewiseLinearError, match="gelu"):
        layer_jacobians(TLBlock(4, 6, act_fn="gelu"), torch.randn(2, 4, dtype=F64))


@pytest.mark.parametrize("model", [nn.Sequential(), nn.Sequential(nn.ReLU())])
def test_depth_zero_is_rejected(model: nn.Module) -> None:
    with pytest.raises(NotPiecewiseLinearError):
        layer_jacobians(model, torch.randn(2, 3, dtype=F64))
    with pytest.raises(DataError, match="depth 0"):
        FixedGatesMLP([], None, [])


def test_forward_that_is_not_the_chain_is_rejected() -> None:
    class Residual(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    model = Residual(nn.Linear(3, 3, dtype=F64), nn.ReLU(), nn.Linear(3, 3, dtype=F64))
    with pytest.raises(NotPiecewiseLinearError, match="does not match"):
        layer_jacobians(model, torch.randn(4, 3, dtype=F64))


def test_unsupported_module_and_layout() -> None:
    with pytest.raises(NotPiecewiseLinearError, match="Conv1d"):
        layer_jacobians(nn.Conv1d(1, 1, 1), torch.randn(2, 1, dtype=F64))
    with pytest.raises(NotPiecewiseLinearError, match="directly follow"):
        layer_jacobians(nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), torch.randn(2, 2))


def test_bad_inputs() -> None:
    model = mlp([3, 4, 2], nn.ReLU())
    with pytest.raises(ShapeError, match="'0' expects a last dimension of 3"):
        layer_jacobians(model, torch.randn(2, 5, dtype=F64))
    with pytest.raises(DataError, match="NaN"):
        layer_jacobians(model, torch.full((2, 3), float("nan"), dtype=F64))
    with pytest.raises(DataError, match="floating"):
        layer_jacobians(model, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(DataError):
        layer_jacobians(model, torch.randn(3, dtype=F64))  # no batch dimension
    factors = layer_jacobians(model, torch.randn(2, 3, dtype=F64)).factors
    with pytest.raises(NodeLayerError, match="a=2, b=1"):
        jacobian_product(factors, 2, 1)
    with pytest.raises(NodeLayerError):
        jacobian_product(factors, 0, 3)
    with pytest.raises(ShapeError, match="do not chain"):
        jacobian_product([torch.ones(2, 3), torch.ones(2, 4)])
