"""``interbasis ablate`` (interbasis.ablation.cli.ablate_command)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT
from interbasis.ablation.cli import ablate_command

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ablate_writes_csv_and_png(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    argv = [str(RIB_MODADD_CHECKPOINT), "--layers", "unembed", "--out", str(out)]
    argv += ["--bases", "interaction", "neuron", "--build-samples", "64"]
    argv += ["--counts", "0", "8", "128"]
    assert ablate_command(argv) == 0
    rows = list(csv.DictReader((out / "ablation_curves.csv").open()))
    assert (out / "ablation_curves.png").stat().st_size > 0
    assert {r["basis"] for r in rows} == {"interaction", "neuron"} and len(rows) == 6
    for r in rows:
        assert r["layer"] == "unembed" and 0.0 <= float(r["value"]) <= 1.0
        if r["n_ablated"] == "0":  # nothing ablated: the unablated accuracy
            assert float(r["value"]) == pytest.approx(float(r["baseline"]))
    kept0 = {r["basis"]: float(r["value"]) for r in rows if r["n_kept"] == "0"}
    assert max(kept0.values()) < 0.1  # no direction kept: near chance (1/113)


def test_ablate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ablate_command([str(tmp_path / "nope.pt"), "--layers", "unembed", "--out",
                           str(tmp_path / "o")]) == 1  # fmt: skip
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate_command([str(RIB_MODADD_CHECKPOINT), "--layers", "output", "--out", "x"])
