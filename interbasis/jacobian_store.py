"""Section Jacobians kept between computing M and the squared edges, in memory then on disk.

The local interaction basis of node layer ``l`` needs ``M^l`` before its squared edges can be
expressed in it (DESIGN §4), and both reduce the same Jacobians. :class:`JacobianStore` is a
consumer of :func:`interbasis.jacobians.section_jacobian_gram` that keeps every chunk so the
edges can replay them instead of running the VJPs again:

- up to ``memory_limit`` bytes in memory;
- beyond that, appended to one temporary file (``directory``, else the system's temporary
  directory) up to ``disk_limit`` bytes, read back chunk by chunk: memory stays bounded
  whatever the dataset size and the time stays linear in it (re-running the VJPs instead
  doubled the section's time once the Jacobians outgrew memory, the "recompute cliff");
- beyond both, it gives up (``overflow``) and the caller recomputes.

Each batch's input activations are stored once (a chunk's are a slice of them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from interbasis.section import JacobianChunk

#: fraction of the free disk space a spill may take when ``disk_limit`` is not given
DISK_FRACTION = 0.5


class _Spill:
    """An append-only temporary file of tensors, read back by ``(offset, shape, dtype)``."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="interbasis-jacobians-", dir=directory)
        self.file = os.fdopen(fd, "w+b")
        with contextlib.suppress(OSError):  # POSIX: the file vanishes with the process
            os.unlink(self.path)
        self.size = 0

    def write(self, t: torch.Tensor) -> tuple[int, tuple[int, ...], torch.dtype]:
        data = t.detach().to("cpu").contiguous()
        self.file.seek(self.size)
        self.file.write(data.view(torch.uint8).reshape(-1).numpy().data)
        offset, self.size = self.size, self.size + data.numel() * data.element_size()
        return offset, tuple(data.shape), data.dtype

    def read(self, ref: tuple[int, tuple[int, ...], torch.dtype], device: torch.device) -> Any:
        offset, shape, dtype = ref
        out = torch.empty(shape, dtype=dtype)
        self.file.seek(offset)
        self.file.readinto(out.view(torch.uint8).reshape(-1).numpy().data)
        return out.to(device)

    def close(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class JacobianStore:
    """Keeps the Jacobian chunks of one section (module docstring).

    Parameters
    ----------
    memory_limit : bytes kept in memory; ``0`` keeps nothing (``overflow`` at the first chunk).
    disk_limit : bytes spilled to disk beyond that; ``None`` = half the free space of
        ``directory`` when the first chunk spills; ``0`` = no spill.
    directory : where the spill file lives (default: :func:`tempfile.gettempdir`).
    """

    def __init__(
        self,
        memory_limit: int,
        disk_limit: int | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.memory_limit, self.disk_limit, self.directory = memory_limit, disk_limit, directory
        self.memory = 0
        self.overflow = memory_limit <= 0
        # (batch, chunk without its grads, the grads: a tensor or a reference into the spill)
        self.items: list[tuple[int, JacobianChunk, Any]] = []
        self.acts: dict[tuple[int, int, int | None], Any] = {}  # per batch and sample slice
        self._spill: _Spill | None = None

    @property
    def spilled_bytes(self) -> int:
        """Bytes written to disk so far (0 while everything fits in memory)."""
        return self._spill.size if self._spill is not None else 0

    def __call__(self, batch: int, acts_in: torch.Tensor, chunk: JacobianChunk) -> None:
        if self.overflow:
            return
        key = (batch, chunk.samples.start, chunk.samples.stop)
        if key not in self.acts:
            self.acts[key] = self._keep(acts_in)
        grads = self._keep(chunk.grads)
        if self.overflow:
            self.close()
        else:
            self.items.append((batch, replace(chunk, grads=_NONE), grads))

    def _keep(self, t: torch.Tensor) -> Any:
        """``t`` itself while it fits in memory, else a reference into the spill file."""
        nbytes = t.numel() * t.element_size()
        if self.overflow:
            return None
        if self._spill is None and self.memory + nbytes <= self.memory_limit:
            self.memory += nbytes
            return t
        if self._spill is None:
            directory = self.directory or tempfile.gettempdir()
            if self.disk_limit is None:
                self.disk_limit = int(shutil.disk_usage(directory).free * DISK_FRACTION)
            if self.disk_limit <= 0:
                self.overflow = True
                return None
            self._spill = _Spill(directory)
        if self._spill.size + nbytes > (self.disk_limit or 0):
            self.overflow = True
            return None
        return self._spill.write(t)

    def _get(self, kept: Any, device: torch.device) -> torch.Tensor:
        if isinstance(kept, torch.Tensor):
            return kept
        assert self._spill is not None
        return self._spill.read(kept, device)

    def replay(self, device: torch.device | str = "cpu") -> Iterator[tuple[int, Any, Any]]:
        """``(batch, acts_in, chunk)`` in the order they came, as the consumer saw them;
        spilled tensors are read back to ``device``."""
        dev = torch.device(device)
        last: tuple[tuple[int, int, int | None], torch.Tensor] | None = None
        for batch, chunk, grads in self.items:
            key = (batch, chunk.samples.start, chunk.samples.stop)
            if last is None or last[0] != key:
                last = (key, self._get(self.acts[key], dev))
            yield batch, last[1], replace(chunk, grads=self._get(grads, dev))

    def close(self) -> None:
        """Drop everything kept and delete the spill file."""
        self.items, self.acts = [], {}
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def __enter__(self) -> JacobianStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NONE = torch.empty(0)
