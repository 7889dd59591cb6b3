"""Training harness: quick run, bit-identical resume (in-process and after SIGKILL), callbacks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.checkpoint_io import list_checkpoints, load_checkpoint
from experiments.run_dir import RunDir
from experiments.tasks import modular_task
from experiments.train import (
    TrainConfig,
    batch_indices,
    build_model_for,
    build_task,
    loss_sum,
    main,
    quick_config,
    train,
)
from interbasis import Callback, DataError, FormatError

REPO = Path(__file__).resolve().parents[1]


def small(**kw: Any) -> TrainConfig:
    """A 40-step mini-batch run (5 batches per epoch) on CPU (bit-identity needs CPU)."""
    base: dict[str, Any] = dict(steps=40, eval_every=10, batch_size=64, threads=1, progress=False)
    base["device"] = "cpu"
    return quick_config(**{**base, **kw})


class Recorder(Callback):
    """Keeps a numpy array and a float in its state; optionally interrupts at a step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.events: list[tuple[str, int]] = []
        self.norms = np.zeros(0)
        self.total = 0.0

    def on_train_begin(self, model, optimizer) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("begin", -1))

    def on_before_step(self, step, model, optimizer, batch) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("before", step))
        self.before = model.unembed.W_U.detach().clone()
        assert model.unembed.W_U.grad is not None

    def on_step(self, step, model, optimizer, batch) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("step", step))
        assert not torch.equal(self.before, model.unembed.W_U)  # the update happened in between
        norm = float(model.unembed.W_U.detach().norm())
        draws = [float(torch.rand(())), np.random.rand(), random.random()]  # noqa: NPY002
        self.norms = np.append(self.norms, [norm, *draws])  # global RNG states must resume too
        self.total += norm
        if step == self.stop_at:
            raise KeyboardInterrupt  # abrupt stop, no on_train_end

    def on_eval(self, step, model, metrics) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("eval", step))
        assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(metrics)

    def on_train_end(self, step, model) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("end", step))

    def state_dict(self) -> dict[str, Any]:
        return {"norms": self.norms.copy(), "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms, self.total = state["norms"].copy(), state["total"]


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


# ---------------------------------------------------------------- issue test 2
def test_quick_cli_run_fits_training_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["train_acc"] == 1.0 and printed["step"] == 300
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["p"] == 23 and run["task"] == "add_mod23"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 50, 100, 150, 200, 250, 300]
    assert records[-1]["memorization_step"] is not None
    assert [s for s, _ in list_checkpoints(tmp_path)] == [300]
    model = load_checkpoint(tmp_path)  # the run directory -> its latest checkpoint
    x, y = modular_task("add", 23, 0.5, seed=0).split("train")
    with torch.no_grad():
        assert bool((model(x).argmax(-1) == y).all())


def test_interrupted_run_resumes_bit_identically(tmp_path: Path) -> None:
    cfg = small(checkpoint_steps=[6])  # inside the 10-step warm-up and mid-epoch
    straight_cb = Recorder()
    straight = train(cfg, tmp_path / "a", callbacks=[straight_cb])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", callbacks=[Recorder(stop_at=9)])
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [6]
    resumed_cb = Recorder()
    resumed = train(cfg, tmp_path / "b", callbacks=[resumed_cb], resume=True)
    assert resumed.step == 40
    assert_same_parameters(straight.model, resumed.model)
    np.testing.assert_array_equal(straight_cb.norms, resumed_cb.norms)  # callback state restored
    assert straight.history == resumed.history  # metrics after step 6 were dropped and re-logged
    assert resumed_cb.events[0] == ("begin", -1) and resumed_cb.events[1] == ("before", 7)
    a, b = (
        torch.load(d / "checkpoints/step_0000040.pt", weights_only=True)
        for d in (tmp_path / "a", tmp_path / "b")
    )
    for key in ("exp_avg", "exp_avg_sq"):
        for i in a["optimizer_state"]["state"]:
            assert torch.equal(
                a["optimizer_state"]["state"][i][key], b["optimizer_state"]["state"][i][key]
            )


def test_sigkilled_cli_run_resumes_bit_identically(tmp_path: Path) -> None:
    """Kill a real training process, resume it from step 20 in a new one, compare at step 40."""
    flags = [
        "--quick",
        "--batch-size",
        "64",
        "--eval-every",
        "10",
        "--threads",
        "1",
        "--no-progress",
        "--checkpoint-every",
        "10",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "experiments.train", *flags]
    proc = subprocess.Popen(
        [*cmd, "--steps", "1000000", "--out", str(tmp_path / "killed")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    target = tmp_path / "killed" / "checkpoints" / "step_0000020.pt"
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert target.exists(), err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    resume = [*cmd, "--steps", "40", "--out", str(tmp_path / "killed"), "--resume", str(target)]
    done = subprocess.run(resume, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert [s for s, _ in list_checkpoints(tmp_path / "killed")] == [0, 10, 20, 30, 40]
    straight = train(small(checkpoint_every=10), tmp_path / "straight")
    assert_same_parameters(straight.model, load_checkpoint(tmp_path / "killed"))


# ---------------------------------------------------------------- protocol and bookkeeping
def test_callback_order_and_step_zero_evaluation(tmp_path: Path) -> None:
    cb = Recorder()
    train(small(steps=20), tmp_path, callbacks=[cb])
    assert cb.events[:2] == [("begin", -1), ("eval", 0)]
    assert cb.events[2:5] == [("before", 1), ("step", 1), ("before", 2)]
    assert ("eval", 10) in cb.events and cb.events[-2:] == [("eval", 20), ("end", 20)]
    assert len(cb.norms) == 4 * 20


def test_grokking_and_memorisation_steps(tmp_path: Path) -> None:
    run = RunDir(tmp_path, {}, [])
    run.start()
    for step, train_acc, test_acc in [
        (0, 0.1, 0.0),
        (10, 0.96, 0.1),
        (20, 1.0, 0.5),
        (30, 1.0, 0.95),
        (40, 1.0, 0.99),
    ]:
        run.step = step
        run.log({"step": step, "train_acc": train_acc, "test_acc": test_acc}, threshold=0.95)
    assert (run.memorization_step, run.grokking_step) == (10, 30)
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["grokking_step"] == 30 and last["memorization_step"] == 10


def test_batches_cover_each_epoch_once() -> None:
    cfg = small(batch_size=64)
    epoch = torch.cat([batch_indices(cfg, 264, s) for s in range(1, 6)])  # type: ignore[misc]
    assert sorted(epoch.tolist()) == list(range(264))
    assert torch.equal(batch_indices(cfg, 264, 3), batch_indices(cfg, 264, 3))  # type: ignore[arg-type]
    assert not torch.equal(batch_indices(cfg, 264, 1), batch_indices(cfg, 264, 6))  # type: ignore[arg-type]
    assert batch_indices(small(batch_size=None), 264, 1) is None


def test_losses_closed_form() -> None:
    task = modular_task("add", 5, 1.0)
    out = torch.randn(6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ce = -sum(torch.log_softmax(out[i], -1)[y[i]] for i in range(6))
    torch.testing.assert_close(loss_sum(small(), task, out, y), ce)
    mse = loss_sum(small(loss="mse", mse_scale=2.0), task, out, y)
    torch.testing.assert_close(mse, ((out - F.one_hot(y, 6) / 2.0) ** 2).sum() / 6)


def test_mlp_regression_learns(tmp_path: Path) -> None:
    cfg = TrainConfig(
        task="sin5x",
        model="mlp",
        d_hidden=[32, 32],
        act_fn="tanh",
        loss="mse",
        weight_decay=0.0,
        lr=1e-2,
        steps=300,
        eval_every=100,
        n_samples=256,
        frac_train=0.8,
        threads=1,
        progress=False,
    )
    result = train(cfg, tmp_path)
    first, last = result.history[0], result.history[-1]
    assert last["train_acc"] is None
    assert last["test_loss"] < first["test_loss"] / 5  # sin 5x has variance ≈ 0.5 at init


# ---------------------------------------------------------------- bad input
def test_resume_from_corrupt_checkpoint(tmp_path: Path) -> None:
    train(small(steps=10, checkpoint_every=5), tmp_path)
    latest = tmp_path / "checkpoints" / "step_0000010.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(FormatError, match=r"cannot read checkpoint .*step_0000010\.pt"):
        train(small(steps=20, checkpoint_every=5), tmp_path, resume=True)


def test_resume_refuses_changed_config_and_callbacks(tmp_path: Path) -> None:
    train(small(steps=10), tmp_path)
    with pytest.raises(DataError, match=r"config differs in \{'lr': \(0\.003, 0\.001\)\}"):
        train(small(steps=20, lr=1e-3), tmp_path, resume=True)
    with pytest.raises(DataError, match="states of callbacks"):
        train(small(steps=20), tmp_path, callbacks=[Recorder()], resume=True)
    with pytest.raises(DataError, match="already holds checkpoints"):
        train(small(steps=20), tmp_path)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(task="pow"), "unknown task 'pow'"),
        (dict(model="cnn"), "unknown model 'cnn'"),
        (dict(optimizer="sgd"), "unknown optimizer 'sgd'"),
        (dict(loss="hinge"), "unknown loss 'hinge'"),
        (dict(model="mlp"), "tokenised; use model='transformer'"),
        (dict(task="div", p=21), "p=21 is not prime"),
    ],
)
def test_bad_configs(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        train(small(steps=1, **kw), tmp_path)


def test_config_validation_and_cli_parsing(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        small(batch_size=0)
    with pytest.raises(DataError, match=r"frac_train in \(0, 1\]"):
        small(frac_train=0.0)
    with pytest.raises(SystemExit):
        main(["--out", "x", "--steps", "many"])
    assert "invalid literal" in capsys.readouterr().err
    cfg = build_task(small(task="x2y2", p=7))
    assert cfg.name == "x2y2_mod7"
    model = build_model_for(small(normalization_type="LN"), cfg)
    assert model.cfg.normalization_type == "LN" and model.cfg.d_vocab == 8  # type: ignore[union-attr]


@pytest.mark.gpu
def test_cuda_losses_match_cpu(tmp_path: Path) -> None:
    """float32 on both devices; TF32 is off by default for float32 matmuls, so per-step
    losses agree to float32 round-off amplified over 20 steps (rtol 1e-3)."""
    cfg = small(steps=20, eval_every=1)
    cpu = train(cfg, tmp_path / "cpu")
    gpu = train(small(steps=20, eval_every=1, device="cuda"), tmp_path / "gpu")
    assert cpu.history[0]["train_loss"] == pytest.approx(gpu.history[0]["train_loss"], rel=1e-5)
    assert next(gpu.model.parameters()).device.type == "cuda"
    for a, b in zip(cpu.history, gpu.history, strict=True):
        assert a["step"] == b["step"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
