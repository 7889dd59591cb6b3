"""The README's demo, fast: its Python example and `interbasis demo` on the first 256 inputs of
rib's train split (the full demo, 3 830 inputs, runs in tests/test_cli.py, marked slow).

Both run the code a user runs — the README's block as written (only the data sliced), the
``demo`` command through ``interbasis.cli.main`` — so either fails when the demo breaks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
N = 256  # rib's train split is already a random permutation: its head is a fair sample
LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]


def readme_python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "README.md should hold exactly one ```python example"
    return blocks[0]


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = readme_python_block()
    assert "task.train_inputs" in code, "the README example no longer uses task.train_inputs"
    code = code.replace("task.train_inputs", f"task.train_inputs[:{N}]")
    code += (
        "\nimport json\n"
        "print(json.dumps({'nodes': [layer.size for layer in graph.layers],\n"
        "                  'edges90': graph.edges_needed(0.9), 'modules': partition.sizes}))\n"
    )
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    G = nx.read_graphml(tmp_path / "modadd.graphml")
    assert G.number_of_nodes() == sum(found["nodes"])
    # node layers blocks.0.ln2, unembed, output; the output keeps its 114 logits
    assert len(found["nodes"]) == 3 and found["nodes"][-1] == 114
    # figures of this run (float64, seeded Leiden); the full split gives 57, 84, 114 and 18
    assert found["nodes"] == [55, 84, 114] and found["edges90"] == [20, 364], found
    assert sum(found["modules"]) > 0
    modules = {d["module"] for _, d in G.nodes(data=True)}
    assert len(modules - {-1}) == len(found["modules"])  # every module written to the file


def test_demo_command_writes_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import experiments.checkpoint_io as checkpoint_io
    from interbasis.cli import main

    calls: list[str] = []
    real = checkpoint_io.task_for_checkpoint

    def head_of_split(checkpoint: Any) -> Any:
        calls.append(str(checkpoint))
        task = real(checkpoint)
        return type("Head", (), {"train_inputs": task.train_inputs[:N],
                                 "test_inputs": task.test_inputs[:N],
                                 "inputs": task.inputs[:N]})()  # fmt: skip

    monkeypatch.setattr(checkpoint_io, "task_for_checkpoint", head_of_split)
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert calls, "the demo no longer loads its data through task_for_checkpoint"
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_inputs"] == N and summary["node_layers"] == LAYERS
    nodes = summary["nodes"]
    assert list(nodes) == LAYERS and nodes["output"] == 114
    # bases are computed from the output backwards: ln2 and unembed as in the README example
    assert (nodes["blocks.0.ln2"], nodes["unembed"]) == (55, 84), nodes
    assert f"nodes per layer: {nodes}" in printed
    for name in ("graph.graphml", "graph.npz", "graph.png", "graph.html", "summary.json"):
        assert f"wrote {out / name}" in printed
        assert (out / name).stat().st_size > 0, name
    G = nx.read_graphml(out / "graph.graphml")
    assert G.number_of_nodes() == sum(nodes.values())
    assert sorted(summary["modules"]["sizes"], reverse=True) == summary["modules"]["sizes"]
    assert (out / "graph.png").stat().st_size > 10_000
    html = (out / "graph.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "blocks.0.ln2" in html
