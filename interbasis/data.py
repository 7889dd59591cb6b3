"""Iterating over user data in batches, with the checks every pipeline stage needs.

``data`` is a tensor (split into batches of ``batch_size``), a tuple ``(inputs, ...)`` (one
batch: a tuple is read as a batch, never as a collection of batches, so ``(x, y)`` does not
turn the targets into inputs), or a re-iterable collection of batches (a list, a
``DataLoader``, ...), each a tensor or a tuple whose first element is the model input
(DESIGN §5). The pipeline makes several passes over the data, so one-shot iterators
(generators) are refused with an explanation rather than silently used once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from interbasis.capture import model_input
from interbasis.errors import DataError

DEFAULT_BATCH_SIZE = 1024


def check_data(data: Any) -> None:
    """Raise :class:`DataError` for data that cannot be iterated several times or is empty."""
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or data.shape[0] == 0:
            raise DataError(f"data is an empty tensor of shape {tuple(data.shape)}")
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
) -> Iterator[torch.Tensor]:
    """Yield model inputs, moved to ``device``; floating inputs are cast to ``dtype``.

    A tensor is split into batches of ``batch_size`` (default 1024); batches of an iterable
    larger than ``batch_size`` (when given) are split further.

    Raises
    ------
    DataError
        If there is no batch at all, a batch is empty, or its first element is not a tensor.
    """
    check_data(data)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, tuple):  # one batch (inputs, targets, ...)
        data = [data]
    if isinstance(data, torch.Tensor):
        size = batch_size or DEFAULT_BATCH_SIZE
        source: Iterable[Any] = torch.split(data, size)
        size_limit = None
    else:
        source = data
        size_limit = batch_size
    n = 0
    for i, batch in enumerate(source):
        x = model_input(batch)
        if x.ndim == 0 or x.shape[0] == 0:
            raise DataError(f"batch {i} is empty (shape {tuple(x.shape)})")
        if x.is_floating_point():
            x = x.to(dtype)
        x = x.to(device)
        pieces = torch.split(x, size_limit) if size_limit else (x,)
        for piece in pieces:
            n += 1
            yield piece
    if n == 0:
        raise DataError("data holds no batches")
