"""Staged, resumable builds: each finished stage saved atomically, keyed by what it depends on.

A build (:func:`interbasis.build_graph` with ``cache_dir=``) has stages — the activation Grams;
each node layer's ``M`` and basis; each section's edges — and each stage's result is a small
dict of tensors saved as ``DIR/{stage}-{key}.pt``. The key is the SHA-256 of everything the
stage's result depends on:

- the model's weights (every ``state_dict`` tensor's name, dtype, shape and bytes, the class
  and the train flag) and the data (the bytes of every batch's model input, in order), both
  hashed once per build (:func:`hash_model`, :func:`hash_batches`);
- the options of the stage, and the *content* of its inputs: ``M^l`` is keyed by the bytes of
  the output map ``C^{l+1}`` it projects on, a basis by its Gram and ``M``, an edge matrix by
  its two bases. A changed option therefore invalidates exactly the stages whose inputs it
  changes: a new ``truncation`` recomputes the bases and edges, and an ``M`` only when the
  basis above it lost or gained nodes (its output map changed) — never the Grams.

A long stage (``M`` of a layer) saves its partial sums every ``every`` batches
(:class:`PartialSums`: the accumulator state and the next batch index, per rank), so a process
killed mid-stage loses at most ``every`` batches of work. All files are written by rank 0
(partial sums: by each rank, its own) with :func:`interbasis.io.atomic_write`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interbasis.basis import Basis
from interbasis.distributed import Shard
from interbasis.errors import DataError, FormatError, WriteError
from interbasis.grams import GramAccumulator, JacobianGramAccumulator
from interbasis.io import atomic_write
from interbasis.sources import SourceSpread

#: batches between two saves of a long stage's partial sums
DEFAULT_EVERY = 16
FORMAT = 1


@dataclass(frozen=True)
class CacheDir:
    """``cache_dir=`` with options: the directory and the checkpoint interval in batches."""

    path: str | os.PathLike[str]
    every: int = DEFAULT_EVERY

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise DataError(f"CacheDir(every=...) must be a positive integer, got {self.every!r}")


# --- hashing --------------------------------------------------------------------------------
def _update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def hash_value(value: Any) -> str:
    """SHA-256 of a JSON-like value whose leaves may be tensors (hashed by their bytes)."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            h.update(b"T")
            _update_tensor(h, v)
        elif isinstance(v, Mapping):
            h.update(b"{")
            for k in sorted(v, key=str):
                h.update(json.dumps(str(k)).encode())
                walk(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                walk(x)
            h.update(b"]")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            h.update(json.dumps(v).encode())
        elif callable(v):  # e.g. an output selector: by name (an address differs per process)
            h.update(f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', v)}".encode())
        else:
            h.update(repr(v).encode())

    walk(value)
    return h.hexdigest()


def hash_model(model: nn.Module) -> str:
    """SHA-256 of the model's class, train flag and every ``state_dict`` entry."""
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    return hash_value({"class": cls, "training": model.training, "state": model.state_dict()})


def hash_batches(batches: Iterable[torch.Tensor]) -> str:
    """SHA-256 of every batch's tensor (dtype, shape, bytes), in order."""
    h = hashlib.sha256()
    for x in batches:
        _update_tensor(h, x)
    return h.hexdigest()


# --- accumulator states ---------------------------------------------------------------------
def jacobian_gram_state(acc: JacobianGramAccumulator, spread: SourceSpread) -> dict[str, Any]:
    """The state of an ``M`` accumulator and its spread (CPU tensors and numbers)."""
    spread.end_batch()
    return {
        "sum": acc.running_sum.detach().cpu().clone(),
        "count": acc.count,
        "spread": [spread.total, spread.variance, spread.estimated],
    }


def restore_jacobian_gram(
    state: Mapping[str, Any], device: torch.device | str = "cpu"
) -> tuple[JacobianGramAccumulator, SourceSpread]:
    """Accumulator and spread from :func:`jacobian_gram_state`."""
    total = state["sum"]
    acc = JacobianGramAccumulator(total.shape[0], device=device)
    acc.running_sum.copy_(total)
    acc.count = int(state["count"])
    spread = SourceSpread()
    spread.total, spread.variance, spread.estimated = state["spread"]
    return acc, spread


def gram_state(g: GramAccumulator) -> dict[str, Any]:
    return {"count": g.count, "mean": g._mean.cpu(), "scatter": g._scatter.cpu()}


def restore_gram(state: Mapping[str, Any], device: torch.device | str = "cpu") -> GramAccumulator:
    g = GramAccumulator(int(state["mean"].shape[0]), device=device)
    g.count = int(state["count"])
    g._mean.copy_(state["mean"])
    g._scatter.copy_(state["scatter"])
    return g


# --- the cache ------------------------------------------------------------------------------
def _save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load(path: Path) -> Any:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: recompute rather than fail
        raise FormatError(f"stage cache file {path} is unreadable ({err})") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FormatError(
            f"stage cache file {path} was not written by this interbasis version (no "
            f"'format': {FORMAT} entry); it is recomputed"
        )
    return blob["value"]


class StageCache:
    """Finished stages and partial sums of one build in a directory (module docstring).

    Parameters
    ----------
    directory : created if missing.
    base : what every stage depends on (weights and data digests, global options).
    shard : the rank's :class:`interbasis.distributed.Shard` (rank 0 writes stage results).
    every : batches between two saves of partial sums.

    Attributes
    ----------
    log : ``(stage, "computed" | "resumed" | "loaded")`` in the order the build asked for them (also
        appended to ``DIR/stages.jsonl`` by rank 0).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        base: Mapping[str, Any],
        shard: Shard | None = None,
        every: int = DEFAULT_EVERY,
    ) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file in the way, no permission, a read-only disk
            raise WriteError(
                f"cache_dir {str(self.dir)!r} cannot be used as the stage cache directory "
                f"({err.strerror or err}); choose a directory path"
            ) from err
        self.base = hash_value(dict(base))
        self.shard = shard if shard is not None else Shard()
        self.every = every
        self.log: list[tuple[str, str]] = []

    def key(self, stage: str, parts: Mapping[str, Any]) -> str:
        """Key of a stage: SHA-256 of the base digest, the stage name and its ``parts``."""
        return hash_value({"base": self.base, "stage": stage, "parts": dict(parts)})[:32]

    def path(self, stage: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stage)
        return self.dir / f"{safe}-{key}.pt"

    def cached(
        self, stage: str, parts: Mapping[str, Any], compute: Callable[[PartialSums], dict]
    ) -> tuple[dict[str, Any], bool]:
        """The stage's result from the cache, or ``compute(partial_sums)`` saved by rank 0.

        Returns ``(value, fresh)``: ``fresh`` when computed here from the first batch (not
        loaded, not resumed from partial sums). Every rank takes the same branch: the file's
        presence is agreed by all ranks.
        """
        key = self.key(stage, parts)
        path = self.path(stage, key)
        value = None
        if self.shard.all(path.exists()):
            try:
                value = _load(path)
            except FormatError:
                value = None
            if not self.shard.all(value is not None):
                value = None
        if value is not None:
            self._record(stage, "loaded")
            return value, False
        partial = PartialSums(self, stage, key)
        computed = compute(partial)
        blob = {"format": FORMAT, "value": computed}
        self.shard.write_on_rank0(path, lambda tmp: torch.save(blob, tmp))
        partial.clear()
        self._record(stage, "computed" if not partial.start else "resumed")
        return computed, not partial.start

    def _record(self, stage: str, what: str) -> None:
        self.log.append((stage, what))
        if self.shard.rank == 0:
            with open(self.dir / "stages.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"stage": stage, "result": what}) + "\n")


class PartialSums:
    """Partial sums of one long stage on one rank, saved every ``cache.every`` batches.

    ``resume()`` gives ``(next_batch, state)`` (``(0, None)`` when nothing was saved);
    ``step(next_batch, state_fn)`` saves ``state_fn()`` when ``next_batch`` is a multiple of
    ``every``; a kill then loses at most ``every`` batches. The file is per rank and world size
    (shards differ between world sizes).
    """

    def __init__(self, cache: StageCache | None, stage: str, key: str) -> None:
        self.cache = cache
        self.saves = 0
        self.start = 0  # the batch the stage resumed at
        if cache is not None:
            s = cache.shard
            self.file: Path | None = cache.path(f"{stage}.partial.r{s.rank}of{s.world}", key)
        else:
            self.file = None

    def resume(self) -> tuple[int, Any]:
        if self.file is None or not self.file.exists():
            return 0, None
        try:
            blob = _load(self.file)
        except FormatError:
            return 0, None
        self.start = int(blob["next_batch"])
        return self.start, blob["state"]

    def step(self, next_batch: int, state: Callable[[], Any]) -> None:
        if self.file is None or self.cache is None or next_batch % self.cache.every:
            return
        _save({"format": FORMAT, "value": {"next_batch": next_batch, "state": state()}},
              self.file)  # fmt: skip
        self.saves += 1

    def clear(self) -> None:
        if self.file is not None:
            self.file.unlink(missing_ok=True)


#: a stand-in for builds without a cache
NO_PARTIAL_SUMS = PartialSums(None, "", "")


def open_cache(
    cache_dir: str | os.PathLike[str] | CacheDir | None,
    model: nn.Module,
    batches: Callable[[], Iterable[torch.Tensor]],
    options: Mapping[str, Any],
    shard: Shard | None = None,
) -> StageCache | None:
    """The :class:`StageCache` of a build (``None`` without ``cache_dir``).

    ``model`` is the prepared model (after the dtype/device/eval copy), ``batches`` returns
    the model inputs, ``options`` the options every stage depends on (dtype, node layers,
    kept positions, output selector, ...).
    """
    if cache_dir is None:
        return None
    spec = cache_dir if isinstance(cache_dir, CacheDir) else CacheDir(cache_dir)
    if not isinstance(spec.path, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path or a CacheDir, got {cache_dir!r}")
    data = hash_batches(batches())
    if shard is not None and shard.split_over == "shards":  # each rank hashed its own part
        data = shard.combined_hash(data)
    base = {"model": hash_model(model), "data": data, **dict(options)}
    return StageCache(spec.path, base, shard, spec.every)


# --- the build's stages (called by interbasis.build / graph_build) ---------------------------
def stage(
    cache: StageCache | None,
    name: str,
    parts: Mapping[str, Any],
    compute: Callable[[PartialSums], dict[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """``cache.cached(...)``, or ``(compute(no partial sums), True)`` without a cache."""
    if cache is None:
        return compute(NO_PARTIAL_SUMS), True
    return cache.cached(name, parts, compute)


def basis_value(b: Basis) -> dict[str, Any]:
    """A :class:`Basis` as a stage value (CPU tensors and strings)."""
    tensors = {f: getattr(b, f).detach().cpu() for f in ("C", "C_pinv", "eigenvalues",
                                                         "gram_eigenvalues", "mean")}  # fmt: skip
    return {"name": b.name, "has_constant": b.has_constant, "kind": b.kind, **tensors}


def restore_basis(v: Mapping[str, Any], device: torch.device | str = "cpu") -> Basis:
    tensors = {f: v[f].to(device) for f in ("C", "C_pinv", "eigenvalues", "gram_eigenvalues",
                                            "mean")}  # fmt: skip
    return Basis(v["name"], has_constant=v["has_constant"], kind=v["kind"], **tensors)


def basis_stage(
    cache: StageCache | None,
    parts: Mapping[str, Any],
    compute: Callable[[], Basis],
    device: torch.device | str = "cpu",
) -> Basis:
    """A node layer's basis: ``parts`` name it and hold its Gram, ``M`` and options."""
    if cache is None:
        return compute()
    value, _ = cache.cached(f"basis {parts['name']}", parts, lambda _: basis_value(compute()))
    return restore_basis(value, device)
