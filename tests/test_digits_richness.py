"""Seed 001's lazy/rich rows on scikit-learn's digits (issue 21): data, models, α ordering."""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("sklearn", reason="experiments.digits_richness needs scikit-learn")

from experiments import digits_richness as dr
from interbasis import DataError


def test_data_split_and_shapes() -> None:
    data = dr.load_data()
    (x_tr, y_tr), (x_te, _) = data["train"], data["test"]
    assert x_tr.shape == (1000, 1, 8, 8) and x_te.shape == (797, 1, 8, 8)
    assert float(x_tr.min()) >= 0.0 and float(x_tr.max()) <= 1.0
    assert set(y_tr.tolist()) == set(range(10))
    again = dr.load_data()
    assert torch.equal(again["test"][0], x_te)
    with pytest.raises(DataError, match="n_train"):
        dr.load_data(n_train=5000)


def test_models_and_last_layer_only_freezes_the_rest() -> None:
    for kind in ("mlp", "cnn"):
        model, feature_module = dr.make_model(kind, dr.QUICK, seed=0)
        out = model(torch.zeros(3, 1, 8, 8))
        assert out.shape == (3, 10)
        assert isinstance(model.get_submodule(feature_module), torch.nn.Linear)
    tiny = dr.Setting(epochs=1, mlp_width=8, cnn_channels=2, cnn_width=8, n_train=200)
    data = dr.load_data(200)
    row = dr.train_and_measure("cnn", 1.0, 0, tiny, last_layer_only=True, data=data)
    assert 0.0 <= row["test_d_lr"] <= 1.0 and 0.0 <= row["train_acc"] <= 1.0
    with pytest.raises(DataError, match="alpha"):
        dr.train_and_measure("mlp", 0.0, 0, tiny, data=data)
    with pytest.raises(DataError, match="model kind"):
        dr.make_model("resnet", tiny, 0)


@pytest.fixture(scope="module")
def quick_alpha_means() -> list[float]:
    """Mean test D_LR over seeds 0-2 of the quick MLP at each α in (0.2, 2, 20)."""
    data = dr.load_data(dr.QUICK.n_train)
    means = []
    for alpha in dr.ALPHAS:
        rows = [dr.train_and_measure("mlp", alpha, s, dr.QUICK, data=data) for s in range(3)]
        means.append(statistics.fmean(r["test_d_lr"] for r in rows))
    print(f"quick-setting mean test D_LR at alpha {dr.ALPHAS}: {means}")
    return means


def test_d_lr_is_largest_at_the_laziest_alpha(quick_alpha_means: list[float]) -> None:
    """Issue 21 test 3, the part that reproduces: target downscaling y → y/α with α = 20
    (the lazy end of seed 001 Table 2) gives the largest mean test D_LR over 3 seeds, above
    both α = 0.2 and α = 2 by more than 0.05 (measured: 0.09, 0.07, 0.16)."""
    low, mid, high = quick_alpha_means
    assert high > max(low, mid) + 0.05, quick_alpha_means


@pytest.mark.xfail(
    strict=True,
    reason="measured on digits (docs/richness.md): mean D_LR at alpha 0.2 (0.090) is above "
    "alpha 2 (0.070) on the quick setting; the full setting orders them within one std",
)
def test_d_lr_increases_with_alpha_on_the_quick_setting(quick_alpha_means: list[float]) -> None:
    """Issue 21 test 3 as stated (seed 001 Table 2 ordering 0.049 < 0.11 < 0.56): strictly
    increasing mean test D_LR over α = 0.2, 2, 20. Does not hold on the quick setting."""
    low, mid, high = quick_alpha_means
    assert low < mid < high, quick_alpha_means
