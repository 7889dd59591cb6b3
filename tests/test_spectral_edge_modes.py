"""Groupings, discrete logs, Fourier measures and functional modes (closed forms, brute force,
invariances, finite differences)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from interbasis.errors import DataError, NodeLayerError, ShapeError
from interbasis.spectral_edge import (
    discrete_log_table,
    dlog_grid,
    fourier_concentration,
    fourier_split_2d,
    functional_mode,
    group_keys,
    group_means,
    is_prime,
    primitive_root,
    select_parameters,
    to_grid,
)

P = 13


def pairs(p: int, nonzero: bool = False) -> tuple[np.ndarray, np.ndarray]:
    lo = 1 if nonzero else 0
    a, b = np.meshgrid(np.arange(lo, p), np.arange(lo, p), indexing="ij")
    return a.ravel(), b.ravel()


# ----------------------------------------------------------------- number theory
def test_primitive_roots_known_values() -> None:
    # smallest primitive roots (OEIS A001918)
    assert [primitive_root(p) for p in (3, 5, 7, 11, 13, 17, 19, 23, 97)] == [
        2,
        2,
        3,
        2,
        2,
        3,
        2,
        5,
        5,
    ]


@pytest.mark.parametrize("p", [5, 13, 31, 97])
def test_discrete_log_table_inverts_powers(p: int) -> None:
    table = discrete_log_table(p)
    g = primitive_root(p)
    assert table[0] == -1
    assert sorted(table[1:].tolist()) == list(range(p - 1))
    assert all(pow(g, int(table[x]), p) == x for x in range(1, p))


def test_not_prime_is_an_error() -> None:
    assert not is_prime(91) and is_prime(97)
    with pytest.raises(DataError, match="p=91 is not prime"):
        primitive_root(91)
    a, b = pairs(9, nonzero=True)
    with pytest.raises(DataError, match="p=9 is not prime"):
        group_keys(a, b, 9, "dlog")
    with pytest.raises(DataError, match="p=9 is not prime"):
        discrete_log_table(9)
    with pytest.raises(DataError, match="p=9 is not prime"):
        dlog_grid(np.zeros((9, 9)), 9)
    group_keys(*pairs(9), 9, "sum")  # additive groupings need no prime


def test_zero_inputs_rejected_for_multiplicative_groupings() -> None:
    a, b = pairs(P)
    for grouping in ("prod", "dlog"):
        with pytest.raises(DataError, match="a, b != 0"):
            group_keys(a, b, P, grouping)
    with pytest.raises(DataError, match="grouping must be"):
        group_keys(a, b, P, "xor")  # type: ignore[arg-type]


def test_group_means_brute_force() -> None:
    rng = np.random.default_rng(0)
    a, b = pairs(P, nonzero=True)
    keep = rng.random(a.size) < 0.6
    a, b = a[keep], b[keep]
    values = rng.standard_normal((a.size, 3))
    for grouping in ("sum", "diff", "prod", "dlog"):
        keys, n = group_keys(a, b, P, grouping)
        means = group_means(values, keys, n)
        for q in range(n):
            np.testing.assert_allclose(means[q], values[keys == q].mean(axis=0), rtol=1e-12)
    with pytest.raises(DataError, match="have no pair"):
        group_means(values[:5], keys[:5], n)


# ----------------------------------------------------------------- concentration
@pytest.mark.parametrize("omega", [1, 4, 6])
def test_planted_sum_harmonic_has_F_one_and_pure_sum_split(omega: int) -> None:
    a, b = pairs(P)
    f = np.cos(2 * np.pi * omega * (a + b) / P) + 0.7
    keys, n = group_keys(a, b, P, "sum")
    conc = fourier_concentration(group_means(f, keys, n))
    assert conc.F == pytest.approx(1.0, abs=1e-12) and conc.peak == omega
    split = fourier_split_2d(to_grid(f, a, b, P))
    assert split.sum == pytest.approx(1.0, abs=1e-12)
    assert split.diff + split.single + split.other == pytest.approx(0.0, abs=1e-12)


def test_planted_dlog_function_is_one_peak_only_in_dlog_grouping() -> None:
    p, omega = 31, 3
    a, b = pairs(p, nonzero=True)
    table = discrete_log_table(p)
    f = np.cos(2 * np.pi * omega * (table[a] + table[b]) / (p - 1)) - 2.0
    dl = fourier_concentration(group_means(f, *group_keys(a, b, p, "dlog")))
    raw = fourier_concentration(group_means(f, *group_keys(a, b, p, "prod")))
    assert dl.F == pytest.approx(1.0, abs=1e-12) and dl.peak == omega
    assert raw.F < 0.6  # the same function is spread over many raw a·b frequencies
    # on the dlog-reindexed grid the 2-D split puts it all in the "sum" component
    full = np.zeros((p, p))
    full[a, b] = f
    split = fourier_split_2d(dlog_grid(full, p))
    assert split.sum == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("field", "component"),
    [
        (lambda a, b: np.sin(2 * np.pi * 2 * (a - b) / P), "diff"),
        (lambda a, b: np.cos(2 * np.pi * 5 * a / P) + np.sin(2 * np.pi * b / P), "single"),
        (lambda a, b: np.cos(2 * np.pi * 1 * a / P) * np.cos(2 * np.pi * 3 * b / P), "other"),
    ],
)
def test_2d_split_closed_forms(field, component: str) -> None:
    a, b = pairs(P)
    grid = to_grid(field(a, b), a, b, P)
    shares = fourier_split_2d(grid).as_dict()
    assert shares[component] == pytest.approx(1.0, abs=1e-12)
    # a vector field with this function in every channel splits the same way
    vec = fourier_split_2d(np.stack([grid, -3 * grid], axis=2)).as_dict()
    assert vec[component] == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    g=arrays(np.float64, (12,), elements=st.floats(-5, 5)),
    scale=st.floats(0.1, 10),
    offset=st.floats(-10, 10),
    shift=st.integers(0, 11),
)
def test_concentration_invariances(g: np.ndarray, scale: float, offset: float, shift: int) -> None:
    """F is a share of power: in [1/⌊n/2⌋, 1], blind to scale, offset and cyclic shifts."""
    base = fourier_concentration(g)
    if np.isnan(base.F) or np.ptp(g) < 1e-6:
        return
    assert 1 / 6 - 1e-12 <= base.F <= 1 + 1e-12
    assert base.power.sum() == pytest.approx(1.0)
    moved = fourier_concentration(scale * np.roll(g, shift) + offset)
    np.testing.assert_allclose(moved.power, base.power, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(f=arrays(np.float64, (7, 7), elements=st.floats(-5, 5)))
def test_split_sums_to_one_and_is_symmetric_in_a_b(f: np.ndarray) -> None:
    if np.ptp(f) < 1e-6:
        return
    split = fourier_split_2d(f)
    assert sum(split.as_dict().values()) == pytest.approx(1.0)
    swapped = fourier_split_2d(f.T)  # a <-> b keeps each component
    for key, value in split.as_dict().items():
        assert swapped.as_dict()[key] == pytest.approx(value, abs=1e-10)


def test_constant_and_bad_fields() -> None:
    assert np.isnan(fourier_concentration(np.full(10, 3.0)).F)
    with pytest.raises(DataError, match="constant"):
        fourier_split_2d(np.ones((5, 5)))
    with pytest.raises(ShapeError):
        fourier_split_2d(np.ones((5, 4)))
    a, b = pairs(5)
    with pytest.raises(DataError, match="full 5x5 grid"):
        to_grid(np.ones(a.size - 1), a[1:], b[1:], 5)


# ----------------------------------------------------------------- functional modes
class TinyTransformer(torch.nn.Module):
    """One attention block with TransformerLens-style names and an ln_final readout."""

    def __init__(self, p: int = 7, d: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(p, d)
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        attn = torch.nn.Module()
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            setattr(attn, name, torch.nn.Parameter(torch.randn(d, d) / d**0.5))
        self.blocks[0].attn = attn
        self.ln_final = torch.nn.LayerNorm(d)
        self.unembed = torch.nn.Linear(d, p)

    def resid(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        at = self.blocks[0].attn
        q, k, v = h @ at.W_Q, h @ at.W_K, h @ at.W_V
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return h + att @ v @ at.W_O  # (N, pos, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.ln_final(self.resid(x))[:, -1])


@pytest.fixture
def tiny() -> tuple[TinyTransformer, torch.Tensor]:
    torch.manual_seed(0)
    a, b = pairs(7)
    return TinyTransformer(), torch.from_numpy(np.stack([a, b], axis=1))


def test_delta_mode_matches_manual_perturbation(tiny) -> None:
    """Independent reference: perturb the parameters by hand and read the residual stream."""
    model, x = tiny
    layout = select_parameters(model)
    assert layout.names == tuple(f"blocks.0.attn.W_{c}" for c in "QKVO")
    v = torch.randn(layout.size, dtype=torch.float64)
    eps = 0.05
    delta = functional_mode(model, layout, v, x, kind="delta", epsilon=eps)
    ref = TinyTransformer().double()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        h0 = ref.resid(x)[:, -1]
        offset = 0
        for name in layout.names:
            prm = dict(ref.named_parameters())[name]
            prm += eps * (v / v.norm())[offset : offset + prm.numel()].reshape(prm.shape)
            offset += prm.numel()
        h1 = ref.resid(x)[:, -1]
    np.testing.assert_allclose(delta, h1 - h0, rtol=1e-10, atol=1e-12)
    sq = functional_mode(model, layout, v, x, kind="squared", epsilon=eps)
    np.testing.assert_allclose(sq, (delta**2).sum(1), rtol=1e-12)
    # parameters of the model are untouched
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_default_epsilon_is_relative_to_tracked_norm(tiny) -> None:
    model, x = tiny
    layout = select_parameters(model)
    v = torch.randn(layout.size)
    theta_norm = float(
        torch.cat(
            [p.detach().double().reshape(-1) for n, p in model.named_parameters() if "attn" in n]
        ).norm()
    )
    a = functional_mode(model, layout, v, x, kind="delta")
    b = functional_mode(model, layout, v, x, kind="delta", epsilon=0.005 * theta_norm)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_jvp_mode_equals_finite_difference_to_first_order(tiny) -> None:
    """‖Δh − εJv‖ / ‖εJv‖ = O(ε): halving ε halves the relative error."""
    model, x = tiny
    layout = select_parameters(model)
    v = torch.randn(layout.size, dtype=torch.float64)
    errs = []
    for eps in (1e-2, 5e-3, 2.5e-3):
        delta = functional_mode(model, layout, v, x, kind="delta", epsilon=eps)
        lin = functional_mode(model, layout, v, x, kind="jvp", epsilon=eps)
        errs.append(float((delta - lin).norm() / lin.norm()))
    assert errs[0] < 0.05
    for big, small in itertools.pairwise(errs):
        assert 1.8 < big / small < 2.2  # first order in ε


def test_batching_does_not_change_mode(tiny) -> None:
    model, x = tiny
    layout = select_parameters(model)
    v = torch.randn(layout.size)
    a = functional_mode(model, layout, v, x, batch_size=5)
    b = functional_mode(model, layout, v, x, batch_size=1000)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_mode_bad_input(tiny) -> None:
    model, x = tiny
    layout = select_parameters(model)
    with pytest.raises(ShapeError, match=f"length {layout.size}"):
        functional_mode(model, layout, torch.randn(layout.size + 1), x)
    with pytest.raises(DataError, match="non-zero"):
        functional_mode(model, layout, torch.zeros(layout.size), x)
    with pytest.raises(NodeLayerError, match="ln_nothing"):
        functional_mode(model, layout, torch.randn(layout.size), x, readout="ln_nothing")
    with pytest.raises(DataError, match="kind"):
        functional_mode(model, layout, torch.randn(layout.size), x, kind="cubed")  # type: ignore[arg-type]


def test_several_directions_equal_single_calls(tiny) -> None:
    model, x = tiny
    layout = select_parameters(model)
    v = torch.randn(3, layout.size)
    many = functional_mode(model, layout, v, x, kind="delta", batch_size=20)
    assert many.shape == (3, x.shape[0], 8)
    for i in range(3):
        one = functional_mode(model, layout, v[i], x, kind="delta")
        np.testing.assert_allclose(many[i], one, rtol=1e-12, atol=1e-15)
    with pytest.raises(DataError, match="non-zero"):
        functional_mode(model, layout, torch.stack([v[0], 0 * v[0]]), x)
