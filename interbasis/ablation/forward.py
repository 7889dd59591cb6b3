"""Forward passes with substituted node-layer inputs, shared by every ablation.

A *substitution* maps the (possibly already changed) input of a node layer to its new value.
Several node layers are substituted in forward order by chaining sections (DESIGN §2): the
first is injected with :func:`interbasis.capture.run_section`, the input of the next is read
from that run, substituted, injected, and so on to the model output. This is the ablated
network exactly when each node layer's input is a cut of the forward pass (which
:func:`interbasis.build_graph` checks when it builds a graph).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from interbasis.basis import Basis
from interbasis.capture import OUTPUT, InputLayout, capture, resolve_node_layers, run_section
from interbasis.data import check_data
from interbasis.errors import DataError, NodeLayerError, ShapeError

Substitution = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_BATCH_SIZE = 1024


def prepare_model(
    model: nn.Module, dtype: torch.dtype, device: torch.device | str | None
) -> tuple[nn.Module, torch.device]:
    """The model in eval mode on ``device`` in ``dtype`` (a copy when anything must change)."""
    if not isinstance(model, nn.Module):
        raise DataError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"dtype must be a floating torch dtype (e.g. torch.float64), got {dtype!r}")
    target = torch.device(device) if device is not None else None
    if target is None:
        target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = list(model.parameters()) + list(model.buffers())
    devices = {p.device for p in params}
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if devices - {target} or dtypes - {dtype} or model.training:
        model = copy.deepcopy(model).to(device=target, dtype=dtype).eval()
    return model, target


def labelled_batches(
    data: Any, batch_size: int | None, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(inputs, targets or None)`` on ``device``; floating inputs cast to ``dtype``.

    ``data``: a tensor of inputs (no targets), one ``(inputs, targets)`` tuple, or a
    re-iterable of batches (tensors or ``(inputs, targets, ...)`` tuples), as in
    :mod:`interbasis.data`. Tensors and tuples are split into ``batch_size`` rows.
    """
    check_data(data)
    if isinstance(data, Mapping):
        raise DataError(
            "ablation runs the model on tensor inputs; keyword inputs (a mapping such as "
            f"{sorted(map(str, data))[:3]}) are not supported: pass a tensor or (inputs, targets)"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    size = batch_size or DEFAULT_BATCH_SIZE
    source: Any = [data] if isinstance(data, tuple | torch.Tensor) else data
    n = 0
    for i, batch in enumerate(source):
        x, y = (
            (batch[0], batch[1] if len(batch) > 1 else None)
            if isinstance(batch, tuple | list)
            else (batch, None)
        )
        if not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"batch {i}: the model input must be a non-empty tensor, got {got}")
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]):
            raise DataError(
                f"batch {i}: targets must be a tensor with one row per input "
                f"({x.shape[0]}), got {getattr(y, 'shape', type(y).__name__)}"
            )
        if x.is_floating_point():
            x = x.to(dtype)
        for start in range(0, x.shape[0], size):
            n += 1
            xb = x[start : start + size].to(device)
            yb = None if y is None else y[start : start + size].to(device)
            yield xb, yb
    if n == 0:
        raise DataError("data holds no batches: give a tensor or a non-empty list of batches")


def check_bases(
    bases: Sequence[Basis] | Mapping[str, Basis], names: Sequence[str]
) -> dict[str, Basis]:
    """``{name: basis}`` for every name in ``names``, with clear errors."""
    if isinstance(bases, Basis):
        bases = [bases]
    if isinstance(bases, Mapping):
        table = dict(bases)
    elif isinstance(bases, Sequence) and not isinstance(bases, str):
        for i, b in enumerate(bases):
            if not isinstance(b, Basis):
                raise DataError(f"bases[{i}] is a {type(b).__name__}, not a Basis")
        table = {b.name: b for b in bases}
    else:
        raise DataError(
            f"bases must be a list of Basis or a dict name -> Basis, got {type(bases).__name__}"
        )
    for name in names:
        if name not in table:
            raise ShapeError(
                f"no basis for node layer {name!r}; bases are given for {sorted(table)}"
            )
        if not isinstance(table[name], Basis):
            raise DataError(f"basis of {name!r} is a {type(table[name]).__name__}, not a Basis")
    return {n: table[n].to("cpu") for n in names}


class Forward:
    """Clean and substituted forward passes of one model over named node layers."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model = model
        order = [n for n in names if n != OUTPUT] + [OUTPUT]
        self.modules = resolve_node_layers(model, order)
        self.names = order[:-1]

    def clean(
        self, x: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, InputLayout], torch.Tensor]:
        """Input activations of every node layer, their layouts, and the model output."""
        with torch.no_grad():
            acts, layouts = capture(self.model, x, self.modules)
        out = acts.pop(OUTPUT)
        return acts, layouts, out

    def width(self, name: str, acts: Mapping[str, torch.Tensor], basis: Basis) -> None:
        """Raise when the basis does not fit the captured activations."""
        if acts[name].shape[-1] != basis.dim:
            raise ShapeError(
                f"basis of {name!r} has width {basis.dim} but the model's {name!r} input has "
                f"width {acts[name].shape[-1]} (bases from another model?)"
            )

    def substituted(
        self,
        x: torch.Tensor,
        acts: Mapping[str, torch.Tensor],
        layouts: Mapping[str, InputLayout],
        subs: Mapping[str, Substitution],
        read: str = OUTPUT,
    ) -> torch.Tensor:
        """Input of ``read`` (default: the output) with ``subs`` applied in forward order.

        ``subs[name]`` receives the input of ``name`` as it is after the earlier
        substitutions (the clean ``acts[name]`` for the first) and returns its new value.
        """
        order = [n for n in self.names if n in subs]
        if not order:
            raise NodeLayerError("no node layer to substitute")
        current = acts[order[0]]
        for i, name in enumerate(order):
            value = subs[name](current).to(current.dtype)
            nxt = order[i + 1] if i + 1 < len(order) else read
            current = self.inject(x, name, value, layouts[name], nxt)
        return current

    def inject(
        self, x: torch.Tensor, name: str, value: torch.Tensor, layout: InputLayout, read: str
    ) -> torch.Tensor:
        """Input of ``read`` with the input of ``name`` replaced by ``value`` (no gradients)."""
        module = self.modules[name]
        if module is None:
            raise NodeLayerError('"output" cannot be substituted')
        with torch.no_grad():
            return run_section(
                self.model, x, (name, module), value, layout, (read, self.modules[read])
            )
