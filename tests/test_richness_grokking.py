"""D_LR through grokking with experiments.dlr_grokking (seed 001 Table 3, issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import dlr_grokking
from experiments.train import build_task, quick_config, train


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "richness.jsonl").read_text().splitlines()]


def test_quick_run_records_d_lr_resumes_and_reports(tmp_path: Path) -> None:
    full = tmp_path / "full"
    assert dlr_grokking.main(["--quick", "--out", str(full)]) == 0
    records = _records(full)
    assert [r["step"] for r in records] == [0, 20, 40, 60]
    for r in records:
        for split in ("train", "test"):
            assert 0.0 <= r[f"{split}/d_lr"] <= 1.0
            assert 0.0 <= r[f"{split}/d_lr_projection"] <= 1.0
        assert r["train_acc"] is not None and r["test_acc"] is not None
    assert records[0]["test/s_init"] == pytest.approx(1.0, abs=1e-12)

    # kill-and-resume: 30 updates, then continue to 60 -> the same records
    part = tmp_path / "part"
    assert dlr_grokking.main(["--quick", "--steps", "30", "--out", str(part)]) == 0
    assert dlr_grokking.main(["--quick", "--resume", "--out", str(part)]) == 0
    assert _records(part) == records

    figures = tmp_path / "fig"
    assert dlr_grokking.main(["--report", str(full), "--figure-dir", str(figures)]) == 0
    summary = json.loads((figures / "dlr_grokking.json").read_text())
    assert summary["weight decay 1"]["final"]["step"] == 60
    assert (figures / "dlr_grokking.png").stat().st_size > 10_000


def _rec(step: int, train_acc: float, test_acc: float, d: float) -> dict:
    return {"step": step, "train_acc": train_acc, "test_acc": test_acc, "test/d_lr": d}


def test_key_points_pick_memorisation_peak_and_grokking() -> None:
    records = [
        _rec(0, 0.01, 0.01, 0.2),
        _rec(100, 0.2, 0.01, 1e-4),  # early plateau: not a "before" value
        _rec(200, 0.995, 0.02, 0.3),  # memorised
        _rec(300, 1.0, 0.03, 0.4),  # peak before grokking
        _rec(400, 1.0, 0.995, 0.05),  # grokked
        _rec(500, 1.0, 1.0, 0.04),
    ]
    points = dlr_grokking.key_points(records)
    assert points["memorisation"]["step"] == 200
    assert points["peak_memorising"]["step"] == 300
    assert points["grokking"]["step"] == 400
    assert points["final"]["step"] == 500
    assert points["test_d_lr_ratio_memorisation_to_final"] == pytest.approx(0.3 / 0.04)
    assert points["test_d_lr_ratio_peak_memorising_to_final"] == pytest.approx(0.4 / 0.04)
    early = dlr_grokking.key_points(records[:4])
    assert "grokking" not in early and "test_d_lr_ratio_memorisation_to_final" not in early


@pytest.mark.slow
def test_d_lr_drops_through_grokking(tmp_path: Path) -> None:
    """Add mod 23 with weight decay 1 (docs/experiments.md's grokking setting, ~1 minute):
    the library's RichnessTracker records test D_LR after the test-accuracy jump (>= 0.95)
    below its value at the memorisation point (first train accuracy >= 0.99, test still low)."""
    cfg = quick_config(frac_train=0.7, steps=6000, eval_every=50, checkpoint_every=6000,
                       threads=1, progress=False)  # fmt: skip
    task = build_task(cfg)
    tracker = dlr_grokking.make_tracker(task, cfg.eval_every)
    train(cfg, tmp_path, callbacks=[tracker])
    records = dlr_grokking.with_metrics(tmp_path, tracker.history)
    memorised = next(r for r in records if r["train_acc"] >= 0.99)
    assert memorised["test_acc"] < 0.6, f"no memorisation phase: {memorised}"
    jump = [r for r in records if r["test_acc"] >= 0.95]
    assert jump, f"no test-accuracy jump within the run: {records[-1]}"
    before, after = memorised["test/d_lr"], records[-1]["test/d_lr"]
    assert after < before, (
        f"test D_LR {before:.4f} at memorisation (step {memorised['step']}), "
        f"{after:.4f} after grokking (step {records[-1]['step']})"
    )
