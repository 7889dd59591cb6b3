"""A training run as a lazily loaded checkpoint series (issue 12)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.checkpoint_io import load_checkpoint
from experiments.train import TrainConfig, train
from interbasis.errors import DataError, FormatError
from interbasis.links import load_series, spectral_gaps, summarize_model
from interbasis.spectral_edge import window_spectrum

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _mlp_run(out: Path, hidden: list[int], steps: int = 40) -> Path:
    cfg = TrainConfig(
        task="x2", model="mlp", d_hidden=hidden, act_fn="tanh", n_samples=128, lr=1e-2,
        steps=steps, eval_every=10, checkpoint_every=10, loss="mse", weight_decay=0.0,
        optimizer="adam", threads=1, progress=False,
    )  # fmt: skip
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mlp_run(tmp_path_factory.mktemp("run") / "a", [8, 8])


def test_series_lists_steps_and_loads_models_lazily(run: Path) -> None:
    series = load_series(run, loader=load_checkpoint)
    assert series.steps == (0, 10, 20, 30, 40) and len(series) == 5
    assert [r["step"] for r in series.metrics] == [0, 10, 20, 30, 40]
    assert series.record(20)["step"] == 20 and series.record(25) == {}
    calls: list[Path] = []

    def counting(path: Path) -> torch.nn.Module:
        calls.append(path)
        return load_checkpoint(path)

    lazy = load_series(run, loader=counting)
    assert calls == []  # listing and architecture checks build no model
    model = lazy.model(2)
    assert calls == [lazy.paths[2]]
    state = lazy.state(2)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), state[name], rtol=0, atol=0)
    assert [s for s, _ in lazy] == list(lazy.steps)
    with pytest.raises(DataError, match="no loader"):
        load_series(run).model(0)


def test_spectral_gaps_are_the_window_spectra_of_checkpoint_differences(run: Path) -> None:
    series = load_series(run)
    gaps = spectral_gaps(series, params=r"^layers\.\d+\.weight$", window=3)
    assert [g["step"] for g in gaps] == list(series.steps)
    assert "gap" not in gaps[0] and "gap" not in gaps[1]
    names = gaps[-1]["params"]
    assert names == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    flat = [torch.cat([series.state(i)[n].double().reshape(-1) for n in names]) for i in range(5)]
    ups = torch.stack([flat[i] - flat[i - 1] for i in (2, 3, 4)])  # the last window of 3
    spec = window_spectrum(ups, center=False)
    np.testing.assert_allclose(gaps[-1]["sigma"], spec.sigma[:5], rtol=1e-12)
    assert gaps[-1]["gap"] == pytest.approx(spec.sigma[0] / spec.sigma[1], rel=1e-12)
    torch.testing.assert_close(gaps[-1]["directions"], spec.directions[:3])
    with pytest.raises(DataError, match="selects nothing"):
        spectral_gaps(series, params="no_such_parameter")


def test_summary_of_one_checkpoint(run: Path) -> None:
    series = load_series(run, loader=load_checkpoint)
    x = torch.linspace(-1, 1, 64, dtype=torch.float64)[:, None]
    s = summarize_model(
        series.model(4), x, ["layers.0", "acts.0", "layers.1", "acts.1", "layers.2", "output"],
        F.mse_loss, (x, x**2), k=3, stability_seeds=(0, 1),
    )  # fmt: skip
    n = s.numbers
    assert n["graph_size"] == sum(n["nodes"].values()) == sum(b.n_nodes - 1 for b in s.bases) + 1
    assert n["hessian_method"] == "dense" and len(n["hessian_top"]) == 3
    assert n["hessian_top"] == sorted(n["hessian_top"], reverse=True)
    assert 0.0 <= n["d_lr"] <= 1.0 and 0.0 <= n["stability"] <= 1.0
    assert n["assigned_nodes"] + n["unassigned"] == n["graph_size"]


def test_bad_run_directories(run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_series(tmp_path / "missing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(DataError, match="no checkpoints in .*step_<step>.pt"):
        load_series(tmp_path / "empty")
    # a checkpoint of another architecture in the series: the first mismatch is named
    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    other = _mlp_run(tmp_path / "other", [8, 16], steps=10)
    shutil.copy(
        other / "checkpoints" / "step_0000010.pt", mixed / "checkpoints" / "step_0000035.pt"
    )
    with pytest.raises(FormatError, match=r"step_0000035.pt \(step 35\) differs from step_0000000"):
        load_series(mixed)
    with pytest.raises(FormatError, match=r"d_hidden: \[8, 8\] vs \[8, 16\]"):
        load_series(mixed)
    # plain state dicts (no model spec): the first tensor whose shape differs
    plain = tmp_path / "plain" / "checkpoints"
    plain.mkdir(parents=True)
    torch.save({"w": torch.zeros(2, 3), "b": torch.zeros(2)}, plain / "step_0000001.pt")
    torch.save({"w": torch.zeros(2, 4), "b": torch.zeros(2)}, plain / "step_0000002.pt")
    with pytest.raises(FormatError, match=r"tensor 'w' has shape \(2, 4\) instead of \(2, 3\)"):
        load_series(plain.parent)
    (plain / "step_0000003.pt").write_bytes(b"not a checkpoint")
    (plain / "step_0000002.pt").unlink()
    with pytest.raises(FormatError, match="cannot read checkpoint .*step_0000003.pt"):
        load_series(plain.parent)
