"""The interbasis command: graph on a trained run, data files, errors; the demo (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch

from experiments.train import quick_config, train
from interbasis.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(quick_config(steps=60, progress=False), out)
    return out


def test_graph_of_a_training_run(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g"
    code = main(["graph", str(run_dir), "--layers", "blocks.0.ln2", "unembed", "output",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    for name in ("graph.graphml", "graph.npz", "graph.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    g = nx.read_graphml(out / "graph.graphml")
    assert g.number_of_nodes() == sum(summary["nodes"].values())
    assert summary["n_inputs"] > 0 and len(summary["edges_for_90pct"]) == 2
    printed = capsys.readouterr().out
    assert "nodes per layer" in printed and f"wrote {out / 'graph.graphml'}" in printed


def test_graph_with_a_tensor_file_and_pca(run_dir: Path, tmp_path: Path) -> None:
    from experiments.checkpoint_io import task_for_checkpoint

    inputs = task_for_checkpoint(run_dir).test_inputs[:40]
    torch.save(inputs, tmp_path / "inputs.pt")
    out = tmp_path / "p"
    code = main(["graph", str(run_dir), "--layers", "unembed", "output", "--data",
                 str(tmp_path / "inputs.pt"), "--basis", "pca", "--out", str(out),
                 "--no-modules", "--quiet"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_inputs"] == 40 and summary["basis"] == "pca" and "modules" not in summary


def test_errors_are_reported_not_raised(run_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["graph", str(run_dir), "--layers", "blocks.0.ln9", "output",
                 "--out", str(tmp_path / "e"), "--quiet"])  # fmt: skip
    assert code == 1
    assert "unknown node layer 'blocks.0.ln9'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match="cannot create output directory"):
        main(["graph", str(run_dir), "--layers", "unembed", "output", "--out",
              str(blocker / "sub"), "--quiet"])  # fmt: skip
    with pytest.raises(SystemExit, match="--data must be"):
        main(["graph", str(run_dir), "--layers", "unembed", "output", "--data", "nowhere.pt",
              "--out", str(tmp_path / "d"), "--quiet"])  # fmt: skip


@pytest.mark.slow
def test_demo_writes_graphml_and_figure(tmp_path: Path) -> None:
    """The README's demo command, as a user runs it."""
    out = tmp_path / "demo_out"
    result = subprocess.run(
        [sys.executable, "-m", "interbasis.cli", "demo", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    assert "wrote" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nodes"] == {"blocks.0.ln1": 110, "blocks.0.ln2": 57, "unembed": 84,
                                "output": 114}  # fmt: skip
    assert nx.read_graphml(out / "graph.graphml").number_of_nodes() == 365
    assert (out / "graph.png").stat().st_size > 10_000


def test_atlas_subcommand_is_wired(tmp_path: Path, capsys) -> None:
    """`interbasis atlas` reaches the atlas command: a missing target is a clear error and
    leaves no report directory behind."""
    out = tmp_path / "atlas"
    assert main(["atlas", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
