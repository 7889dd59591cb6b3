"""Iterating over user data in batches, with the checks every pipeline stage needs.

``data`` is a tensor (split into batches of ``batch_size``), a tuple ``(inputs, ...)`` (one
batch: a tuple is read as a batch, never as a collection of batches, so ``(x, y)`` does not
turn the targets into inputs), or a re-iterable collection of batches (a list, a
``DataLoader``, ...), each a tensor or a tuple whose first element is the model input
(DESIGN §5). The pipeline makes several passes over the data, so one-shot iterators
(generators) are refused with an explanation rather than silently used once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from interbasis.capture import model_input
from interbasis.errors import DataError

DEFAULT_BATCH_SIZE = 1024


def check_data(data: Any, allow_empty: bool = False) -> None:
    """Raise :class:`DataError` for data that cannot be iterated several times or is empty
    (``allow_empty``: an empty tensor is fine, e.g. a rank's empty shard)."""
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or (data.shape[0] == 0 and not allow_empty):
            raise DataError(f"data is an empty tensor of shape {tuple(data.shape)}")
        if data.device.type == "meta":
            raise DataError("data lies on the meta device and holds no values")
        return
    if isinstance(data, Mapping):  # keyword inputs of the whole dataset, split like a tensor
        model_input(data)
        return
    if not isinstance(data, Iterable):
        raise DataError(
            f"data must be a tensor or an iterable of batches, got {type(data).__name__}"
        )
    if isinstance(data, Iterator):
        raise DataError(
            "data is a one-shot iterator (e.g. a generator); the pipeline needs several passes. "
            "Pass a tensor, a list of batches or a DataLoader instead."
        )


def iter_batches(
    data: Any,
    batch_size: int | None,
    device: torch.device,
    dtype: torch.dtype,
    allow_empty: bool = False,
) -> Iterator[Any]:
    """Yield model inputs, moved to ``device``; floating inputs are cast to ``dtype``.

    A tensor (or a mapping of keyword tensors, e.g. ``input_ids`` and ``attention_mask``) is
    split into batches of ``batch_size`` (default 1024); batches of an iterable larger than
    ``batch_size`` (when given) are split further.

    Raises
    ------
    DataError
        If there is no batch at all, a batch is empty, or its first element is not a tensor.
    """
    check_data(data, allow_empty)
    if allow_empty and isinstance(data, torch.Tensor) and data.shape[0] == 0:
        return  # a rank's empty shard: no batches
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, tuple):  # one batch (inputs, targets, ...)
        data = [data]
    if isinstance(data, (torch.Tensor, Mapping)):  # split first, then move each batch
        source: Iterable[Any] = _split(data, batch_size or DEFAULT_BATCH_SIZE)
        size_limit = None
    else:
        source = data
        size_limit = batch_size
    n = 0
    for i, batch in enumerate(source):
        x = model_input(batch)
        if _rows(x) == 0:
            raise DataError(f"batch {i} is empty (shape {_shapes(x)})")
        x = _to(x, device, dtype, i)
        for piece in _split(x, size_limit) if size_limit else (x,):
            n += 1
            yield piece
    if n == 0:
        raise DataError("data holds no batches")


def _rows(x: Any) -> int:
    if isinstance(x, Mapping):
        t = next(v for v in x.values() if isinstance(v, torch.Tensor))
        return int(t.shape[0])
    return 0 if x.ndim == 0 else int(x.shape[0])


def _shapes(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: tuple(v.shape) for k, v in x.items() if isinstance(v, torch.Tensor)}
    return tuple(x.shape)


def _to(x: Any, device: torch.device, dtype: torch.dtype, i: int) -> Any:
    """Floating tensors cast to ``dtype``; every tensor moved to ``device``."""
    if isinstance(x, Mapping):
        return {k: _to(v, device, dtype, i) if isinstance(v, torch.Tensor) else v
                for k, v in x.items()}  # fmt: skip
    if x.device.type == "meta":
        raise DataError(f"batch {i} lies on the meta device and holds no values")
    if x.is_floating_point():
        x = x.to(dtype)
    if device.type == "cuda" and x.device.type == "cpu":
        # page-locked host memory lets the copy run asynchronously; later work on the
        # device's stream is ordered after it, and torch keeps the pinned block alive
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _split(x: Any, size: int) -> Iterator[Any]:
    if isinstance(x, Mapping):
        n = _rows(x)
        for lo in range(0, n, size):
            yield {k: v[lo : lo + size] if isinstance(v, torch.Tensor) else v
                   for k, v in x.items()}  # fmt: skip
        return
    yield from torch.split(x, size)
