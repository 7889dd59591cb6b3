"""Tests for interbasis.richness: CKA, D_LR, the spectral view, baselines, the tracker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from interbasis.errors import DataError, NodeLayerError, NonFiniteError, RankError, ShapeError
from interbasis.richness import (
    RichnessTracker,
    cka,
    class_covariances,
    collect_features,
    cumulative_projection,
    d_lr,
    effective_dimension,
    feature_spectrum,
    feature_view,
    nc1,
    parameter_norm_sq,
    within_class_trace,
)

# Brute-force twins: n×n kernels, written from seed 001 eq. 7 with numpy only.


def _centre(k: np.ndarray) -> np.ndarray:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return h @ k @ h


def _cka_brute(ka: np.ndarray, kb: np.ndarray) -> float:
    ca, cb = _centre(ka), _centre(kb)
    return float(np.trace(ca @ cb) / (np.linalg.norm(ca) * np.linalg.norm(cb)))


def _projector(f: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto span(columns of f, constant), from the pseudo-inverse."""
    a = np.hstack([f, np.ones((f.shape[0], 1))])
    return a @ np.linalg.pinv(a)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- CKA


def test_cka_identical_is_one_in_both_forms() -> None:
    x = _rng().normal(size=(40, 6))
    assert cka(x, x) == pytest.approx(1.0, abs=1e-13)
    assert cka(x @ x.T, x @ x.T, form="kernel") == pytest.approx(1.0, abs=1e-13)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 30),
    p=st.integers(1, 8),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-100, 100),
)
def test_cka_invariant_to_orthogonal_scaling_and_shift(
    seed: int, n: int, p: int, scale: float, shift: float
) -> None:
    rng = _rng(seed)
    x = rng.normal(size=(n, p))
    y = rng.normal(size=(n, 3))
    q = ortho_group.rvs(p, random_state=seed) if p > 1 else np.array([[-1.0]])
    transformed = scale * x @ q + shift
    # rtol 1e-8: scaling by up to 1e3 and shifting by 100 costs ~1e-12 in round-off.
    assert cka(transformed, x) == pytest.approx(1.0, rel=1e-8)
    assert cka(transformed, y) == pytest.approx(cka(x, y), rel=1e-8)
    assert cka(x, y) == pytest.approx(cka(y, x), rel=1e-12)
    assert 0.0 <= cka(x, y) <= 1.0


def test_cka_features_equals_kernel_form_and_brute_force() -> None:
    rng = _rng(1)
    x, y = rng.normal(size=(50, 7)) + 2.0, rng.normal(size=(50, 4))
    brute = _cka_brute(x @ x.T, y @ y.T)
    assert cka(x, y) == pytest.approx(brute, rel=1e-10)
    assert cka(x @ x.T, y @ y.T, form="kernel") == pytest.approx(brute, rel=1e-10)


def test_cka_of_single_features_is_squared_correlation() -> None:
    # closed form: for p = q = 1 the linear CKA is the squared Pearson correlation
    rng = _rng(2)
    x = rng.normal(size=200)
    y = x**2 + 0.5 * x + rng.normal(size=200)
    assert cka(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-10)


def test_cka_accepts_torch_float32() -> None:
    x = torch.randn(30, 5)
    assert cka(x, x.double() * 3) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- D_LR


@pytest.mark.parametrize("n,p,c", [(60, 10, 5), (30, 40, 7), (200, 3, 12)])
def test_d_lr_equals_brute_force(n: int, p: int, c: int) -> None:
    rng = _rng(n)
    phi, f = rng.normal(size=(n, p)) + 1.0, rng.normal(size=(n, c))
    gram = 1 - _cka_brute(phi @ phi.T, f @ f.T)
    proj = 1 - _cka_brute(phi @ phi.T, _projector(f))
    assert d_lr(phi, f) == pytest.approx(gram, rel=1e-10)
    assert d_lr(phi, f, mode="projection") == pytest.approx(proj, rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(1, 6), scale=st.floats(1e-2, 1e2))
def test_d_lr_gram_zero_for_rotated_scaled_outputs(seed: int, c: int, scale: float) -> None:
    rng = _rng(seed)
    f = rng.normal(size=(40, c))
    q = ortho_group.rvs(c, random_state=seed) if c > 1 else np.array([[1.0]])
    assert d_lr(scale * f @ q, f) == pytest.approx(0.0, abs=1e-12)


def test_d_lr_gram_invariant_to_constant_shift() -> None:
    rng = _rng(3)
    phi, f = rng.normal(size=(80, 9)), rng.normal(size=(80, 4))
    shift = rng.normal(size=(1, 9)) * 50
    assert d_lr(phi + shift, f) == pytest.approx(d_lr(phi, f), rel=1e-9)
    assert d_lr(phi, f) > 0.1  # unrelated features are far from T_MP


def _span_basis(f: np.ndarray) -> np.ndarray:
    """Orthonormal basis of span(centred f), independent of the library (numpy QR)."""
    q, _ = np.linalg.qr(f - f.mean(axis=0))
    return q


def test_d_lr_projection_zero_for_isotropic_basis_of_span() -> None:
    rng = _rng(4)
    f = rng.normal(size=(100, 5))
    q = _span_basis(f)
    rotation = ortho_group.rvs(5, random_state=4)
    phi = np.hstack([3.0 * q @ rotation, np.full((100, 1), 7.0)])  # + the constant
    assert d_lr(phi, f, mode="projection") == pytest.approx(0.0, abs=1e-12)
    assert d_lr(phi, f, mode="gram") > 0.01  # f itself is not isotropic


def test_d_lr_projection_positive_for_anisotropic_span_closed_form() -> None:
    rng = _rng(5)
    f = rng.normal(size=(100, 4))
    d = np.array([4.0, 2.0, 1.0, 0.5])
    phi = _span_basis(f) * d
    # CKA(Q diag(d) diag(d) Q^T, Q Q^T) = sum d² / (sqrt(sum d⁴) sqrt(r))
    expected = 1 - np.sum(d**2) / (np.sqrt(np.sum(d**4)) * np.sqrt(4))
    assert d_lr(phi, f, mode="projection") == pytest.approx(expected, rel=1e-10)
    assert expected > 0.1


def test_gram_and_projection_agree_for_isotropic_outputs_only() -> None:
    rng = _rng(6)
    q = _span_basis(rng.normal(size=(90, 6)))
    phi = rng.normal(size=(90, 12))
    iso = 2.5 * q @ ortho_group.rvs(6, random_state=6) + 1.0
    assert d_lr(phi, iso) == pytest.approx(d_lr(phi, iso, mode="projection"), rel=1e-10)
    aniso = q * np.array([5.0, 3, 1, 1, 0.5, 0.1])
    assert abs(d_lr(phi, aniso) - d_lr(phi, aniso, mode="projection")) > 1e-3


# ---------------------------------------------------------------- spectral view


def test_feature_spectrum_matches_eigh_and_eigenfunctions_are_orthonormal() -> None:
    rng = _rng(7)
    phi = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 2.0
    spec = feature_spectrum(phi)
    brute = np.sort(np.linalg.eigvalsh(phi.T @ phi / 300))[::-1]
    np.testing.assert_allclose(spec.rho.numpy(), brute, rtol=1e-10)
    e = spec.eigenfunctions(phi).numpy()
    np.testing.assert_allclose(e.T @ e / 300, np.eye(8), atol=1e-10)


def _pi_brute(e: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Π(k) without QR: project span(f) onto span(first k columns of e) by pseudo-inverse."""
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    h = u[:, s > s[0] * 1e-12]
    out = []
    for k in range(1, e.shape[1] + 1):
        ek = e[:, :k]
        out.append(np.sum((ek @ np.linalg.pinv(ek) @ h) ** 2) / h.shape[1])
    return np.array(out)


def test_cumulative_projection_equals_brute_force() -> None:
    rng = _rng(8)
    e, f = rng.normal(size=(60, 10)), rng.normal(size=(60, 3))
    np.testing.assert_allclose(cumulative_projection(e, f).numpy(), _pi_brute(e, f), rtol=1e-9)


def test_cumulative_projection_closed_form_on_indicator_basis() -> None:
    e = np.eye(5)  # e_k = indicator of sample k
    np.testing.assert_allclose(cumulative_projection(e, e[:, 1]).numpy(), [0, 1, 1, 1, 1])
    two = e[:, [0, 3]]
    np.testing.assert_allclose(cumulative_projection(e, two).numpy(), [0.5, 0.5, 0.5, 1, 1])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.integers(2, 12), c=st.integers(1, 4))
def test_pi_monotone_in_unit_interval_and_one_at_full_rank(seed: int, p: int, c: int) -> None:
    rng = _rng(seed)
    train, test = rng.normal(size=(50, p)), rng.normal(size=(30, p))
    spec = feature_spectrum(train)
    e = spec.eigenfunctions(test)
    targets = rng.normal(size=(30, c))  # generic: not in span(e)
    outputs = test @ rng.normal(size=(p, c))  # learned outputs lie in the feature span
    for curve in (cumulative_projection(e, targets), cumulative_projection(e, outputs)):
        diffs = np.diff(curve.numpy())
        assert np.all(diffs >= -1e-12) and curve[0] >= 0 and curve[-1] <= 1 + 1e-12
    assert float(cumulative_projection(e, outputs)[-1]) == pytest.approx(1.0, abs=1e-10)
    wide = rng.normal(size=(30, 30))  # k = m held-out samples: finite-size effect (J.3.2)
    assert float(cumulative_projection(wide, targets)[-1]) == pytest.approx(1.0, abs=1e-10)


def test_qr_keeps_pi_bounded_for_duplicate_eigenfunctions() -> None:
    rng = _rng(9)
    e = rng.normal(size=(40, 3))
    e = np.hstack([e, e[:, :1]])  # a repeated (non-orthogonal) column adds nothing
    f = e[:, :1]
    curve = cumulative_projection(e, f).numpy()
    np.testing.assert_allclose(curve, [1, 1, 1, 1], atol=1e-12)


def test_duplicate_eigenfunction_in_the_middle_keeps_the_span() -> None:
    """e = [e1, e2, e1, e3], f = e3: Π reaches 1 at k = 4 (f is in the span), and the
    duplicate adds nothing at k = 3."""
    rng = _rng(11)
    e = rng.normal(size=(50, 3))
    e = np.hstack([e[:, :2], e[:, :1], e[:, 2:]])
    f = e[:, 3:]
    curve = cumulative_projection(e, f).numpy()
    brute = [
        np.linalg.norm(_proj(e[:, :k]) @ f) ** 2 / np.linalg.norm(f) ** 2 for k in (1, 2, 3, 4)
    ]
    np.testing.assert_allclose(curve, brute, atol=1e-12)
    assert curve[2] == pytest.approx(curve[1], abs=1e-12)
    assert curve[3] == pytest.approx(1.0, abs=1e-12)


def _proj(a: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto the column span of ``a`` (via lstsq-free pinv)."""
    return a @ np.linalg.pinv(a)


def test_feature_view_one_hot_rich_features() -> None:
    rng = _rng(10)
    labels = rng.integers(0, 4, size=400)
    onehot = np.eye(4)[labels]
    phi = onehot @ rng.normal(size=(4, 16)) + 1e-6 * rng.normal(size=(400, 16))
    view = feature_view(phi[:300], phi[300:], onehot[300:], onehot[300:])
    assert float(view.pi_star[3]) == pytest.approx(1.0, abs=1e-6)  # 4 features suffice
    assert view.d_eff < 4.5  # 1 + at most 3 significant non-constant directions
    assert view.rho.shape == (16,)


def test_effective_dimension_closed_forms() -> None:
    assert effective_dimension([1, 1, 1, 1], skip_first=False) == pytest.approx(4.0)
    assert effective_dimension([100.0, 2, 2, 2, 0, 0]) == pytest.approx(4.0)
    assert effective_dimension([5.0, 1, 1e-30]) == pytest.approx(2.0, abs=1e-12)
    assert effective_dimension([7.0]) == 1.0
    assert 2.0 < effective_dimension([9.0, 3, 2, 1]) < 4.0


# ---------------------------------------------------------------- baselines


def test_class_covariances_and_nc1_match_brute_force() -> None:
    rng = _rng(11)
    labels = np.repeat(np.arange(4), [5, 8, 6, 11])
    phi = rng.normal(size=(30, 6)) + labels[:, None] * 2.0
    sigma_w, sigma_b = class_covariances(phi, labels)
    means = np.stack([phi[labels == c].mean(0) for c in range(4)])
    sw = sum(np.cov(phi[labels == c].T, bias=True) for c in range(4))
    db = means - means.mean(0)
    sb = db.T @ db / 4
    np.testing.assert_allclose(sigma_w.numpy(), sw, rtol=1e-10)
    np.testing.assert_allclose(sigma_b.numpy(), sb, rtol=1e-10)
    expected = np.trace(np.linalg.pinv(sb + 1e-4 * np.eye(6)) @ sw)
    assert nc1(phi, labels) == pytest.approx(expected, rel=1e-8)
    assert within_class_trace(phi, np.eye(4)[labels]) == pytest.approx(np.trace(sw), rel=1e-12)


def test_within_class_closed_form_and_collapse() -> None:
    phi = np.array([[0.0], [2.0], [10.0], [14.0]])
    assert within_class_trace(phi, [0, 0, 1, 1]) == pytest.approx(1.0 + 4.0)
    collapsed = np.array([[1.0, 0], [1, 0], [0, 3], [0, 3]])
    assert nc1(collapsed, [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)


def test_parameter_norm_sq() -> None:
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.copy_(torch.tensor([1.0, -3.0]))
    assert parameter_norm_sq(lin) == pytest.approx(6 * 4 + 1 + 9)


# ---------------------------------------------------------------- tracker


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh())
        self.head = torch.nn.Linear(16, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _train(model: _Net, tracker: RichnessTracker, steps: range, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.nn.functional.one_hot(x[:, 0].gt(0).long() + x[:, 1].gt(0).long(), 3).double()
    for step in steps:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        tracker.on_step(step, model, opt, (x, y))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    return x, x[:, 0].gt(0).long()


def test_tracker_records_d_lr_and_baselines_at_chosen_steps() -> None:
    model = _Net().double()
    x, labels = _data()
    tracker = RichnessTracker({"test": (x, labels)}, feature_module="head", every=5, steps=[2])
    tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    _train(model, tracker, range(1, 11), x)
    assert [r["step"] for r in tracker.history] == [0, 2, 5, 10]
    assert tracker.history[0]["test/s_init"] == pytest.approx(1.0, abs=1e-12)
    phi = model.body(x).detach()
    assert tracker.history[-1]["test/d_lr"] == pytest.approx(d_lr(phi, model.head(phi).detach()))
    assert tracker.history[-1]["test/nc1"] == pytest.approx(nc1(phi, labels))
    assert tracker.history[-1]["param_norm_sq"] == pytest.approx(parameter_norm_sq(model))
    assert set(tracker.history[-1]) >= {"test/d_lr_projection", "test/tr_sigma_w"}


def test_tracker_resume_reproduces_history() -> None:
    x, labels = _data()
    torch.manual_seed(1)
    full_model = _Net().double()
    start = {k: v.clone() for k, v in full_model.state_dict().items()}

    def make() -> RichnessTracker:
        return RichnessTracker({"t": (x, labels)}, feature_module="head", every=3)

    full = make()
    full.on_train_begin(full_model, torch.optim.SGD(full_model.parameters(), lr=0.1))
    _train(full_model, full, range(1, 10), x)

    part_model = _Net().double()
    part_model.load_state_dict(start)
    first = make()
    first.on_train_begin(part_model, torch.optim.SGD(part_model.parameters(), lr=0.1))
    _train(part_model, first, range(1, 5), x)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    resumed.on_train_begin(part_model, torch.optim.SGD(part_model.parameters(), lr=0.1))
    _train(part_model, resumed, range(5, 10), x)
    assert [r["step"] for r in resumed.history] == [0, 3, 6, 9]
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a == pytest.approx(b, rel=1e-12)


def test_collect_features_position_and_errors() -> None:
    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 5)
            self.out = torch.nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.proj(x)))

    model = Seq()
    x = torch.randn(7, 4, 3)  # (batch, pos, d)
    phi, out = collect_features(model, x, "out", position=-1, batch_size=3)
    assert phi.shape == (7, 5) and out.shape == (7, 2)
    expected = torch.relu(model.proj(x[:, -1])).double()
    torch.testing.assert_close(phi, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(NodeLayerError, match="nope"):
        collect_features(model, x, "nope")
    with pytest.raises(ShapeError, match=r"\(7, 4, 5\)"):
        RichnessTracker({"x": x}, feature_module="out", every=1).measure(model)

    twice = torch.nn.Sequential()
    shared = torch.nn.Linear(3, 3)
    twice.add_module("a", shared)
    twice.add_module("b", shared)  # the same module called twice per forward pass
    with pytest.raises(ShapeError, match="2 times"):
        collect_features(twice, torch.randn(4, 3), "a")


# ---------------------------------------------------------------- bad input


def test_bad_input_errors() -> None:
    rng = _rng(12)
    phi, f = rng.normal(size=(20, 4)), rng.normal(size=(20, 3))
    with pytest.raises(ShapeError, match=r"\(20, 4\).*\(19, 3\)"):
        d_lr(phi, f[:19])
    with pytest.raises(DataError, match="n=1"):
        d_lr(phi[:1], f[:1])
    with pytest.raises(RankError, match="constant"):
        d_lr(np.full((20, 4), 3.3), f)
    with pytest.raises(RankError, match="outputs is constant"):
        d_lr(phi, np.ones((20, 3)), mode="projection")
    bad = phi.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match="1 NaN"):
        cka(bad, f)
    with pytest.raises(NonFiniteError):
        d_lr(phi, np.where(f > 1, np.inf, f))
    with pytest.raises(ShapeError, match=r"\(20, 2, 2\)"):
        d_lr(phi.reshape(20, 2, 2), f)
    with pytest.raises(ShapeError, match="square"):
        cka(phi, phi, form="kernel")
    with pytest.raises(DataError, match="not symmetric"):
        cka(phi @ phi.T + np.triu(np.ones((20, 20))), phi @ phi.T, form="kernel")
    with pytest.raises(RankError, match="constant"):
        cka(np.ones((20, 20)), phi @ phi.T, form="kernel")
    with pytest.raises(ValueError, match="mode"):
        d_lr(phi, f, mode="other")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="two classes"):
        nc1(phi, np.zeros(20, dtype=int))
    with pytest.raises(DataError, match="integer"):
        nc1(phi, np.zeros(20))
    with pytest.raises(ShapeError, match=r"\(20,\)"):
        within_class_trace(phi, np.zeros(19, dtype=int))
    with pytest.raises(DataError, match="non-negative"):
        effective_dimension([1.0, -1.0])
    with pytest.raises(ShapeError, match="4 features"):
        feature_spectrum(phi).eigenfunctions(f)
    with pytest.raises(DataError, match="empty"):
        RichnessTracker({}, feature_module="head", every=1)


def test_plots_draw(tmp_path: pytest.TempPathFactory) -> None:
    from interbasis.plotting.richness import plot_feature_view, plot_richness_history

    rng = _rng(13)
    phi = rng.normal(size=(80, 6))
    f = phi @ rng.normal(size=(6, 2))
    view = feature_view(phi[:50], phi[50:], f[50:], f[50:])
    fig = plot_feature_view({"a": view, "b": view}, max_k=4)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 2
    fig2 = plot_richness_history(
        [0, 10, 20], {"D_LR": [0.5, 0.2, 0.1]}, {"acc": [0.1, 0.5, 1.0]}, marks={"m": 10}
    )
    assert len(fig2.axes) == 2
