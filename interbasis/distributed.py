"""Data-parallel and output-unit-parallel builds on ``torch.distributed`` (DESIGN §7).

Every accumulator of the pipeline is a sum over samples (activation Grams, ``M``, squared
edges, their counts and the spread of stochastic estimates), so a build splits the work
between ``world`` ranks and adds the partial sums at the end of each stage::

    S = sum_r S_r,     S_r = sum over the batches (or output units) of rank r

with one float64 all-reduce per accumulator (gloo on CPU, NCCL on GPUs; launch with
``torchrun``). Two ways to split (:class:`Shard`):

- ``split_over="data"`` (default): rank r takes the batches ``b`` with ``b % world == r``
  (:func:`shard_batches`; deterministic, uneven and empty shards allowed). Stochastic sources
  are drawn from ``(seed, rank, local batch index)``, which names each batch uniquely for a
  fixed world size, so a run reproduces itself bit for bit at that world size and stays
  unbiased (independent draws per batch).
- ``split_over="units"`` (rib's ``dist_split_over: out_dim``): every rank sees every batch
  and takes a contiguous slice of the output units of each section (:func:`unit_range`), so
  ``M = sum_r M_r`` with ``M_r`` the sum over rank r's units; counts are the same on every
  rank and are not summed. Every rank draws the same sources (seed rank 0).
- ``split_over="shards"``: each rank was handed its own part of the data (e.g. ``interbasis
  graph --shard`` loads only its slice of the rows) and reads all of it; the sums are reduced
  as for ``"data"``.

Errors: every stage ends with :meth:`Shard.stage`, a collective that tells every rank whether
any rank raised, and which, so that all ranks stop with a :class:`DistributedError` naming the
failing rank and its message instead of waiting forever in the next all-reduce.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from interbasis.errors import DataError, InterbasisError
from interbasis.grams import GramAccumulator, JacobianGramAccumulator
from interbasis.sources import SourceSpread

T = TypeVar("T")
SplitOver = Literal["data", "units", "shards"]
SPLITS = ("data", "units", "shards")

__all__ = [
    "DistributedError",
    "Shard",
    "all_reduce_sum",
    "get_shard",
    "shard_batches",
    "unit_range",
]


class DistributedError(InterbasisError, RuntimeError):
    """Another rank of a distributed build failed (the message names it and its error)."""


# --- splitting the work ---------------------------------------------------------------------
def _check_rank(rank: int, world: int) -> None:
    for name, v in (("rank", rank), ("world", world)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"need 0 <= rank < world and world >= 1, got rank={rank}, world={world}")


def shard_batches(batches: Iterable[T], rank: int, world: int) -> Iterator[T]:
    """The batches ``b`` (in order) with ``b % world == rank``: disjoint shards covering all.

    Deterministic for a given data order; with ``n`` batches rank r gets
    ``ceil((n - r) / world)`` of them (possibly none).
    """
    _check_rank(rank, world)
    for b, batch in enumerate(batches):
        if b % world == rank:
            yield batch


def unit_range(n_units: int, rank: int, world: int) -> range:
    """Rank r's contiguous slice ``[n r / world, n (r+1) / world)`` of ``n_units`` output units.

    The slices are disjoint and cover ``range(n_units)``; sizes differ by at most one (empty
    when ``world > n_units``).
    """
    _check_rank(rank, world)
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 0:
        raise DataError(f"n_units must be an integer >= 0, got {n_units!r}")
    return range(n_units * rank // world, n_units * (rank + 1) // world)


def _f64(values: list[Any]) -> torch.Tensor:
    """A float64 CPU tensor (counts up to 2**53 are exact; float32 would round them)."""
    return torch.tensor(values, dtype=torch.float64)


# --- collectives ----------------------------------------------------------------------------
def _dist() -> Any:
    import torch.distributed as dist

    return dist


def comm_device(group: Any) -> torch.device:
    """Where the group's collectives run: the current CUDA device for NCCL, else the CPU."""
    if _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, group: Any = None, op: str = "sum") -> torch.Tensor:
    """Float64 sum (``op="max"``/``"min"``: max/min) of ``tensor`` over the ranks of ``group``.

    Returns a new float64 tensor on ``tensor``'s device; the input is not modified. Without an
    initialised process group (``group=None`` and none initialised) it is a float64 copy.
    """
    t = tensor.detach().to(torch.float64)
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        return t.clone()
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    buf = t.to(comm_device(group), copy=True).contiguous()
    dist.all_reduce(buf, op=ops[op], group=group)
    return buf.to(tensor.device)


@dataclass(frozen=True)
class Shard:
    """One rank's part of a build: its group, rank, world size and how the work is split.

    ``Shard()`` (no group) is the single-process build: every method is then the identity.
    """

    group: Any = None
    rank: int = 0
    world: int = 1
    split_over: SplitOver = "data"

    def __post_init__(self) -> None:
        _check_rank(self.rank, self.world)
        if self.split_over not in SPLITS:
            raise DataError(f"split_over must be one of {SPLITS}, got {self.split_over!r}")

    @property
    def active(self) -> bool:
        """Whether collectives are needed (more than one rank)."""
        return self.world > 1

    @property
    def seed_rank(self) -> int:
        """The rank in the source seeds: the data rank; 0 when ranks split output units."""
        return 0 if self.split_over == "units" else self.rank

    # splitting
    def batches(self, batches: Iterable[T]) -> Iterator[T]:
        """This rank's batches: its shard (``"data"``), all of them (``"units"``; ``"shards"``:
        the data given to this rank is its shard already)."""
        if self.split_over != "data":
            return iter(batches)
        return shard_batches(batches, self.rank, self.world)

    @property
    def unit_split(self) -> tuple[int, int] | None:
        """``(rank, world)`` for :func:`unit_range` when ranks split output units, else None."""
        return (self.rank, self.world) if self.split_over == "units" and self.active else None

    # collectives
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, self.group) if self.active else t.to(torch.float64)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, self.group, "max") if self.active else t.to(torch.float64)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is True on some rank (the same answer on every rank)."""
        return bool(self.max(_f64([float(flag)]))[0] > 0)

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` is True on every rank."""
        return not self.any(not flag)

    def count(self, n: int) -> int:
        """A sample count: summed over data shards, the same on every rank for units."""
        t = _f64([float(n)])
        return int((self.max(t) if self.split_over == "units" else self.sum(t))[0])

    def combined_hash(self, digest: str) -> str:
        """One digest of every rank's ``digest`` (in rank order): the same on every rank, e.g.
        of the data when each rank holds its own shard (``split_over="shards"``)."""
        if not self.active:
            return digest
        import hashlib

        digests: list[Any] = [None] * self.world
        _dist().all_gather_object(digests, digest, group=self.group)
        return hashlib.sha256("|".join(digests).encode()).hexdigest()

    def _shape(self, t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
        """The shape of a tensor that ranks without one (empty shard) do not know."""
        own = _f64(list(t.shape) if t is not None else [0] * ndim)
        return tuple(int(v) for v in self.max(own))

    def sum_optional(self, t: torch.Tensor | None, ndim: int, device: Any = "cpu") -> torch.Tensor:
        """Sum of a tensor that some ranks may lack (taken as zeros of the common shape)."""
        if not self.active:
            if t is None:
                raise DataError(
                    "Shard.sum_optional: t is None on a single-rank shard, where no other rank "
                    "can supply the tensor; pass a tensor (None is for empty shards of a group)"
                )
            return t.to(torch.float64)
        shape = self._shape(t, ndim)
        if t is None:
            t = torch.zeros(shape, dtype=torch.float64, device=device)
        return self.sum(t)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """End a stage: every rank learns whether any rank raised inside it (no hang).

        The rank that raised re-raises its own error; the others raise
        :class:`DistributedError` naming the failing ranks and their messages. Collectives of
        the stage's accumulators must come after this block.
        """
        try:
            yield
        except BaseException as err:
            if self.active:
                self._status(name, f"{type(err).__name__}: {err}")
            raise
        if self.active:
            failures = self._status(name, None)
            if failures:
                detail = "; ".join(f"rank {r}: {m}" for r, m in failures)
                raise DistributedError(f"stage {name!r} failed on another rank ({detail})")

    def _status(self, name: str, message: str | None) -> list[tuple[int, str]]:
        dist = _dist()
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, message, group=self.group)
        return [(r, m) for r, m in enumerate(gathered) if m is not None]

    def barrier(self) -> None:
        if self.active:
            self.sum(torch.zeros(1))  # a collective on the group's device (NCCL or gloo)

    # accumulators
    def reduce_grams(
        self,
        grams: Mapping[str, GramAccumulator],
        names: Iterable[str],
        device: torch.device | str = "cpu",
    ) -> dict[str, GramAccumulator]:
        """Merge each layer's Gram over data shards (exact parallel-axis / Chan merge).

        With global mean ``mu = sum_r n_r mu_r / n`` the scatter is
        ``sum_r [scatter_r + n_r (mu_r - mu)(mu_r - mu)^T]``: two all-reduces, no
        cancellation. A rank with an empty shard contributes zeros. Units mode: unchanged.
        """
        if not self.active or self.split_over == "units":
            return dict(grams)
        out: dict[str, GramAccumulator] = {}
        for name in names:
            g = grams.get(name)
            dim = int(self.max(_f64([g.dim if g is not None else 0]))[0])
            n_r = g.count if g is not None else 0
            mu_r = (
                g._mean if g is not None else torch.zeros(dim, dtype=torch.float64, device=device)
            )
            first = self.sum(torch.cat([_f64([n_r]), (n_r * mu_r).cpu()]))
            n = int(first[0])
            mu = (first[1:] / max(n, 1)).to(device)
            if g is None:
                scatter_r = torch.zeros(dim, dim, dtype=torch.float64, device=device)
            else:
                d = g._mean - mu
                scatter_r = g._scatter + n_r * torch.outer(d, d)
            merged = GramAccumulator(dim, device=device)
            merged.count, merged._mean, merged._scatter = n, mu, self.sum(scatter_r)
            out[name] = merged
        return out

    def reduce_jacobian_gram(
        self, acc: JacobianGramAccumulator | None, device: Any = "cpu"
    ) -> JacobianGramAccumulator:
        """The sum of ``sum J^T J`` over ranks and the count (summed over data shards; the
        same on every rank when ranks split output units). Empty-shard ranks pass ``None``."""
        if not self.active:
            if acc is None:
                raise DataError(
                    "Shard.reduce_jacobian_gram: acc is None on a single-rank shard (no batch "
                    "was accumulated); pass the accumulator of at least one batch"
                )
            return acc
        total = self.sum_optional(acc.running_sum if acc is not None else None, 2, device)
        out = JacobianGramAccumulator(total.shape[0], device=total.device)
        out.running_sum.copy_(total)
        out.count = self.count(acc.count if acc is not None else 0)
        return out

    def reduce_spread(self, spread: SourceSpread) -> None:
        """Sum a :class:`SourceSpread` over ranks, in place.

        Data shards hold disjoint batches, whose variances add. When ranks split the output
        units of each batch, a batch's source samples are split between ranks and the
        variance of their sum is not the sum of the ranks' variances: the total is summed and
        the spread is reported as unknown (relative standard error ``None``).
        """
        spread.end_batch()
        if not self.active:
            return
        t = self.sum(_f64([spread.total, spread.variance]))
        estimated = self.any(spread.estimated)
        spread.total, spread.variance = float(t[0]), float(t[1])
        spread.estimated = estimated and self.split_over != "units"

    def reduce_squared_edges(self, acc: Any) -> None:
        """Sum a :class:`interbasis.edges.SquaredEdges` (``E``, ``count``, spread) in place."""
        self.reduce_spread(acc.spread)
        if not self.active:
            return
        acc.E = self.sum(acc.E)
        acc.count = self.count(acc.count)

    # files
    def write_on_rank0(self, path: str | Path, write: Callable[[Path], None]) -> Path:
        """Atomic write (:func:`interbasis.io.atomic_write`) on rank 0 only; every rank
        waits for it and raises if it failed."""
        from interbasis.io import atomic_write

        with self.stage(f"write {path}"):
            if self.rank == 0:
                atomic_write(path, write)
        return Path(path)


def get_shard(process_group: Any = None, split_over: SplitOver = "data") -> Shard:
    """The :class:`Shard` of this process: of ``process_group``, else of the initialised
    default group, else the single-process ``Shard()``.

    Raises
    ------
    DistributedError
        When ``process_group`` is given but ``torch.distributed`` is not initialised.
    """
    if split_over not in SPLITS:
        raise DataError(f"split_over must be one of {SPLITS}, got {split_over!r}")
    dist = _dist()
    initialised = dist.is_available() and dist.is_initialized()
    if process_group is not None and not initialised:
        raise DistributedError(
            "process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group (torchrun sets the environment) first"
        )
    if not initialised:
        return Shard(split_over=split_over)
    group = process_group if process_group is not None else dist.group.WORLD
    return Shard(group, dist.get_rank(group), dist.get_world_size(group), split_over)


# --- launching ranks on one machine (tests, benchmarks, notebooks; use torchrun otherwise) ---
def _worker(
    rank: int, world: int, init: str, fn: Callable[..., Any], args: tuple, queue: Any
) -> None:
    dist = _dist()
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        try:
            # plain pickle: tensors by value, not as shared memory that dies with this process
            queue.put((rank, True, pickle.dumps(fn(rank, world, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException as err:  # reported to the parent, which raises
        queue.put((rank, False, f"{type(err).__name__}: {err}"))


def spawn(fn: Callable[..., T], world: int, args: tuple = (), timeout: float = 300.0) -> list[T]:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes on this machine.

    ``fn`` must be importable (a module-level function) and return picklable values. Returns
    the values by rank. Raises :class:`DistributedError` naming every rank that raised, or
    the ranks still running after ``timeout`` seconds (they are killed).
    """
    import queue as queue_module
    import tempfile

    import torch.multiprocessing as mp

    _check_rank(0, world)
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'rendezvous'}"
        procs = [
            ctx.Process(target=_worker, args=(r, world, init, fn, args, results), daemon=True)
            for r in range(world)
        ]
        for p in procs:
            p.start()
        got: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(got) < world:
                left = deadline - time.monotonic()
                dead = [r for r, p in enumerate(procs) if r not in got and p.exitcode]
                if left <= 0 or dead:
                    missing = sorted(set(range(world)) - set(got))
                    why = f"died ({dead})" if dead else f"did not finish within {timeout} s"
                    raise DistributedError(f"ranks {missing} {why}; {_failures(got)}")
                try:
                    rank, ok, value = results.get(timeout=min(left, 1.0))
                except queue_module.Empty:
                    continue
                got[rank] = (ok, value)
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
    if any(not ok for ok, _ in got.values()):
        raise DistributedError(_failures(got))
    return [pickle.loads(got[r][1]) for r in range(world)]


def _failures(got: Mapping[int, tuple[bool, Any]]) -> str:
    failed = {r: v for r, (ok, v) in got.items() if not ok}
    detail = "; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items()))
    return f"{len(failed)} rank(s) failed" + (f" ({detail})" if failed else "")
