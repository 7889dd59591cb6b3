"""SpectralEdgeTracker and window spectra: planted subspaces, brute-force SVDs, AdamW split,
resume, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from interbasis.curvature import ParamLayout
from interbasis.errors import DataError, ShapeError
from interbasis.spectral_edge import (
    SpectralEdgeTracker,
    edge_energy_shares,
    flatten_params,
    select_parameters,
    unflatten,
    window_spectrum,
)


class FlatModel(torch.nn.Module):
    """One tracked parameter (named like an attention weight) and one untracked one."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.blocks[0].attn = torch.nn.Module()
        self.blocks[0].attn.W_Q = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
        self.other = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))


def feed(tracker: SpectralEdgeTracker, model: FlatModel, updates: np.ndarray, start: int = 0):
    """Apply one update per optimizer step (every = 1) and call the hooks."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t, u in enumerate(updates, start=start + 1):
        tracker.on_before_step(t, model, opt, ())
        with torch.no_grad():
            model.blocks[0].attn.W_Q += torch.as_tensor(u)
        tracker.on_step(t, model, opt, ())


def planted_stream(n: int, steps: int, seed: int, noise: float = 1e-3):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((n, 2)))[0].T  # (2, n) orthonormal
    coef = rng.standard_normal((steps, 2)) * np.array([3.0, 2.0])  # time-varying
    return coef @ basis + noise * rng.standard_normal((steps, n)), basis


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tracker_recovers_planted_subspace_and_k_star(seed: int) -> None:
    n, window = 300, 20
    updates, basis = planted_stream(n, 50, seed)
    model = FlatModel(n)
    tracker = SpectralEdgeTracker(every=1, window=window, center=True)
    tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    feed(tracker, model, updates)
    spec = tracker.spectrum()
    assert spec.k_star == 2
    angles = np.degrees(scipy.linalg.subspace_angles(spec.directions[:2].numpy().T, basis.T))
    assert angles.max() < 1.0
    hist = tracker.history
    assert hist["step"].tolist() == list(range(window, 51))  # one record per full window
    assert np.all(hist["k_star"] == 2)
    assert np.all(hist["edge_energy"] > 0.99)  # noise energy is ~1e-6 of the planted one


def test_window_holds_last_updates_in_order() -> None:
    n, window = 7, 4
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((11, n))
    model = FlatModel(n)
    tracker = SpectralEdgeTracker(every=1, window=window)
    tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    feed(tracker, model, updates)
    np.testing.assert_allclose(tracker.window_updates().numpy(), updates[-window:], atol=1e-12)


def test_snapshot_interval_sums_steps() -> None:
    """With every = 3 an update is the parameter change over 3 optimizer steps."""
    n = 5
    rng = np.random.default_rng(1)
    steps = rng.standard_normal((12, n))
    model = FlatModel(n)
    tracker = SpectralEdgeTracker(every=3, window=4)
    tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    feed(tracker, model, steps)
    expected = steps.reshape(4, 3, n).sum(axis=1)
    np.testing.assert_allclose(tracker.window_updates().numpy(), expected, atol=1e-12)
    assert tracker.history["step"].tolist() == [12]


@settings(max_examples=30, deadline=None)
@given(
    u=arrays(np.float64, (6, 9), elements=st.floats(-10, 10)),
    shift=arrays(np.float64, (9,), elements=st.floats(-10, 10)),
    center=st.booleans(),
)
def test_window_spectrum_matches_brute_force_gram(u: np.ndarray, shift: np.ndarray, center: bool):
    """σ² are the eigenvalues of the (centred) Gram U Uᵀ, and centring ignores shifts."""
    spec = window_spectrum(torch.from_numpy(u), center=center)
    uc = u - u.mean(axis=0) if center else u
    eig = np.sort(np.linalg.eigvalsh(uc @ uc.T))[::-1]
    scale = max(1.0, float(np.abs(u).max()) ** 2) * 1e-9  # float64 eigh vs svd round-off
    np.testing.assert_allclose(spec.sigma**2, np.clip(eig, 0, None), atol=scale * 10)
    v = spec.directions.numpy()
    for j in range(spec.rank):  # right singular vectors: Uᵀ U v = σ² v
        np.testing.assert_allclose(
            uc.T @ (uc @ v[j]), spec.sigma[j] ** 2 * v[j], atol=1e-6 * max(1, spec.sigma[0] ** 2)
        )
    if center:
        shifted = window_spectrum(torch.from_numpy(u + shift), center=True)
        np.testing.assert_allclose(shifted.sigma, spec.sigma, atol=1e-7 * max(1.0, spec.sigma[0]))


def test_window_spectrum_statistics_closed_form() -> None:
    """Diagonal window: σ known exactly, so gap ratios, k* and g_23 are too."""
    u = torch.zeros(4, 6, dtype=torch.float64)
    u[0, 0], u[1, 1], u[2, 2], u[3, 3] = 8.0, 4.0, 0.5, 0.25
    spec = window_spectrum(u, center=False)
    np.testing.assert_allclose(spec.sigma, [8, 4, 0.5, 0.25])
    np.testing.assert_allclose(spec.gap_ratios, [2, 8, 2])
    assert spec.k_star == 2
    assert spec.g23 == pytest.approx(16 - 0.25)
    assert spec.energy_fraction(2) == pytest.approx(80 / (80 + 0.3125))
    # centred window of m rows has rank m - 1: the round-off σ_m takes no part in k*
    centred = window_spectrum(u, center=True)
    assert centred.rank == 3 and centred.gap_ratios.size == 2


def test_edge_energy_shares_closed_form() -> None:
    rng = np.random.default_rng(0)
    n = 10
    a = np.outer(rng.standard_normal(8), np.eye(n)[0]) * 3.0  # part A along e_0
    b = np.outer(rng.standard_normal(8), np.eye(n)[1])  # part B along e_1
    parts = {"A": torch.from_numpy(a), "B": torch.from_numpy(b)}
    spec = window_spectrum(torch.from_numpy(a + b), center=True)
    shares = edge_energy_shares(spec, parts, k=2, center=True)
    ea = np.sum((a - a.mean(0)) ** 2)
    eb = np.sum((b - b.mean(0)) ** 2)
    assert shares["A"] == pytest.approx(ea / (ea + eb), rel=1e-10)
    assert shares["A"] + shares["B"] == pytest.approx(1.0)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.blocks[0].attn = torch.nn.Module()
        self.blocks[0].attn.W_Q = torch.nn.Parameter(torch.randn(4, 3))
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(x @ self.blocks[0].attn.W_Q))


def train(tracker, model, opt, steps, start=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, 16, 4, generator=gen)
    ys = torch.randint(0, 2, (steps, 16), generator=gen)
    thetas = []
    for t in range(start + 1, start + steps + 1):
        x, y = xs[t - start - 1], ys[t - start - 1]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        thetas.append(model.blocks[0].attn.W_Q.detach().clone())
        tracker.on_before_step(t, model, opt, (x, y))
        opt.step()
        tracker.on_step(t, model, opt, (x, y))
    return thetas


def test_adamw_split_first_step_closed_form() -> None:
    """Step 1 of AdamW: m̂ = g, v̂ = g², so the gradient part is −lr·g/(|g| + eps) and the
    weight-decay part is −lr·wd·θ_0. Float64 so that θ_1 − θ_0 carries no float32 rounding."""
    model = TinyNet().double()
    lr, wd, eps = 0.01, 0.5, 1e-8
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, eps=eps)
    tracker = SpectralEdgeTracker(every=1, window=2)
    tracker.on_train_begin(model, opt)
    theta0 = model.blocks[0].attn.W_Q.detach().clone().double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    g = model.blocks[0].attn.W_Q.grad.detach().clone().double()
    tracker.on_before_step(1, model, opt, (x, y))
    opt.step()
    tracker.on_step(1, model, opt, (x, y))
    parts = tracker.window_parts()
    np.testing.assert_allclose(
        parts["weight_decay"][0], (-lr * wd * theta0).reshape(-1), rtol=1e-12
    )
    expected = -lr * g / (g.abs() + eps)
    np.testing.assert_allclose(parts["gradient"][0], expected.reshape(-1), rtol=1e-10)


def test_adamw_split_accumulates_over_interval_and_adam_has_none() -> None:
    model = TinyNet()
    lr, wd = 0.01, 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    tracker = SpectralEdgeTracker(every=5, window=3)
    tracker.on_train_begin(model, opt)
    thetas = train(tracker, model, opt, 15)
    expected = [
        -lr * wd * torch.stack(thetas[i : i + 5]).double().sum(0).reshape(-1) for i in (0, 5, 10)
    ]
    np.testing.assert_allclose(
        tracker.window_parts()["weight_decay"], torch.stack(expected), rtol=1e-10
    )
    share = tracker.history["grad_share"]
    assert share.shape == (1,) and 0.0 <= share[0] <= 1.0

    model2 = TinyNet()
    opt2 = torch.optim.Adam(model2.parameters(), lr=lr, weight_decay=wd)  # coupled L2
    tracker2 = SpectralEdgeTracker(every=5, window=3)
    tracker2.on_train_begin(model2, opt2)
    train(tracker2, model2, opt2, 15)
    assert torch.count_nonzero(tracker2.window_parts()["weight_decay"]) == 0
    assert tracker2.history["grad_share"][0] == pytest.approx(1.0)


def test_min_updates_starts_history_early() -> None:
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1.0)
    tracker = SpectralEdgeTracker(every=2, window=5, min_updates=3)
    tracker.on_train_begin(model, opt)
    train(tracker, model, opt, 14)
    hist = tracker.history
    assert hist["step"].tolist() == [6, 8, 10, 12, 14]
    assert np.all(np.isfinite(hist["grad_share"]))
    # a centred window of m updates has rank m - 1: σ beyond it are NaN, not round-off
    assert np.all(np.isfinite(hist["sigma"][0, :2])) and np.all(np.isnan(hist["sigma"][0, 2:]))
    assert np.all(np.isfinite(hist["sigma"][-1, :4])) and np.isnan(hist["sigma"][-1, 4])
    with pytest.raises(DataError, match="min_updates"):
        SpectralEdgeTracker(window=5, min_updates=6)


def test_missing_before_step_marks_split_unknown() -> None:
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1.0)
    tracker = SpectralEdgeTracker(every=1, window=3)
    tracker.on_train_begin(model, opt)
    for t in range(1, 4):
        opt.step()
        tracker.on_step(t, model, opt, ())
    assert np.isnan(tracker.history["grad_share"]).all()


def test_resume_gives_identical_history() -> None:
    torch.manual_seed(0)
    init = TinyNet().state_dict()

    def make():
        model = TinyNet()
        model.load_state_dict(init)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1.0)
        return model, opt

    model, opt = make()
    full = SpectralEdgeTracker(every=2, window=3)
    full.on_train_begin(model, opt)
    train(full, model, opt, 10, seed=0)
    train(full, model, opt, 11, start=10, seed=1)  # odd interval: partial wd sum in state

    model, opt = make()
    first = SpectralEdgeTracker(every=2, window=3)
    first.on_train_begin(model, opt)
    train(first, model, opt, 10, seed=0)
    buf = io.BytesIO()
    torch.save(
        {"tracker": first.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model, opt = make()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    resumed = SpectralEdgeTracker(every=2, window=3)
    resumed.load_state_dict(ckpt["tracker"])
    resumed.on_train_begin(model, opt)
    train(resumed, model, opt, 11, start=10, seed=1)

    for key, value in full.history.items():
        np.testing.assert_allclose(resumed.history[key], value, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(resumed.window_updates(), full.window_updates(), rtol=1e-12)


def test_grokking_step_and_spectrum_recorded() -> None:
    n = 30
    updates, _ = planted_stream(n, 6, 0)
    model = FlatModel(n)
    tracker = SpectralEdgeTracker(every=1, window=4, n_record=4)
    tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    feed(tracker, model, updates[:5])
    tracker.on_eval(5, model, {"test_acc": 0.5})
    assert tracker.grok_step is None
    tracker.on_eval(6, model, {"test_acc": 0.97})
    tracker.on_eval(7, model, {"test_acc": 0.99})
    assert tracker.grok_step == 6
    assert tracker.grok_spectrum is not None
    assert tracker.grok_spectrum.directions.shape == (4, n)
    np.testing.assert_array_equal(tracker.history["eval_step"], [5, 6, 7])


# --------------------------------------------------------------------- bad input
def test_bad_window_and_config() -> None:
    with pytest.raises(DataError, match="window must be >= 2"):
        SpectralEdgeTracker(window=1)
    with pytest.raises(DataError, match="every"):
        SpectralEdgeTracker(every=0)
    with pytest.raises(DataError, match="at least 2 updates"):
        window_spectrum(torch.zeros(1, 5))


def test_filter_selecting_nothing() -> None:
    model = torch.nn.Linear(3, 2)
    with pytest.raises(DataError, match="selected no parameters"):
        select_parameters(model)
    tracker = SpectralEdgeTracker(params=r"W_nothing")
    with pytest.raises(DataError, match="selected no parameters"):
        tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(DataError, match="not parameters"):
        select_parameters(model, ["weight", "bogus"])
    assert select_parameters(model, lambda n, p: n == "bias").names == ("bias",)


def test_layout_is_the_curvature_layout_and_round_trips() -> None:
    """select_parameters builds the curvature package's ParamLayout (one flat order)."""
    model = TinyNet()
    layout = select_parameters(model, ["head.bias", "blocks.0.attn.W_Q"])
    assert isinstance(layout, ParamLayout)
    assert layout.names == ("blocks.0.attn.W_Q", "head.bias")  # named_parameters() order
    assert layout == ParamLayout.from_model(model, ["blocks.0.attn.W_Q", "head.bias"])
    theta = flatten_params(model, layout)
    assert theta.dtype == torch.float64 and theta.shape == (12 + 2,)
    np.testing.assert_array_equal(theta[:12], model.blocks[0].attn.W_Q.detach().reshape(-1))
    parts = unflatten(theta, layout)
    assert torch.equal(parts["head.bias"], model.head.bias.detach().double())
    with pytest.raises(ShapeError, match="length 14"):
        unflatten(theta[:-1], layout)


def test_parameter_changing_shape_is_an_error() -> None:
    model = FlatModel(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = SpectralEdgeTracker(every=1, window=2)
    tracker.on_train_begin(model, opt)
    model.blocks[0].attn.W_Q = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"blocks.0.attn.W_Q.*changed shape.*\(5,\).*\(6,\)"):
        tracker.on_step(1, model, opt, ())
    # and on resume into a model of another shape
    state = SpectralEdgeTracker(every=1, window=2)
    state.on_train_begin(FlatModel(5), opt)
    resumed = SpectralEdgeTracker(every=1, window=2)
    resumed.load_state_dict(state.state_dict())
    with pytest.raises(ShapeError, match="changed shape"):
        resumed.on_train_begin(model, opt)
    with pytest.raises(DataError, match="saved with"):
        SpectralEdgeTracker(every=3, window=2).load_state_dict(state.state_dict())
