"""Issue 17: the atlas follows the project's one train-mode policy (interbasis.train_mode).

A batch-norm model in train mode: by default the atlas analyses an eval-mode copy, warns
once (not once per view) and gives exactly the report of the eval-mode model;
``train_mode="error"`` refuses it; a bad ``train_mode`` is refused before any work; the
caller's parameters, buffers and modes are never changed.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nets import write_trajectory
from torch import nn

from interbasis import DataError
from interbasis.links.atlas import AtlasData, AtlasSettings, model_report, series_report
from interbasis.links.report import finite_json
from interbasis.links.series import load_series

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
TRAIN_MODE_WARNING = r"is in train mode; analysing its eval-mode function"


class BNNet(nn.Module):
    """``layers.0`` -> batch norm -> ReLU (``acts.0``) -> ``layers.1``, float64, seeded;
    running statistics far from the batch's, so train and eval mode differ."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList([nn.Linear(2, 6), nn.Linear(6, 2)])
        self.norm = nn.BatchNorm1d(6)
        self.acts = nn.ModuleList([nn.ReLU()])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.norm.running_mean.copy_(torch.randn(6, generator=g))
            self.norm.running_var.copy_(torch.rand(6, generator=g) + 0.5)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.acts[0](self.norm(self.layers[0](x))))


X = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randn(40, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
DATA = AtlasData(X, F.mse_loss, (X, Y))
SETTINGS = AtlasSettings(
    ("layers.0", "acts.0", "layers.1", "output"), k=2, n_random=1, window=2,
    edge_params=r"(^|\.)weight$",
)  # fmt: skip


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[bool]]) -> None:
    state, modes = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():  # parameters and buffers (running stats, batch count)
        assert torch.equal(now[key], value), f"{key} changed"
    assert [m.training for m in model.modules()] == modes


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(finite_json(report), sort_keys=True)


def train_mode_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "is in train mode" in str(w.message)]


@pytest.fixture(scope="module")
def eval_report() -> tuple[dict[str, Any], dict[str, bytes]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model_report(BNNet().eval(), DATA, SETTINGS)
    assert train_mode_warnings(caught) == []  # an eval-mode model: no warning at all
    return result


def test_bn_model_differs_between_modes() -> None:
    """The premise: this model's train-mode function is not its eval-mode function."""
    model = BNNet()
    with torch.no_grad():
        assert not torch.allclose(model.train()(X), copy.deepcopy(model).eval()(X))


def test_train_mode_model_is_analysed_as_its_eval_copy_with_one_warning(
    eval_report: tuple[dict[str, Any], dict[str, bytes]],
) -> None:
    model = BNNet().train()
    before = snapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report, figures = model_report(model, DATA, SETTINGS)
    found = train_mode_warnings(caught)
    assert len(found) == 1, found  # applied once at the entry point, not once per view
    assert "BNNet" in found[0] and "atlas" in found[0]
    assert as_json(report) == as_json(eval_report[0])  # exactly the eval-mode model's report
    assert figures.keys() == eval_report[1].keys()
    assert all(figures[k] == eval_report[1][k] for k in figures)
    assert_unchanged(model, before)  # parameters, running statistics, train mode: untouched


def test_train_mode_error_refuses_and_changes_nothing() -> None:
    model = BNNet().train()
    before = snapshot(model)
    with pytest.raises(DataError, match=r"the model \(BNNet\) is in train mode.*atlas"):
        model_report(model, DATA, SETTINGS, train_mode="error")
    assert_unchanged(model, before)
    report, _ = model_report(model.eval(), DATA, SETTINGS, train_mode="error")  # eval: fine
    assert report["graph"]["graph_size"] > 0


@pytest.mark.parametrize("bad", ["train", "Eval", None, 1, True])
def test_bad_train_mode_is_refused_up_front(bad: Any) -> None:
    model = BNNet().eval()
    before = snapshot(model)
    with pytest.raises(DataError, match=rf"train_mode must be .*got {bad!r}"):
        model_report(model, DATA, SETTINGS, train_mode=bad)
    assert_unchanged(model, before)


def test_keep_uses_an_eval_mode_model_as_it_is(
    eval_report: tuple[dict[str, Any], dict[str, bytes]],
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report, _ = model_report(BNNet().eval(), DATA, SETTINGS, train_mode="keep")
    assert train_mode_warnings(caught) == []
    assert as_json(report) == as_json(eval_report[0])


# ---------------------------------------------------------------- a series of checkpoints
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three checkpoints (state dicts) of BNNet along a made-up trajectory."""
    return write_trajectory(tmp_path_factory.mktemp("bn_run"), BNNet())


def loader(train: bool, built: list[nn.Module]) -> Any:
    def load(path: Path) -> nn.Module:
        model = BNNet()
        model.load_state_dict(torch.load(path, weights_only=True))
        built.append(model.train(train))
        return model

    return load


def test_series_of_train_mode_checkpoints_warns_once(run_dir: Path) -> None:
    eval_models: list[nn.Module] = []
    reference, _ = series_report(load_series(run_dir, loader(False, eval_models)), DATA, SETTINGS)
    train_models: list[nn.Module] = []
    series = load_series(run_dir, loader(True, train_models))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report, _ = series_report(series, DATA, SETTINGS)
    assert len(train_mode_warnings(caught)) == 1  # one for the run, not one per checkpoint
    assert as_json(report) == as_json(reference)
    assert len(train_models) == 3 and all(m.training for m in train_models)
    fresh = BNNet()
    fresh.load_state_dict(torch.load(series.paths[-1], weights_only=True))
    assert_unchanged(train_models[-1], snapshot(fresh.train()))  # the loaded model untouched


def test_series_train_mode_error_and_bad_value(run_dir: Path) -> None:
    series = load_series(run_dir, loader(True, []))
    with pytest.raises(DataError, match=r"the model \(BNNet\) is in train mode"):
        series_report(series, DATA, SETTINGS, train_mode="error")
    with pytest.raises(DataError, match=r"train_mode must be .*got 'off'"):
        series_report(series, DATA, SETTINGS, train_mode="off")  # type: ignore[arg-type]
