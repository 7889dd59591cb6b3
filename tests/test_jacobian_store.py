"""Section Jacobians kept in memory, then on disk, between M and the squared edges."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from nets import PositionMixer

import interbasis as ib
from interbasis.edges import SquaredEdges
from interbasis.jacobian_store import JacobianStore
from interbasis.section import JacobianChunk, Section
from interbasis.sources import output_units

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:positions .* never reach"),  # PositionMixer reads P 4-5
]


def _chunks(n: int = 6) -> list[tuple[int, torch.Tensor, JacobianChunk]]:
    g = torch.Generator().manual_seed(0)
    units = output_units(torch.eye(3, dtype=torch.float64), 2, None)
    out = []
    for b in range(n // 2):
        acts = torch.randn(4, 2, 5, generator=g, dtype=torch.float64)
        for u in (0, 3):  # two chunks of units per batch share its activations
            grads = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64)
            out.append((b, acts, JacobianChunk(slice(0, 4), slice(u, u + 3), grads, units)))
    return out


@pytest.mark.parametrize("memory_limit", [10**9, 1000, 1], ids=["memory", "spill", "all-disk"])
def test_replay_gives_back_every_chunk_in_order(memory_limit: int, tmp_path) -> None:
    chunks = _chunks()
    store = JacobianStore(memory_limit, directory=tmp_path)
    for b, acts, chunk in chunks:
        store(b, acts, chunk)
    assert not store.overflow
    assert store.memory <= memory_limit  # memory bounded by the limit, the rest on disk
    assert (store.spilled_bytes > 0) == (memory_limit < 10**9)
    replayed = list(store.replay())
    assert len(replayed) == len(chunks)
    for (b, acts, chunk), (b2, acts2, chunk2) in zip(chunks, replayed, strict=True):
        assert b == b2 and chunk.units == chunk2.units and chunk.samples == chunk2.samples
        assert torch.equal(acts, acts2) and torch.equal(chunk.grads, chunk2.grads)
    store.close()
    assert list(tmp_path.iterdir()) == []  # the spill file is gone
    assert store.items == [] and store.spilled_bytes == 0


def test_past_the_disk_limit_the_store_overflows_and_keeps_nothing(tmp_path) -> None:
    store = JacobianStore(1000, disk_limit=2000, directory=tmp_path)
    for b, acts, chunk in _chunks():
        store(b, acts, chunk)
    assert store.overflow and store.items == [] and store.acts == {}
    assert list(tmp_path.iterdir()) == []
    nothing = JacobianStore(0)  # jacobian_cache=0: keep nothing, always recompute
    nothing(*_chunks()[0])
    assert nothing.overflow and nothing.items == []


def _spill_files(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith("interbasis-jacobians-")]


def _open_spill_files() -> list[str]:
    """Spill files this process still holds open (unlinked at creation, so only the open file
    descriptors show them; Linux /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd (Linux) to see open files")
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [t for t in targets if "interbasis-jacobians-" in t]


def _build(cache: int, **kwargs):
    net = PositionMixer(P=6, d=5, d2=4, d_out=6).eval()
    x = torch.randn(96, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return ib.build_graph(net, x, ["first", "second", "output"], progress=False, batch_size=32,
                          jacobian_cache=cache, **kwargs)  # fmt: skip


def test_a_spilled_build_equals_the_in_memory_build_without_a_second_pass(
    monkeypatch, tmp_path
) -> None:
    """The recompute cliff is gone: Jacobians that outgrow memory go to disk and the edges
    read them back, so the section's VJP passes run once (as in memory), not twice."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    calls: list[str] = []
    original = Section.jacobians

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Section, "jacobians", counting)
    graphs, passes = {}, {}
    for name, cache in (("memory", 2**30), ("spill", 20_000), ("recompute", 0)):
        calls.clear()
        graphs[name] = _build(cache)
        passes[name] = len(calls)
    assert passes["spill"] == passes["memory"] < passes["recompute"]
    for name in ("spill", "recompute"):
        for a, b in zip(graphs["memory"].edges, graphs[name].edges, strict=True):
            np.testing.assert_array_equal(a, b)
    assert _spill_files(tmp_path) == []  # no spill file left behind
    assert _open_spill_files() == []  # nor held open


def test_a_failed_build_leaves_no_spill_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail(*args, **kwargs):
        raise RuntimeError("stop here")

    monkeypatch.setattr(SquaredEdges, "add", fail)
    with pytest.raises(RuntimeError, match="stop here"):
        _build(20_000)
    assert _spill_files(tmp_path) == []
    assert _open_spill_files() == []
