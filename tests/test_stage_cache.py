"""Staged, resumable builds (issue 22): atomic stage files, partial sums, invalidation."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from interbasis import build_bases, build_graph
from interbasis.errors import FormatError
from interbasis.grams import JacobianGramAccumulator
from interbasis.sources import SourceSpread
from interbasis.stage_cache import (
    CacheDir,
    PartialSums,
    StageCache,
    hash_batches,
    hash_model,
    hash_value,
    jacobian_gram_state,
    restore_jacobian_gram,
)

WIRED = "cache_dir" in inspect.signature(build_graph).parameters
needs_wiring = pytest.mark.skipif(
    not WIRED,
    reason="needs the build wiring (/tmp/helpers/distributed_wiring.patch): build_graph has "
    "no cache_dir= yet",
)
ROOT = Path(__file__).resolve().parents[1]


def cached(cache_dir: Any) -> dict[str, Any]:
    """``cache_dir=`` for build_graph (typed Any so mypy passes before the wiring)."""
    return {"cache_dir": cache_dir}


# --- hashing and keys -----------------------------------------------------------------------
def test_model_and_data_hashes_change_with_any_weight_or_batch() -> None:
    net = nn.Linear(3, 2)
    before = hash_model(net)
    twin = nn.Linear(3, 2)
    twin.load_state_dict(net.state_dict())
    assert hash_model(twin) == before
    with torch.no_grad():
        w = net.weight[1, 2]
        net.weight[1, 2] = torch.nextafter(w, w + 1)  # one ulp of one weight
    assert hash_model(net) != before
    x = torch.randn(8, 3)
    assert hash_batches([x[:4], x[4:]]) == hash_batches([x[:4].clone(), x[4:].clone()])
    y = x.clone()
    y[7, 0] = y[7, 0] + 1e-6
    assert hash_batches([y[:4], y[4:]]) != hash_batches([x[:4], x[4:]])
    assert hash_batches([x]) != hash_batches([x.double()])  # the dtype is part of it


def test_stage_keys_depend_on_their_parts_only(tmp_path) -> None:
    cache = StageCache(tmp_path, {"model": "m", "data": "d"})
    M = torch.randn(3, 3, dtype=torch.float64)
    auto = cache.key("basis a", {"M": M, "truncation": "auto"})
    assert cache.key("basis a", {"M": M.clone(), "truncation": "auto"}) == auto
    assert cache.key("basis a", {"M": M, "truncation": 1e-12}) != auto
    assert cache.key("basis a", {"M": M + 1e-15, "truncation": "auto"}) != auto
    other = StageCache(tmp_path, {"model": "m2", "data": "d"})
    assert other.key("basis a", {"M": M, "truncation": "auto"}) != auto
    # an output selector is hashed by name (its address differs between processes)
    assert hash_value({"output": test_stage_keys_depend_on_their_parts_only}) == hash_value(
        {"output": test_stage_keys_depend_on_their_parts_only}
    )


# --- stage files ----------------------------------------------------------------------------
def test_a_finished_stage_is_loaded_and_a_changed_one_recomputed(tmp_path) -> None:
    cache = StageCache(tmp_path, {"model": "m"})
    calls: list[float] = []

    def compute(scale: float):
        def run(_: PartialSums) -> dict:
            calls.append(scale)
            return {"M": scale * torch.eye(2, dtype=torch.float64)}

        return run

    v1, fresh1 = cache.cached("M a", {"scale": 1.0}, compute(1.0))
    v2, fresh2 = cache.cached("M a", {"scale": 1.0}, compute(1.0))
    v3, _ = cache.cached("M a", {"scale": 2.0}, compute(2.0))
    assert calls == [1.0, 2.0] and fresh1 and not fresh2
    assert torch.equal(v1["M"], v2["M"]) and torch.equal(v3["M"], 2 * torch.eye(2).double())
    assert cache.log == [("M a", "computed"), ("M a", "loaded"), ("M a", "computed")]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.startswith("M_a-")]) == 2  # no temporary files
    assert all(not n.endswith(".tmp") for n in names)


def test_a_corrupt_stage_file_is_recomputed_not_trusted(tmp_path) -> None:
    cache = StageCache(tmp_path, {})
    cache.cached("grams", {}, lambda _: {"n": 1})
    (path,) = tmp_path.glob("grams-*.pt")
    path.write_bytes(path.read_bytes()[:20])  # a torn file (not written by atomic_write)
    value, fresh = cache.cached("grams", {}, lambda _: {"n": 2})
    assert value == {"n": 2} and fresh


# --- partial sums ---------------------------------------------------------------------------
def _grads(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 5, 1, 4, generator=g, dtype=torch.float64) for _ in range(n)]


def _long_stage(batches: list[torch.Tensor], fail_at: int | None, seen: list[int]):
    """An M-like stage over ``batches`` that checkpoints through its PartialSums."""

    def compute(partial: PartialSums) -> dict:
        start, state = partial.resume()
        acc, spread = (
            restore_jacobian_gram(state) if state else (JacobianGramAccumulator(4), SourceSpread())
        )
        for b, grads in enumerate(batches):
            if b < start:
                continue
            if b == fail_at:
                raise KeyboardInterrupt("killed")  # what a kill does to the stage
            seen.append(b)
            acc.update(grads)
            acc.add_samples(5)
            spread.add(grads.pow(2).sum((1, 2, 3)))
            spread.end_batch()
            partial.step(b + 1, lambda: jacobian_gram_state(acc, spread))
        return {"M": acc.value, "count": acc.count, "total": spread.total}

    return compute


@pytest.mark.parametrize("every", [1, 3])
def test_a_killed_stage_resumes_from_its_partial_sums(tmp_path, every: int) -> None:
    batches = _grads(10)
    want, _ = StageCache(tmp_path / "plain", {}).cached("M", {}, _long_stage(batches, None, []))
    cache = StageCache(tmp_path / "c", {}, every=every)
    seen: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        cache.cached("M", {}, _long_stage(batches, 7, seen))
    assert seen == list(range(7))
    (partial,) = (tmp_path / "c").glob("M.partial.r0of1-*.pt")
    seen = []
    got, fresh = cache.cached("M", {}, _long_stage(batches, None, seen))
    saved = 7 // every * every  # the last checkpoint before the kill
    assert seen == list(range(saved, 10)) and 7 - saved < every  # at most `every` lost
    assert not fresh and cache.log[-1] == ("M", "resumed")
    assert torch.equal(got["M"], want["M"]) and got["count"] == want["count"] == 50
    assert got["total"] == pytest.approx(want["total"], rel=1e-14)
    assert not partial.exists()  # removed once the stage is saved


def partial_state(b: int) -> Callable[[], dict[str, int]]:
    return lambda: {"b": b}


def test_partial_sums_are_saved_every_k_batches_atomically(tmp_path) -> None:
    cache = StageCache(tmp_path, {}, every=4)
    partial = PartialSums(cache, "M x", "k")
    for b in range(1, 10):
        partial.step(b, partial_state(b))
    assert partial.saves == 2 and partial.resume() == (8, {"b": 8})

    def broken() -> dict:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        partial.step(12, broken)
    assert partial.resume() == (8, {"b": 8})  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_cache_dir_checks_its_interval() -> None:
    with pytest.raises(ValueError, match="every"):
        CacheDir("x", every=0)


def test_an_unreadable_partial_file_starts_the_stage_over(tmp_path) -> None:
    cache = StageCache(tmp_path, {}, every=1)
    partial = PartialSums(cache, "M x", "k")
    partial.step(1, lambda: {"b": 1})
    assert partial.file is not None
    partial.file.write_bytes(b"not a checkpoint")
    assert partial.resume() == (0, None)
    with pytest.raises(FormatError):
        from interbasis.stage_cache import _load

        _load(partial.file)


# --- whole builds (need the wiring) ---------------------------------------------------------
class LoggedBatches(list):
    """Batches that count the passes over them (and log each batch to a file when asked)."""

    def __init__(self, batches: list[torch.Tensor], log: str | None = None) -> None:
        super().__init__(batches)
        self.log, self.passes = log, 0

    def __iter__(self):
        self.passes += 1
        for i, x in enumerate(list.__iter__(self)):
            if self.log:
                with open(self.log, "a", encoding="utf-8") as fh:
                    fh.write(f"{self.passes} {i}\n")
            yield x


def _seq_net() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(96, 5, dtype=torch.float64)
    return net.double().eval(), list(torch.split(x, 16))


LAYERS = ["0", "2", "4", "output"]


def _stages(cache_dir: Path, skip: int = 0) -> list[tuple[str, str]]:
    import json

    lines = (cache_dir / "stages.jsonl").read_text().splitlines()[skip:]
    return [(d["stage"], d["result"]) for d in map(json.loads, lines)]


@needs_wiring
def test_changing_truncation_recomputes_only_bases_and_edges(tmp_path) -> None:
    net, batches = _seq_net()
    first = LoggedBatches(batches)
    g1 = build_graph(net, first, LAYERS, progress=False, **cached(tmp_path))
    n_first = len(_stages(tmp_path))
    second = LoggedBatches(batches)
    # no eigenvalue of this well-conditioned net lies between the two floors: same nodes
    g2 = build_graph(net, second, LAYERS, progress=False, **cached(tmp_path), truncation=1e-13)
    log = _stages(tmp_path, n_first)
    kinds: dict[str, set[str]] = {}
    for stage, result in log:
        kinds.setdefault(stage.split()[0], set()).add(result)
    # an edge matrix is keyed by the bytes of its two bases: it is recomputed exactly where the
    # new truncation changed a basis (in any bit), and loaded where both came out identical
    assert kinds["grams"] == kinds["M"] == {"loaded"} and kinds["basis"] == {"computed"}
    recomputed = [stage for stage, result in log if stage.startswith("edges") and result ==
                  "computed"]  # fmt: skip
    old = build_bases(net, batches, LAYERS, progress=False)
    new = build_bases(net, batches, LAYERS, progress=False, truncation=1e-13)
    same = [torch.equal(a.C, b.C) for a, b in zip(old, new, strict=True)]
    changed = [f"edges {LAYERS[i]}" for i in range(len(LAYERS) - 1)
               if not (same[i] and same[i + 1])]  # fmt: skip
    assert sorted(recomputed) == sorted(changed) and kinds["edges"] <= {"computed", "loaded"}
    # passes: the data hash, then one per recomputed edge matrix; no Gram pass, no M pass
    assert second.passes == 1 + len(recomputed) < first.passes
    for a, b in zip(g1.edges, g2.edges, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)
    third = LoggedBatches(batches)
    build_graph(net, third, LAYERS, progress=False, **cached(tmp_path), truncation=1e-13)
    assert third.passes == 1  # the hash only: every stage loaded
    assert {r for _, r in _stages(tmp_path, n_first + len(log))} == {"loaded"}


CHILD = """
import sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
from test_stage_cache import LoggedBatches, _kill_case
from interbasis import build_graph
from interbasis.stage_cache import CacheDir
model, batches, layers = _kill_case()
build_graph(model, LoggedBatches(batches, {log!r}), layers, progress=False,
            cache_dir=CacheDir({cache!r}, every={every}))
"""


def _kill_case() -> tuple[nn.Module, list[torch.Tensor], list[str]]:
    from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task

    x = rib_modadd_task().train_inputs[:480]
    return load_rib_modadd(), list(torch.split(x, 8)), ["blocks.0.ln2", "unembed", "output"]


@needs_wiring
def test_a_build_killed_mid_M_resumes_and_loses_at_most_k_batches(tmp_path) -> None:
    every = 4
    cache, log = tmp_path / "cache", tmp_path / "batches.log"
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), log=str(log),
                        cache=str(cache), every=every)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 240
    try:
        while not list(cache.glob("M_blocks.0.ln2.partial*")):
            assert child.poll() is None, "the build ended before M of blocks.0.ln2 was checkpointed"
            assert time.monotonic() < deadline, "no checkpoint of M within 240 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    (partial,) = cache.glob("M_blocks.0.ln2.partial*")
    saved = torch.load(partial, weights_only=True)["value"]["next_batch"]
    _, last_batch = map(int, log.read_text().splitlines()[-1].split())
    assert 0 < saved and last_batch + 1 - saved <= every  # work lost: at most K batches
    print(f"killed in batch {last_batch} of 60, resumed at batch {saved}, K = {every}")

    model, batches, layers = _kill_case()
    resumed = build_graph(model, batches, layers, progress=False,
                          **cached(CacheDir(cache, every=every)))  # fmt: skip
    assert ("M blocks.0.ln2", "resumed") in _stages(cache)
    plain = build_graph(model, batches, layers, progress=False)
    for a, b in zip(resumed.edges, plain.edges, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)
    for la, lb in zip(resumed.layers, plain.layers, strict=True):
        np.testing.assert_allclose(la.eigenvalues, lb.eigenvalues, rtol=1e-10, atol=0)
