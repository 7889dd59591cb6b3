"""Data- and output-unit-parallel builds on torch.distributed (issue 22, DESIGN §7).

Two (or three) gloo processes are spawned on this CPU by :func:`interbasis.distributed.spawn`;
each test has a timeout, so a hang fails instead of blocking CI. Worker functions live at
module level so that the spawned processes can import them.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from interbasis import build_graph
from interbasis.basis import neuron_basis
from interbasis.distributed import (
    DistributedError,
    Shard,
    all_reduce_sum,
    get_shard,
    shard_batches,
    spawn,
    unit_range,
)
from interbasis.edges import SquaredEdges
from interbasis.grams import GramAccumulator, JacobianGramAccumulator
from interbasis.section import JacobianChunk
from interbasis.sources import Sources, SourceSpread, output_units

TIMEOUT = 120.0  # seconds for a spawned group; importing torch twice takes ~10 s here
TOL = 1e-10  # float64 sums in another order: round-off is ~1e-15 relative

WIRED = "process_group" in inspect.signature(build_graph).parameters
needs_wiring = pytest.mark.skipif(
    not WIRED,
    reason="needs the build wiring (/tmp/helpers/distributed_wiring.patch): build_graph has "
    "no process_group= yet",
)


def rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """``max |a - b| / max |b|`` (the absolute difference when ``b`` is zero)."""
    x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for v in (a, b))  # fmt: skip
    scale = float(np.abs(y).max())
    diff = float(np.abs(x - y).max())
    return diff / scale if scale else diff


# --- splitting ------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "world"), [(7, 2), (6, 3), (2, 3), (1, 4)])
def test_shards_are_disjoint_and_cover_every_batch(n: int, world: int) -> None:
    shards = [list(shard_batches(range(n), r, world)) for r in range(world)]
    assert sorted(b for s in shards for b in s) == list(range(n))
    assert [len(s) for s in shards] == [math.ceil((n - r) / world) for r in range(world)]
    if world > n:
        assert shards[-1] == []  # an empty shard


@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 3), (0, 2)])
def test_unit_ranges_are_disjoint_and_cover_every_unit(n: int, world: int) -> None:
    ranges = [unit_range(n, r, world) for r in range(world)]
    assert [u for rg in ranges for u in rg] == list(range(n))


def test_bad_rank_and_missing_group_are_named() -> None:
    with pytest.raises(ValueError, match="rank=2, world=2"):
        list(shard_batches(range(3), 2, 2))
    with pytest.raises(DistributedError, match="not initialised"):
        get_shard(process_group=object())
    assert get_shard() == Shard()  # no process group: the single-process build
    with pytest.raises(ValueError, match="split_over"):
        get_shard(split_over="rows")  # type: ignore[arg-type]


# --- accumulators: each rank sums its shard, the all-reduce gives the full sums ---------------
N_BATCHES, D, K, S = 5, 4, 3, 4


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Deterministic batches of (activations (b, P, D), Jacobian grads (K, b, P, D),
    source-sample contributions (S,)), uneven batch sizes, mean far from 0."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        b = 3 + i
        acts = 5.0 + torch.randn(b, 2, D, generator=g, dtype=torch.float64)
        grads = torch.randn(K, b, 2, D, generator=g, dtype=torch.float64)
        out.append((acts, grads, torch.rand(S, generator=g, dtype=torch.float64)))
    return out


def _accumulate(shard: Shard, n_batches: int = N_BATCHES) -> dict[str, object]:
    gram: GramAccumulator | None = None
    jac: JacobianGramAccumulator | None = None
    spread = SourceSpread()
    basis = neuron_basis("in", torch.zeros(D), torch.eye(D, dtype=torch.float64), fold_bias=False)
    out_basis = neuron_basis("out", torch.zeros(K), torch.eye(K, dtype=torch.float64),
                             fold_bias=False)  # fmt: skip
    edges = SquaredEdges(basis, out_basis)
    units = output_units(torch.eye(K, dtype=torch.float64), 1, None)
    for b, (acts, grads, z) in enumerate(shard.batches(_batches(n_batches))):
        gram = gram or GramAccumulator(D)
        gram.update(acts)
        jac = jac or JacobianGramAccumulator(D)
        jac.update(grads)
        jac.add_samples(acts.shape[0] * acts.shape[1])
        spread.add(z)
        spread.end_batch()
        edges.add(b, acts, JacobianChunk(slice(0, acts.shape[0]), slice(0, K), grads, units))
    grams = shard.reduce_grams({"in": gram} if gram is not None else {}, ["in"])
    total = shard.reduce_jacobian_gram(jac)
    shard.reduce_spread(spread)
    shard.reduce_squared_edges(edges)
    return {
        "mean": grams["in"].mean, "cov": grams["in"].covariance, "n": grams["in"].count,
        "M": total.value, "M_count": total.count,
        "spread": (spread.total, spread.variance, spread.relative_standard_error),
        "E": torch.from_numpy(edges.value("in")), "E_count": edges.count,
    }  # fmt: skip


def accumulate_worker(rank: int, world: int, n_batches: int) -> dict[str, object]:
    return _accumulate(get_shard(), n_batches)


def _check_equal(got: dict[str, object], want: dict[str, object]) -> None:
    for key in ("mean", "cov", "M", "E"):
        assert rel(got[key], want[key]) < TOL, key  # type: ignore[arg-type]
    for key in ("n", "M_count", "E_count"):
        assert got[key] == want[key], key
    assert np.allclose(got["spread"], want["spread"], rtol=TOL, atol=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("world", [2, 3])  # 3 ranks: uneven shards; with 5 batches all busy
def test_all_reduce_of_every_accumulator_equals_one_process(world: int) -> None:
    want = _accumulate(Shard())
    for got in spawn(accumulate_worker, world, (N_BATCHES,), timeout=TIMEOUT):
        _check_equal(got, want)


def test_a_rank_with_an_empty_shard_contributes_zeros() -> None:
    want = _accumulate(Shard(), n_batches=1)  # 2 ranks, 1 batch: rank 1's shard is empty
    for got in spawn(accumulate_worker, 2, (1,), timeout=TIMEOUT):
        _check_equal(got, want)


def reduce_worker(rank: int, world: int) -> list[float]:
    t = torch.tensor([1.0, 2.0], dtype=torch.float32) * (rank + 1)
    out = all_reduce_sum(t)
    assert out.dtype == torch.float64 and t.dtype == torch.float32  # input untouched
    return out.tolist() + all_reduce_sum(t, op="max").tolist()


def test_all_reduce_sum_is_float64_and_same_on_every_rank() -> None:
    assert spawn(reduce_worker, 2, timeout=TIMEOUT) == [[3.0, 6.0, 2.0, 4.0]] * 2


# --- errors ----------------------------------------------------------------------------------
def raising_worker(rank: int, world: int) -> str:
    shard = get_shard()
    with shard.stage("M blocks.0"):
        if rank == 1:
            raise ValueError("bad batch 3 on rank 1")
    shard.sum(torch.ones(1))  # never reached: the stage raised on every rank
    return "finished"


def test_a_raising_rank_stops_every_rank_with_a_clear_error() -> None:
    with pytest.raises(DistributedError) as info:
        spawn(raising_worker, 2, timeout=TIMEOUT)
    message = str(info.value)
    # rank 1 re-raises its own error; rank 0 names rank 1, its error and the stage
    assert "rank 1: ValueError: bad batch 3 on rank 1" in message
    assert "rank 0: DistributedError: stage 'M blocks.0' failed on another rank" in message


def write_worker(rank: int, world: int, path: str) -> list[str]:
    from pathlib import Path

    def write(tmp: Path) -> None:
        tmp.write_text(f"written by rank {rank}")

    get_shard().write_on_rank0(path, write)
    return sorted(p.name for p in Path(path).parent.iterdir())  # after rank 0 has written


def test_rank_zero_writes_atomically_and_every_rank_waits(tmp_path) -> None:
    target = tmp_path / "graph.json"
    listings = spawn(write_worker, 2, (str(target),), timeout=TIMEOUT)
    assert target.read_text() == "written by rank 0"
    assert listings == [["graph.json"], ["graph.json"]]  # no temporary file left behind


# --- whole builds (need the wiring in build.py / graph_build.py) -----------------------------
MODADD_LAYERS = ["blocks.0.ln2", "unembed", "output"]


def _modadd() -> tuple[nn.Module, torch.Tensor]:
    from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task

    return load_rib_modadd(), rib_modadd_task().train_inputs[:300]  # a subset: fast


class Mix(nn.Module):
    """Mixes positions with a fixed matrix, then a position-wise tanh layer."""

    def __init__(self, p: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(p, p) / p**0.5)
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(torch.einsum("st,btd->bsd", self.mix, x)))


class SeqNet(nn.Module):
    """A 2-layer sequence model (positions mixed in each layer) with a linear head."""

    def __init__(self, p: int = 4, d: int = 5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Mix(p, d, 6), Mix(p, 6, 5)])
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


SEQ_LAYERS = ["blocks.0", "blocks.1", "head", "output"]


def _seq() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    return SeqNet().double().eval(), torch.randn(90, 4, 5, dtype=torch.float64)


def _graph(which: str, **kw: object) -> dict[str, object]:
    model, data = _modadd() if which == "modadd" else _seq()
    layers = MODADD_LAYERS if which == "modadd" else SEQ_LAYERS
    g = build_graph(model, data, layers, dtype=torch.float64, device="cpu", batch_size=32,
                    progress=False, **kw)  # type: ignore[arg-type]  # fmt: skip
    return {
        "lambda": [layer.eigenvalues for layer in g.layers],
        "edges": g.edges,
        "n": g.metadata["n_samples"],
        "world": g.metadata.get("distributed"),
    }


def graph_worker(rank: int, world: int, which: str, kw: dict[str, object]) -> dict[str, object]:
    torch.set_num_threads(1)
    return _graph(which, **kw)


def _same_graph(got: dict[str, object], want: dict[str, object]) -> None:
    assert got["n"] == want["n"]
    for a, b in zip(got["lambda"], want["lambda"], strict=True):  # type: ignore[call-overload]
        assert a.shape == b.shape
        ok = ~np.isnan(b)
        assert np.array_equal(np.isnan(a), ~ok) and rel(a[ok], b[ok]) < TOL
    for a, b in zip(got["edges"], want["edges"], strict=True):  # type: ignore[call-overload]
        assert a.shape == b.shape and rel(a, b) < TOL  # edges are squares: sign-free


@needs_wiring
@pytest.mark.parametrize("which", ["modadd", "seq"])
@pytest.mark.parametrize("split_over", ["data", "units"])
def test_two_ranks_build_the_same_graph_as_one(which: str, split_over: str) -> None:
    torch.set_num_threads(1)
    want = _graph(which)
    results = spawn(graph_worker, 2, (which, {"split_over": split_over}), timeout=300)
    for got in results:
        _same_graph(got, want)
        assert got["world"] == {"world_size": 2, "split_over": split_over}


def shards_worker(rank: int, world: int, which: str, rows: list[int]) -> dict[str, object]:
    """Rank r is handed only rows ``[rows[r], rows[r + 1])`` of the data."""
    torch.set_num_threads(1)
    model, data = _modadd() if which == "modadd" else _seq()
    layers = MODADD_LAYERS if which == "modadd" else SEQ_LAYERS
    g = build_graph(model, data[rows[rank] : rows[rank + 1]], layers, dtype=torch.float64,
                    batch_size=32, progress=False, split_over="shards")  # fmt: skip
    return {"lambda": [layer.eigenvalues for layer in g.layers], "edges": g.edges,
            "n": g.metadata["n_samples"], "world": g.metadata["distributed"]}  # fmt: skip


@needs_wiring
@pytest.mark.parametrize("rows", [[0, 50, 90], [0, 0, 90]], ids=["uneven", "empty-rank-0"])
def test_ranks_given_their_own_shards_build_the_same_graph_as_one(rows: list[int]) -> None:
    """split_over="shards" (``interbasis graph --shard``): each rank holds only its rows."""
    torch.set_num_threads(1)
    want = _graph("seq")
    for got in spawn(shards_worker, 2, ("seq", rows), timeout=300):
        _same_graph(got, want)
        assert got["world"] == {"world_size": 2, "split_over": "shards"}


@needs_wiring
def test_units_split_over_ranks_with_batches_split_by_the_budget() -> None:
    """Ranks that split the output units, each VJP pass over slices of the batch (a memory
    budget too small for one unit over the whole batch): the same graph as one process."""
    torch.set_num_threads(1)
    want = _graph("seq")
    kw = {"split_over": "units", "memory_budget": 4096}
    for got in spawn(graph_worker, 2, ("seq", kw), timeout=300):
        _same_graph(got, want)


@needs_wiring
@pytest.mark.slow  # two spawned groups: ~25 s here
def test_stochastic_sources_reproduce_themselves_at_a_fixed_world_size() -> None:
    kw = {"sources": Sources(positions=2, seed=5), "edge_sources": Sources(positions=2, seed=5)}
    first = spawn(graph_worker, 2, ("seq", kw), timeout=300)
    second = spawn(graph_worker, 2, ("seq", kw), timeout=300)
    for a, b in zip(first + second[:1], second + first[:1], strict=True):
        for x, y in zip(a["edges"], b["edges"], strict=True):  # type: ignore[call-overload]
            assert np.array_equal(x, y)  # bit for bit
    exact = _graph("seq")  # unbiased: same order of magnitude, not equal
    assert not np.array_equal(first[0]["edges"][0], exact["edges"][0])  # type: ignore[index]
