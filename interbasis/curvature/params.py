"""Flat parameter vectors: which parameters, in which order, and how to cut a vector back.

Curvature matrices act on the vector ``theta`` of all *trainable* parameters, concatenated
in ``model.named_parameters()`` order, each flattened row-major (torch's ``reshape(-1)``).
A weight of shape ``(out, in)`` therefore occupies ``theta[s : s + out*in]`` with entry
``(i, j)`` at offset ``i*in + j`` — the ordering behind ``K ⊗ G`` in :mod:`.kfac`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from interbasis.errors import DataError


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the parameters inside the flat vector ``theta``.

    Attributes
    ----------
    names : tuple of str
        Parameter names as in ``model.named_parameters()``, in vector order.
    shapes : tuple of torch.Size
        Shape of each parameter.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_model(cls, model: torch.nn.Module, params: Sequence[str] | None = None) -> ParamLayout:
        """Layout of ``model``'s trainable parameters (or of the named subset ``params``).

        Parameters with ``requires_grad=False`` are skipped with a ``UserWarning`` that names
        them; asking for one of them by name, or for an unknown name, raises ``DataError``.
        """
        named = dict(model.named_parameters())
        frozen = [n for n, p in named.items() if not p.requires_grad]
        if params is None:
            chosen = [n for n, p in named.items() if p.requires_grad]
            if frozen:
                warnings.warn(
                    f"curvature: skipping {len(frozen)} parameter(s) with requires_grad=False: "
                    f"{frozen}",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            unknown = [n for n in params if n not in named]
            if unknown:
                raise DataError(f"unknown parameter name(s) {unknown}; the model has {list(named)}")
            bad = [n for n in params if not named[n].requires_grad]
            if bad:
                raise DataError(f"parameter(s) {bad} have requires_grad=False and cannot be used")
            if len(set(params)) != len(params):
                raise DataError(f"params: parameter names repeat in {list(params)}; list each once")
            order = {n: i for i, n in enumerate(named)}
            chosen = sorted(params, key=order.__getitem__)
        if not chosen:
            raise DataError("the model has no trainable parameters (all requires_grad=False)")
        return cls(tuple(chosen), tuple(named[n].shape for n in chosen))

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of entries of each parameter."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def size(self) -> int:
        """Length ``P`` of the flat vector."""
        return sum(self.numels)

    @property
    def slices(self) -> dict[str, slice]:
        """``name -> slice`` into the flat vector."""
        out: dict[str, slice] = {}
        start = 0
        for name, n in zip(self.names, self.numels, strict=True):
            out[name] = slice(start, start + n)
            start += n
        return out

    def groups(self) -> dict[str, list[str]]:
        """Parameters grouped by owning module (``"layers.0.weight"`` -> ``"layers.0"``)."""
        out: dict[str, list[str]] = {}
        for name in self.names:
            out.setdefault(name.rpartition(".")[0], []).append(name)
        return out

    def indices(self, names: Sequence[str]) -> torch.Tensor:
        """Positions in the flat vector of the parameters ``names`` (vector order kept)."""
        sl = self.slices
        unknown = [n for n in names if n not in sl]
        if unknown:
            raise DataError(f"parameter(s) {unknown} are not in the layout {list(self.names)}")
        return torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in names])

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``tensors[name]`` (one per layout name) into a vector of length ``P``.

        Extra leading batch dimensions are not allowed; the shapes must match the layout.
        """
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            if name not in tensors:
                raise DataError(
                    f"flatten: missing parameter {name!r}; pass one tensor per layout name "
                    f"{list(self.names)}"
                )
            t = tensors[name]
            if t.shape != shape:
                raise DataError(
                    f"flatten: {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}"
                )
            parts.append(t.reshape(-1))
        return torch.cat(parts)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cut ``vector`` of shape ``(P, *rest)`` into ``{name: (*shape, *rest)}`` views."""
        if vector.shape[0] != self.size:
            raise DataError(
                f"unflatten: vector has length {vector.shape[0]}, the layout has {self.size} "
                "parameters"
            )
        rest = vector.shape[1:]
        out = {}
        for (name, sl), shape in zip(self.slices.items(), self.shapes, strict=True):
            out[name] = vector[sl].reshape(tuple(shape) + tuple(rest))
        return out

    def gather(self, model: torch.nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The model's current parameters as a detached flat vector in ``dtype``."""
        named = dict(model.named_parameters())
        return self.flatten({n: named[n].detach() for n in self.names}).to(dtype)
