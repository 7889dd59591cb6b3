"""experiments/hessian_modes.py --quick end to end (minutes on a loaded 2-core machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import hessian_modes


@pytest.mark.slow
def test_quick_run_writes_report_and_figures(tmp_path: Path) -> None:
    assert hessian_modes.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "hessian_modes.json").read_text())
    d1 = report["x2"]["per_depth"]["1"]
    assert d1["n_params"] == 61 and report["x2"]["per_depth"]["2"]["n_params"] == 481
    assert d1["lambda_max"] > d1["floor"] > 0
    assert d1["ggn_lambda_min"] > -1e3 * d1["floor"]  # the GGN is PSD up to round-off
    sims = report["x2"]["leading_mode_abs_cos"]["1-2"]
    assert len(sims) == 5 and all(0.0 <= s <= 1.0 + 1e-12 for s in sims)
    caution = report["caution"]
    assert len(caution["sign_changes_fd_float32"]) == 3
    for name in ("functions_x2", "frequency", "caution"):
        path = tmp_path / f"hessian_modes_{name}.png"
        assert path.stat().st_size > 10_000
