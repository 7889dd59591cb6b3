"""The ``interbasis`` command's errors (issue 19): one ``error: ...`` line on stderr, exit code
1, no traceback, and options refused before the expensive work.

Runs ``interbasis.cli.main`` in-process on the shipped rib checkpoint with a small data file;
one test runs ``python -m interbasis.cli`` as a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from interbasis.cli import main


@pytest.fixture(scope="module")
def checkpoint() -> str:
    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT

    return str(RIB_MODADD_CHECKPOINT)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 token triples of add mod 113 (the rib checkpoint's task)."""
    path = tmp_path_factory.mktemp("data") / "inputs.pt"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 113, (16, 3), generator=g)
    x[:, 2] = 113  # the "=" token
    torch.save(x, path)
    return path


def one_error_line(text: str) -> str:
    """The single ``error: ...`` line of ``text`` (fails if there are more lines)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in text
    return lines[0]


def exit_message(argv: list[str]) -> str:
    """The message of the ``SystemExit`` that ``main(argv)`` raises (its one error line)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return one_error_line(str(info.value.code))


def test_weight_edges_on_a_non_affine_section_are_refused_before_any_pass(
    checkpoint: str, inputs: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """Issue 19: `graph --edges weight` fails after 19 s of Grams and Jacobians; now the first
    batch decides, before any pass over the data (a pass here would fail the test)."""
    import interbasis.graph_build as gb

    def no_pass(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a pass over the data ran before edges='weight' was checked")

    monkeypatch.setattr(gb, "accumulate_activation_grams", no_pass)
    out = tmp_path / "w"
    code = main(["graph", checkpoint, "--layers", "blocks.0.ln2", "unembed", "output", "--edges",
                 "weight", "--data", str(inputs), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert "needs an affine section, but 'blocks.0.ln2' -> 'unembed' is not affine" in line
    assert 'use edges="squared"' in line
    assert not out.exists()  # nothing written


def test_data_file_that_torch_cannot_load(checkpoint: str, tmp_path: Path) -> None:
    bad = tmp_path / "inputs.pt"
    bad.write_text("token ids, one per line")
    line = exit_message(["graph", checkpoint, "--layers", "unembed", "output", "--data",
                         str(bad), "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert f"--data {bad} is not a tensor file written by torch.save" in line
    assert "(torch.load failed with " in line


def test_data_file_that_holds_no_tensor(checkpoint: str, tmp_path: Path) -> None:
    path = tmp_path / "inputs.pt"
    torch.save({"inputs": [1, 2, 3]}, path)
    line = exit_message(["graph", checkpoint, "--layers", "unembed", "output", "--data",
                         str(path), "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert f"--data {path} holds a dict, not a tensor of model inputs" in line


def test_output_folder_that_cannot_be_written(
    checkpoint: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """(This suite runs as root, for whom every folder is writable: os.access is patched.)"""
    import interbasis.cli as cli

    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    line = exit_message(["graph", checkpoint, "--layers", "unembed", "output",
                         "--out", str(tmp_path / "new" / "out"), "--quiet"])  # fmt: skip
    assert f"cannot create output directory {tmp_path / 'new' / 'out'}: {tmp_path} is not " in line
    assert line.endswith("writable")


def test_cache_folder_that_is_a_file(
    checkpoint: str, inputs: Path, tmp_path: Path, capsys: Any
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file")
    code = main(["graph", checkpoint, "--layers", "unembed", "output", "--data", str(inputs),
                 "--cache", str(blocker), "--out", str(tmp_path / "o"), "--quiet",
                 "--no-modules"])  # fmt: skip
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"cache_dir '{blocker}' cannot be used as the stage cache directory" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- unembed\n- output\n", "must hold a mapping of option: value"),
        ("layers: [unembed\n", "is not valid YAML at line 2, column 1: expected ',' or ']'"),
    ],
    ids=["a-list", "unclosed-bracket"],
)
def test_config_file_errors_are_one_line(text: str, expected: str, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    line = exit_message(["graph", "--config", str(config)])
    assert f"--config {config} {expected}" in line


def test_config_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    line = exit_message(["graph", "--config", str(missing)])
    assert line == f"error: cannot read --config {missing}: No such file or directory"
    line = exit_message(["view", "--config", str(tmp_path)])  # a folder
    assert line.startswith(f"error: cannot read --config {tmp_path}: ")


@pytest.mark.parametrize("command", ["train", "atlas", "ablate"])
def test_delegated_config_flag_without_a_file(command: str) -> None:
    assert exit_message([command, "--config"]) == "error: --config needs a FILE.yaml"


def test_module_entry_point_reports_one_error_line(tmp_path: Path) -> None:
    """``python -m interbasis.cli``: exit code 1 and one error line, no traceback."""
    missing = tmp_path / "graph.npz"
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "interbasis.cli", "view", str(missing)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert one_error_line(result.stderr) == f"error: graph file {missing} not found"
    assert time.time() - started < 60
