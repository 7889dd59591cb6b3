"""``torchrun --nproc_per_node=2 -m interbasis graph|atlas``: two gloo ranks on this CPU.

Each torchrun test runs the launcher in its own session with a hard timeout; on timeout the
whole process group (launcher and ranks) is killed and the test fails with the output so far.
(An earlier version of this test hung: a launcher killed on timeout leaves its ranks running,
and they keep the pipes a ``communicate()`` waits on open. Output goes to a file here.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT, load_checkpoint, rib_modadd_task
from graphs import load_npz
from interbasis import build_graph
from interbasis.cli import _backend, _init_distributed, _single_rank, main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["blocks.0.ln2", "unembed", "output"]
TIMEOUT = 240  # seconds; a run takes about 10 s on 2 busy cores
N, BATCH = 100, 16  # 7 batches: rank 0 gets 4 (one of them short), rank 1 gets 3
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(log: Path, *args: str) -> tuple[int, str]:
    """Exit code and output (stdout + stderr) of ``torchrun --nproc_per_node=2 -m interbasis``."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if sys.platform.startswith("linux"):  # gloo on loopback, whatever the hostname resolves to
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "interbasis", *args]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
            proc.wait()
            pytest.fail(f"torchrun did not finish within {TIMEOUT} s (killed): {' '.join(cmd)}"
                        f"\n{log.read_text(errors='replace')[-6000:]}")  # fmt: skip
    return code, log.read_text(errors="replace")


def _data(tmp_path: Path, bad_row: int | None = None) -> Path:
    x = rib_modadd_task().train_inputs[:N].clone()
    if bad_row is not None:
        x[bad_row, 0] = 500  # not a token of d_vocab=114
    path = tmp_path / "x.pt"
    torch.save(x, path)
    return path


def _graph_args(data: Path, out: Path) -> list[str]:
    return ["graph", str(RIB_MODADD_CHECKPOINT), "--layers", *LAYERS, "--data", str(data),
            "--batch-size", str(BATCH), "--out", str(out), "--quiet"]  # fmt: skip


@pytest.mark.parametrize("shard", [False, True], ids=["batches", "--shard"])
def test_torchrun_graph_equals_one_process(tmp_path: Path, shard: bool) -> None:
    """Ranks take every other batch, or (``--shard``) load only their slice of the rows."""
    data, out = _data(tmp_path), tmp_path / "out"
    extra = ["--shard"] if shard else []
    code, log = _torchrun(tmp_path / "log", *_graph_args(data, out), *extra)
    assert code == 0, log[-6000:]
    assert log.count(f"wrote {out / 'graph.npz'}") == 1, "rank 0 alone reports its outputs"
    for name in ("graph.npz", "graph.graphml", "graph.html", "graph.png", "config.yaml"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_inputs"] == N and summary["modules"]["sizes"], "rank 0 found the modules"
    two = load_npz(out / "graph.npz")
    split = "shards" if shard else "data"
    assert two.metadata["distributed"] == {"world_size": 2, "split_over": split}
    assert two.metadata["n_samples"] == N, "the ranks' shards add up to the data"

    one = build_graph(load_checkpoint(RIB_MODADD_CHECKPOINT), torch.load(data), LAYERS,
                      dtype=torch.float64, batch_size=BATCH, progress=False)  # fmt: skip
    assert one.metadata["distributed"]["world_size"] == 1
    assert [(a.name, a.size) for a in two.layers] == [(a.name, a.size) for a in one.layers]
    for a, b in zip(two.layers, one.layers, strict=True):
        ok = np.isfinite(b.eigenvalues)
        np.testing.assert_array_equal(np.isfinite(a.eigenvalues), ok)
        scale = np.abs(b.eigenvalues[ok]).max()
        assert np.abs(a.eigenvalues[ok] - b.eigenvalues[ok]).max() <= 1e-10 * scale, a.name
    for e2, e1 in zip(two.edges, one.edges, strict=True):
        assert e2.shape == e1.shape
        assert np.abs(e2 - e1).max() <= 1e-10 * np.abs(e1).max()


def test_torchrun_graph_error_on_one_rank_stops_both(tmp_path: Path) -> None:
    """Row 20 lies in batch 1, which only rank 1 reads: rank 1 fails, rank 0 hears of it."""
    data, out = _data(tmp_path, bad_row=20), tmp_path / "out"
    code, log = _torchrun(tmp_path / "log", *_graph_args(data, out))
    assert code != 0
    assert "error: token ids must lie in [0, d_vocab=114), got range [3, 500]" in log
    assert "error: stage 'activation Grams' failed on another rank (rank 1: DataError" in log
    assert not out.exists(), "nothing is written when a rank fails"


def _numbers(x: object) -> list[float]:
    """Every number in a JSON document, in document order (wall times left out)."""
    if isinstance(x, dict):
        timed = ("second", "time", "elapsed")
        return [v for k in sorted(x) if not any(t in k for t in timed) for v in _numbers(x[k])]
    if isinstance(x, list):
        return [v for item in x for v in _numbers(item)]
    return [float(x)] if isinstance(x, int | float) and not isinstance(x, bool) else []


def test_torchrun_atlas_splits_its_work_and_equals_one_process(tmp_path: Path) -> None:
    """Both ranks take their share of the atlas's data; rank 0 writes; the report equals a
    one-process run (relative 1e-6: the iterative eigensolvers see products summed in another
    order)."""
    args = ["atlas", str(RIB_MODADD_CHECKPOINT), "--layers", *LAYERS, "--max-samples", "64",
            "--hessian-samples", "32", "--k", "2", "--random", "1", "--no-grid"]  # fmt: skip
    out = tmp_path / "atlas"
    code, log = _torchrun(tmp_path / "log", *args, "--out", str(out))
    assert code == 0, log[-6000:]
    assert "runs atlas alone" not in log
    assert log.count(f"wrote {out / 'atlas.html'}") == 1, "rank 0 alone writes and reports"
    assert (out / "config.yaml").is_file()
    two = json.loads((out / "atlas.json").read_text())
    assert two["settings"]["k"] == 2
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "atlas.json").read_text())
    a, b = np.array(_numbers(two)), np.array(_numbers(one))
    assert a.shape == b.shape and a.size > 50
    ok = np.isfinite(b)
    np.testing.assert_array_equal(np.isfinite(a), ok)
    assert np.all(np.abs(a[ok] - b[ok]) <= 1e-6 * np.abs(b[ok]).max() + 1e-6 * np.abs(b[ok]))


# --- the rank logic without launching anything ----------------------------------------------
def _set_torchrun_env(monkeypatch: pytest.MonkeyPatch, rank: str, **extra: str) -> None:
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", **extra}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_backend_gives_each_rank_its_own_gpu_or_gloo() -> None:
    assert _backend(1, 2, 0) == ("gloo", None)
    assert _backend(1, 2, 2) == ("nccl", 1)
    assert _backend(1, 2, 4) == ("nccl", 1)
    assert _backend(1, 2, 1) == ("gloo", 0), "two ranks cannot share a GPU under NCCL"
    assert _backend(3, 4, 2) == ("gloo", 1)


def test_world_size_without_torchrun_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in TORCHRUN_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=r"WORLD_SIZE=2 .* RANK, LOCAL_RANK, MASTER_ADDR, "
                       r"MASTER_PORT not set; launch with `torchrun"):  # fmt: skip
        _init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(SystemExit, match="WORLD_SIZE must be an integer .*got 'two'"):
        _init_distributed()
    _set_torchrun_env(monkeypatch, "1", LOCAL_RANK="first")
    with pytest.raises(SystemExit, match="LOCAL_RANK must be an integer .*got 'first'"):
        _init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _init_distributed() is False, "one process: no process group"
    assert not torch.distributed.is_initialized()


def test_single_rank_commands_run_on_rank_0_only(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _set_torchrun_env(monkeypatch, "1")
    assert _single_rank("atlas") is False
    assert capsys.readouterr().err == ""
    _set_torchrun_env(monkeypatch, "0")
    assert _single_rank("atlas") is True
    assert "rank 0 runs atlas alone, ranks 1-1 exit" in capsys.readouterr().err
    monkeypatch.delenv("MASTER_ADDR")  # not a torchrun launch: run as one process
    assert _single_rank("train") is True
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _single_rank("train") is True
