"""`experiments.spectral_edge_modes --quick` trains, tracks, analyses and writes its table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from experiments.spectral_edge_modes import main
from experiments.spectral_edge_report import N_EDGE


def test_quick_run_tracks_and_writes_table(tmp_path: Path) -> None:
    out, docs = tmp_path / "out", tmp_path / "docs"
    assert main(["--quick", "--out", str(out), "--docs", str(docs)]) == 0
    run = json.loads((out / "add_s0" / "analysis.json").read_text())
    # the tracker recorded its window statistics during training
    hist = run["history"]
    assert len(hist["step"]) > 0 and run["steps"] == 200
    sigma = np.asarray(hist["sigma"], dtype=float)
    diffs = np.diff(sigma, axis=1)
    assert np.all(np.isfinite(sigma[:, :2])) and np.all(diffs[np.isfinite(diffs)] <= 0)
    assert np.all(np.isfinite(sigma[-1]))  # full window of 10 updates: rank 9 >= n_record 8
    final = run["windows"]["final"]
    assert 4 <= final["n_dirs"] <= 8  # edge v1–v3 + bulk
    F = np.asarray(final["ops"]["add"]["F"]["sum"])
    assert F.size == final["n_dirs"] + 8  # + 8 random controls
    assert np.all((F >= 1 / 6 - 1e-12) & (F <= 1 + 1e-12))  # p = 13: ⌊13/2⌋ = 6 frequencies
    table = (out / "table.md").read_text()
    assert "| add | final | F sum |" in table and "Ablation" in table
    assert (docs / "spectral_edge_table.md").read_text().count("| add |") >= 3
    assert (docs / "figures" / "spectral_edge_controls.png").stat().st_size > 0
    assert (out / "add_s0" / "history.png").is_file()
    # resumable: a second call reuses the finished analysis
    mtime = (out / "add_s0" / "analysis.json").stat().st_mtime
    assert main(["--quick", "--out", str(out)]) == 0
    assert (out / "add_s0" / "analysis.json").stat().st_mtime == mtime


def test_quick_multitask_run_measures_each_op(tmp_path: Path) -> None:
    """x²+y² alone and in the multitask model: per-op rows, dlog gain, amplification line."""
    out = tmp_path / "out"
    assert main(["--quick", "--op", "x2y2", "multitask", "--out", str(out)]) == 0
    run = json.loads((out / "multitask_s0" / "analysis.json").read_text())
    ops = run["windows"]["final"]["ops"]
    assert set(ops) == {"add", "mul", "x2y2"}
    gain = np.asarray(ops["mul"]["F"]["dlog"]) / np.asarray(ops["mul"]["F"]["prod"])
    assert np.all(np.isfinite(gain)) and np.all(gain > 0)
    table = (out / "table.md").read_text()
    for row in ("| multitask/add | final | F sum |", "| multitask/mul | final | dlog gain"):
        assert row in table
    assert "| x2y2 | final | F prod |" in table
    # the amplification figure is the ratio of the two runs' edge F_sum, recomputed here
    single = json.loads((out / "x2y2_s0" / "analysis.json").read_text())
    edge = {
        name: np.mean(r["windows"]["final"]["ops"]["x2y2"]["F"]["sum"][:N_EDGE])
        for name, r in (("single", single), ("multi", run))
    }
    found = re.search(r"Multitask amplification \(seed: 2\.3×\):.* = ([0-9.]+) \(final", table)
    assert found, table
    assert float(found.group(1)) == pytest.approx(edge["multi"] / edge["single"], abs=0.005)
    assert 0 < edge["single"] <= 1 and 0 < edge["multi"] <= 1
