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


def test_ablate_config_round_trip(tmp_path: Path) -> None:
    """``interbasis ablate --config``: the resolved config.yaml reruns the same curves."""
    import yaml

    from interbasis.cli import main

    cfg = {"checkpoint": str(RIB_MODADD_CHECKPOINT), "layers": ["unembed"],
           "bases": ["neuron"], "build_samples": 64, "counts": [0, 64]}  # fmt: skip
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert (
        main(["ablate", "--config", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "r1")]) == 0
    )
    resolved = yaml.safe_load((tmp_path / "r1" / "config.yaml").read_text())
    assert resolved["counts"] == [0, 64] and resolved["bases"] == ["neuron"]
    assert main(["ablate", "--config", str(tmp_path / "r1" / "config.yaml"),
                 "--out", str(tmp_path / "r2")]) == 0  # fmt: skip
    first = (tmp_path / "r1" / "ablation_curves.csv").read_text()
    assert (tmp_path / "r2" / "ablation_curves.csv").read_text() == first
