"""``interbasis graph --cache``: a rerun reuses the finished stages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT, rib_modadd_task
from graphs import load_npz

LAYERS = ["blocks.0.ln2", "unembed", "output"]


def _graph_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "interbasis", "graph", str(RIB_MODADD_CHECKPOINT), "--layers", *LAYERS,
            "--data", str(data), "--out", str(out), "--quiet", "--no-modules", *extra]  # fmt: skip


def test_cache_reruns_from_finished_stages(tmp_path: Path) -> None:
    data = tmp_path / "x.pt"
    torch.save(rib_modadd_task().train_inputs[:200], data)
    cache = tmp_path / "cache"
    stamps: list[dict[Path, int]] = []
    for out in ("a", "b"):
        r = subprocess.run([sys.executable, *_graph_cmd(data, tmp_path / out, "--cache",
                                                         str(cache))],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        stamps.append({f: f.stat().st_mtime_ns for f in cache.glob("*.pt")})
    assert stamps[0], "the stage cache holds the finished stages"
    assert stamps[1] == stamps[0], "the rerun loads every stage instead of rewriting it"
    log = [json.loads(line)["result"] for line in (cache / "stages.jsonl").read_text().splitlines()]
    assert set(log[len(log) // 2 :]) == {"loaded"}
    a, b = load_npz(tmp_path / "a" / "graph.npz"), load_npz(tmp_path / "b" / "graph.npz")
    for x, y in zip(a.edges, b.edges, strict=True):
        np.testing.assert_array_equal(x, y)
