"""Helpers for the analyses that follow the builds onto ``torch.distributed`` (DESIGN §7).

The curvature operators, D_LR's features and the atlas split their data like the builds
(:mod:`interbasis.distributed`): rank ``r`` of ``R`` takes the batches ``b`` with
``b % R == r``. What they add on top:

- :func:`data_shard`: the :class:`~interbasis.distributed.Shard` of an analysis from its
  ``process_group`` argument (a group, ``None`` for the initialised default group if any, or
  a ``Shard`` — ``Shard()`` keeps a process on its own data inside a group);
- :func:`check_same_data`: one all-reduce that stops every rank when the ranks were handed
  different data (each rank must pass the *whole* data and take its shard);
- :func:`gather_batches`: per-sample results (features ``(n_b, ...)``) of every rank's
  batches, gathered on every rank in batch order — for quantities that need the samples
  themselves rather than a sum over them;
- :func:`default_group_only`: the atlas's check that ``process_group`` is the default group
  (the helpers of :mod:`interbasis.build` it calls find that group themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from interbasis.distributed import DistributedError, Shard, _dist, comm_device, get_shard
from interbasis.errors import DataError, ShapeError

__all__ = ["check_same_data", "data_shard", "default_group_only", "gather_batches"]


def data_shard(process_group: Any, what: str) -> Shard:
    """The data-parallel :class:`Shard` of ``what`` for its ``process_group`` argument.

    ``None``: the initialised default group if there is one, else this process alone
    (:func:`~interbasis.distributed.get_shard`); a group: that group; a :class:`Shard`: as it
    is (``Shard()`` = this process alone, even inside a group).

    Raises
    ------
    DataError
        A ``Shard`` that splits output units: ``what`` splits samples (``split_over="data"``).
    DistributedError
        A group while ``torch.distributed`` is not initialised.
    """
    if isinstance(process_group, Shard):
        if process_group.split_over != "data":
            raise DataError(
                f"{what}: process_group is a Shard with split_over="
                f"{process_group.split_over!r}; {what} splits samples over ranks, pass a Shard "
                'with split_over="data" (or the process group itself)'
            )
        return process_group
    return get_shard(process_group, "data")


def check_same_data(shard: Shard, counts: Sequence[int], what: str) -> None:
    """Raise :class:`DistributedError` on every rank unless all ranks hold the same ``counts``.

    ``counts`` are sizes of the data every rank was given (e.g. number of batches, number of
    samples); one float64 all-reduce of ``[c, -c]`` (max) compares them. No-op for one rank.
    """
    if not shard.active:
        return
    own = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    both = shard.max(torch.cat([own, -own]))
    high, low = both[: len(counts)], -both[len(counts) :]
    if bool((high != low).any()):
        raise DistributedError(
            f"{what}: the ranks hold different data (sizes {own.tolist()} on rank "
            f"{shard.rank}, from {low.tolist()} to {high.tolist()} over the ranks); pass the "
            "same, whole data on every rank — each rank takes its shard of the batches itself"
        )


def gather_batches(
    shard: Shard,
    local: Sequence[tuple[int, torch.Tensor]],
    what: str,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """Every rank's per-batch tensors, on every rank, in the order of the global batch index.

    Parameters
    ----------
    shard : the group's :class:`Shard`.
    local : this rank's ``(global batch index b, tensor (n_b, *rest))`` pairs; ``rest`` and the
        dtype are the same on every rank; a rank with an empty shard passes ``[]``.
    what : named in errors.
    device : where the returned tensors lie.

    Returns
    -------
    list of tensors ``(n_b, *rest)``, ``b = 0, 1, ...`` (the batches of all ranks).

    Costs one ``all_gather_object`` of the sizes and one ``all_gather`` of the rows, padded to
    the largest rank's row count; memory is that of the whole result on every rank.
    """
    if not shard.active:
        return [t.to(device) for _, t in sorted(local, key=lambda p: p[0])]
    dist = _dist()
    first = local[0][1] if local else None
    meta = (
        [int(b) for b, _ in local],
        [int(t.shape[0]) for _, t in local],
        None if first is None else (tuple(first.shape[1:]), first.dtype),
    )
    metas: list[Any] = [None] * shard.world
    dist.all_gather_object(metas, meta, group=shard.group)
    kinds = {m[2] for m in metas if m[2] is not None}
    if len(kinds) != 1:
        found = sorted(map(str, kinds))
        raise ShapeError(
            f"{what}: the ranks' batches differ in trailing shape or dtype ({found})"
            if kinds
            else f"{what}: no rank has a batch to gather"
        )
    (rest, dtype) = kinds.pop()
    rows = [sum(m[1]) for m in metas]
    wire = comm_device(shard.group)
    buf = torch.zeros((max(rows), *rest), dtype=dtype, device=wire)
    if local:
        buf[: rows[shard.rank]] = torch.cat([t for _, t in local]).to(wire)
    parts = [torch.empty_like(buf) for _ in range(shard.world)]
    dist.all_gather(parts, buf, group=shard.group)
    out: dict[int, torch.Tensor] = {}
    for part, n, (indices, sizes, _) in zip(parts, rows, metas, strict=True):
        for b, t in zip(indices, torch.split(part[:n].to(device), sizes), strict=True):
            out[b] = t
    if sorted(out) != list(range(len(out))):
        raise DistributedError(
            f"{what}: the ranks' batch indices {sorted(out)} do not cover 0..{len(out) - 1} once; "
            "pass the same, whole data on every rank"
        )
    return [out[b] for b in range(len(out))]


def default_group_only(process_group: Any, what: str) -> None:
    """Raise :class:`DataError` unless ``process_group`` is ``None`` or the default group.

    ``what`` calls helpers (activation Grams, Jacobian Grams, synchronised neurons) that shard
    over the initialised default group on their own, so a sub-group cannot be honoured.
    """
    if process_group is None:
        return
    get_shard(process_group)  # DistributedError when torch.distributed is not initialised
    if process_group is _dist().group.WORLD:
        return
    raise DataError(
        f"{what}: process_group must be None or the default group (torch.distributed.group."
        f"WORLD), got {process_group!r}; its activation and Jacobian Grams shard over the "
        "default group (or run it in a process of its own, without a process group)"
    )
