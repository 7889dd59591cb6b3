"""experiments/ablation_modadd.py --quick (issue 20): files, curves and edges needed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.ablation_modadd import LAYERS, directions_needed, main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_directions_needed():
    assert directions_needed([0, 2, 4, 8], [0.1, 0.9995, 0.99, 1.0], 0.999) == 8
    assert directions_needed([0, 2], [0.1, 0.5], 0.999) is None


def test_quick_run(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ablation_modadd.json").read_text())
    assert (tmp_path / "ablation_modadd.png").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "ablation_modadd_curves.csv").open()))
    assert {r["basis"] for r in rows} == {"interaction", "pca", "neuron"}
    for kind, per in result["curves"].items():
        for split, res in per.items():
            assert res["baseline"] >= 0.99, (kind, split)  # the checkpoint solves the task
            for layer in LAYERS:
                kept, acc = res["layers"][layer]["kept"], res["layers"][layer]["accuracy"]
                assert kept[0] == 0 and acc[0] < 0.05  # nothing kept: chance (1/113)
                assert acc[-1] == pytest.approx(res["baseline"])  # everything kept
    edges = result["edges"]["interaction"]
    for e in edges.values():
        assert 0 < e["needed"] <= e["n_edges"]
        at = e["evaluated"].get(str(e["needed"]))  # the full count is exact, not evaluated
        assert e["needed"] == e["n_edges"] or abs(at - e["baseline"]) <= 0.01
