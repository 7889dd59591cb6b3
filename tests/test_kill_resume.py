"""Issue 19: `interbasis train` and `interbasis atlas` killed with SIGKILL and resumed.

Each test starts the real command in a subprocess, kills it with ``os.kill(pid, SIGKILL)``
at a point chosen by a file appearing plus a seeded random delay (one kill early, one late in
the run), resumes it with the command's resume option, and compares every output with the
one of an uninterrupted run: checkpoint tensors bit-identical, metrics and reports equal, no
temporary file left behind.
"""

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

import pytest
import torch

from interbasis.cli import main as cli_main
from interbasis.links.cli import ROWS_DIR, atlas_command

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
TRAIN_FLAGS = [
    "--quick", "--steps", "400", "--eval-every", "20", "--checkpoint-every", "20",
    "--batch-size", "64", "--threads", "1", "--device", "cpu", "--no-progress",
]  # fmt: skip
ATLAS_FLAGS = ["--k", "2", "--random", "1", "--max-checkpoints", "11", "--window", "3",
               "--threads", "1"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def kill_when(cmd: list[str], trigger: Path, delay: float, deadline_s: float = 120) -> str:
    """Run ``cmd``; once ``trigger`` exists wait ``delay`` s and SIGKILL it. Returns stderr."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + deadline_s
    while not trigger.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    text = err.decode(errors="replace")
    assert trigger.exists(), f"{trigger} never appeared: {text[-2000:]}"
    assert proc.returncode == -signal.SIGKILL, f"it ended before the kill: {text[-2000:]}"
    return text


def assert_same(a: Any, b: Any, where: str) -> None:
    """Deep equality; tensors bit-identical (same dtype, shape and bytes)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- interbasis train
@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli_main(["train", *TRAIN_FLAGS, "--out", str(out)]) == 0
    return out


def test_the_run_comparison_can_fail(straight_run: Path, tmp_path: Path) -> None:
    """A run that differs by one update is caught (so the tests below can fail)."""
    ckpt = torch.load(straight_run / "checkpoints/step_0000020.pt", weights_only=True)
    other = torch.load(straight_run / "checkpoints/step_0000040.pt", weights_only=True)
    with pytest.raises(AssertionError, match="model_state"):
        assert_same(ckpt["model_state"], other["model_state"], "model_state")


@pytest.mark.parametrize(
    ("trigger", "seed"),
    [("metrics.jsonl", 0), ("checkpoints/step_0000000.pt", None),
     ("checkpoints/step_0000200.pt", 1)],
    ids=["early", "after-step-0-checkpoint", "mid-run"],
)  # fmt: skip
def test_sigkilled_train_resumes_to_the_same_run(
    straight_run: Path, tmp_path: Path, trigger: str, seed: int | None
) -> None:
    """``seed=None``: no delay, so the resume starts from the step-0 checkpoint, whose
    evaluation is already in the log (it was logged twice before that case was handled)."""
    out = tmp_path / "run"
    delay = 0.0 if seed is None else random.Random(seed).uniform(0.0, 0.15)
    cmd = [sys.executable, "-m", "interbasis", "train", *TRAIN_FLAGS, "--out", str(out)]
    kill_when(cmd, out / trigger, delay)
    assert not (out / "summary.json").exists()  # the kill landed mid-run
    assert cli_main(["train", *TRAIN_FLAGS, "--out", str(out), "--resume"]) == 0
    assert files(out) == files(straight_run)  # same checkpoints, no temporary file left
    for name in files(straight_run / "checkpoints"):
        a, b = (
            torch.load(d / "checkpoints" / name, weights_only=True) for d in (straight_run, out)
        )
        assert_same(a, b, name)  # model, optimizer, RNG states, callback states: bit-identical
    metrics = (straight_run / "metrics.jsonl").read_text()
    assert metrics == (out / "metrics.jsonl").read_text() and metrics.count("\n") == 21
    summaries = [json.loads((d / "summary.json").read_text()) for d in (straight_run, out)]
    for s in summaries:
        s.pop("steps_per_s")
    assert summaries[0] == summaries[1] and summaries[0]["step"] == 400
    runs = [json.loads((d / "run.json").read_text()) for d in (straight_run, out)]
    assert runs[0]["config"] == runs[1]["config"] and runs[0]["model"] == runs[1]["model"]


def test_resume_removes_the_temporary_files_of_a_kill(straight_run: Path, tmp_path: Path) -> None:
    """A kill inside an atomic write leaves ``.NAME.tmpPID``; the resumed run removes it and
    never reads it as a checkpoint."""
    from experiments.checkpoint_io import list_checkpoints

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("step_0000000.pt", "step_0000020.pt"):
        (out / "checkpoints" / name).write_bytes((straight_run / "checkpoints" / name).read_bytes())
    lines = (straight_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:50])  # torn at step 40
    torn = out / "checkpoints" / ".step_0000040.pt.tmp12345"
    torn.write_bytes(b"half a checkpoint")
    (out / ".run.json.tmp999").write_text("{")
    assert [s for s, _ in list_checkpoints(out)] == [0, 20]
    flags = [*TRAIN_FLAGS, "--steps", "40"]  # the last flag wins
    assert cli_main(["train", *flags, "--out", str(out), "--resume"]) == 0
    assert not torn.exists() and not (out / ".run.json.tmp999").exists()
    assert (out / "metrics.jsonl").read_text() == "".join(lines[:3])  # steps 0, 20, 40
    for name in ("step_0000020.pt", "step_0000040.pt"):
        a, b = (
            torch.load(d / "checkpoints" / name, weights_only=True) for d in (straight_run, out)
        )
        assert_same(a["model_state"], b["model_state"], name)


# ---------------------------------------------------------------- interbasis atlas
@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ReLU MLP run with 11 checkpoints (steps 0, 2, ..., 20)."""
    from experiments.train import TrainConfig, train

    cfg = TrainConfig(
        task="x2", model="mlp", d_hidden=[5, 5], act_fn="relu", n_samples=96, lr=1e-2,
        steps=20, eval_every=10, checkpoint_every=2, loss="mse", weight_decay=0.0,
        optimizer="adam", threads=1, progress=False,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("atlas") / "run"
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def straight_atlas(mlp_run: Path) -> Path:
    out = mlp_run.parent / "straight_report"
    assert atlas_command([str(mlp_run), "--out", str(out), *ATLAS_FLAGS]) == 0
    assert not (out / ROWS_DIR).exists()  # the row cache is removed with success
    return out


@pytest.mark.parametrize(("trigger_step", "seed"), [(2, 0), (16, 1)], ids=["early", "late"])
def test_sigkilled_atlas_resumes_to_the_same_report(
    mlp_run: Path,
    straight_atlas: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    trigger_step: int,
    seed: int,
) -> None:
    out = tmp_path / "report"
    delay = random.Random(seed).uniform(0.0, 0.1)
    cmd = [sys.executable, "-m", "interbasis", "atlas", str(mlp_run), "--out", str(out),
           *ATLAS_FLAGS]  # fmt: skip
    kill_when(cmd, out / ROWS_DIR / f"step_{trigger_step:07d}.json", delay)
    assert not (out / "atlas.json").exists()  # killed before the report was written
    done = sorted(p.name for p in (out / ROWS_DIR).glob("step_*.json"))
    assert len(done) >= 1 + trigger_step // 2  # the rows finished before the kill are kept
    capsys.readouterr()
    assert atlas_command([str(mlp_run), "--out", str(out), *ATLAS_FLAGS, "--resume"]) == 0
    err = capsys.readouterr().err
    assert err.count("(cached)") == len(done)  # every finished row reused, none recomputed
    a, b = ((d / "atlas.json").read_text() for d in (straight_atlas, out))
    assert a == b  # every number of the report
    html = [(d / "atlas.html").read_text() for d in (straight_atlas, out)]
    assert html[0] == html[1]  # figures included
    assert files(out) == ["atlas.html", "atlas.json"]


def test_atlas_rows_of_other_settings_are_not_reused(
    mlp_run: Path, straight_atlas: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A cached row is keyed by settings and checkpoint bytes: a changed --seed recomputes."""
    out = tmp_path / "report"
    rows = out / ROWS_DIR
    rows.mkdir(parents=True)
    key_row = {"key": "from another run", "row": {"graph_size": -1}}
    (rows / "step_0000000.json").write_text(json.dumps(key_row))
    (rows / "step_0000010.json").write_text("{torn")
    argv = [str(mlp_run), "--out", str(out), *ATLAS_FLAGS, "--max-checkpoints", "3", "--resume"]
    assert atlas_command(argv) == 0
    assert "(cached)" not in capsys.readouterr().err
    report = json.loads((out / "atlas.json").read_text())
    straight = json.loads((straight_atlas / "atlas.json").read_text())
    assert [r["step"] for r in report["series"]["rows"]] == [0, 10, 20]
    assert report["series"]["rows"][0] == straight["series"]["rows"][0]  # recomputed, not -1


# ---------------------------------------------------------------- bad training configs
def test_negative_steps_is_one_error_line_without_traceback() -> None:
    """`interbasis train --steps -5`: one `error:` line naming steps and -5, exit 1."""
    done = subprocess.run(
        [sys.executable, "-m", "interbasis", "train", "--steps", "-5"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and "steps" in lines[0] and "-5" in lines[0]
    assert "--steps" in lines[0]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--steps", "-1"], "steps must be >= 0, an int (--steps), got -1"),
        (["--lr", "0"], "lr must be a finite number > 0 (--lr), got 0.0"),
        (["--lr", "nan"], "lr must be a finite number > 0 (--lr), got nan"),
        (["--eval-every", "-3"], "eval_every must be >= 0, an int (--eval-every), got -3"),
        (["--checkpoint-every", "0"], "checkpoint_every must be >= 1 or None, an int"),
        (["--frac-train", "1.5"], "frac_train in (0, 1] (--frac-train), got 1.5"),
        (["--p", "1"], "p must be >= 2, an int (--p), got 1"),
        (["--batch-size", "0"], "batch_size must be >= 1 or None, an int (--batch-size), got 0"),
        (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0 (--weight-decay)"),
        (["--betas", "0.9,1.0"], "betas must be two numbers in [0, 1) (--betas), got [0.9, 1.0]"),
        (["--betas", "0.9"], "betas (--betas) must be two numbers, got [0.9]"),
        (["--grad-clip", "0"], "grad_clip must be a finite number > 0 or None (--grad-clip)"),
        (["--grok-threshold", "2"], "grok_threshold must be a number in [0, 1] (--grok-thresh"),
        (["--seed", "-1"], "seed must be >= 0, an int (--seed), got -1"),
        (["--ops", "add,pow"], "ops must be a non-empty list of"),
        (["--task", "pow"], "unknown task 'pow' (TrainConfig.task, --task)"),
        (["--act-fn", "tanh"], "act_fn must be one of ('relu', 'gelu', 'gelu_new') for model="),
        (["--device", "gpu0"], 'device must be "auto" or a torch device name'),
        (["--threads", "0"], "threads must be >= 1 or None, an int (--threads), got 0"),
    ],
)
def test_bad_training_config_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], named: str
) -> None:
    out = tmp_path / "run"
    assert cli_main(["train", "--quick", *flags, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: ") and named in captured.err
    assert "TrainConfig." in captured.err and flags[1].split(",")[-1] in captured.err
    assert not out.exists()  # validated before anything is written


def test_training_config_validation_in_python() -> None:
    from experiments.train import TrainConfig, train
    from interbasis import DataError

    with pytest.raises(DataError, match=r"TrainConfig\.steps must be >= 0, an int .* got -5"):
        TrainConfig(steps=-5)
    with pytest.raises(DataError, match=r"TrainConfig\.eval_every .* got True"):
        TrainConfig(eval_every=True)  # a bool is not a number of steps
    with pytest.raises(DataError, match=r"TrainConfig\.d_hidden must be a list of ints >= 1"):
        TrainConfig(model="mlp", task="x2", d_hidden=[4, 0])
    with pytest.raises(DataError, match=r"TrainConfig\.ops \(--ops\) must be a list, got 'add'"):
        TrainConfig(ops="add")  # type: ignore[arg-type]
    cfg = TrainConfig(steps=3)
    cfg.lr = -1.0  # changed after construction: train() checks again before any work
    with pytest.raises(DataError, match=r"TrainConfig\.lr must be a finite number > 0"):
        train(cfg, "never-created")
    assert not Path("never-created").exists()


def test_missing_out_and_unreadable_run_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["train", "--quick"]) == 1
    assert capsys.readouterr().err == (
        "error: --out is required: the run directory to write (or to resume)\n"
    )
    (tmp_path / "run.json").write_text('{"config": {"steps": 5, "colour": "red"}}')
    assert cli_main(["train", "--out", str(tmp_path), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot resume from {tmp_path / 'run.json'}") and "colour" in err
