"""Activations at the *input* of named modules, and sections of the forward pass.

A *node layer* is addressed by a module name from ``model.named_modules()`` and means the
activations that flow *into* that module (DESIGN §2), or ``"output"``: the model's output.
Captured activations keep their position dimension: shape ``(batch, d)`` or
``(batch, pos, d)`` (any middle dimensions are flattened into one position dimension).
A module called with several positional tensor inputs sees them concatenated on the last
dimension; the split is remembered so that substituted values can be split back.

A *section* ``f^{l+1}(f^l)`` is computed by running the model with the input of module ``l``
substituted (a forward pre-hook, :func:`run_section`) and reading the input of module ``l+1``
(where the forward pass is then stopped). This is the true map between the two node layers only
if everything downstream depends on the model input through module ``l``'s input alone (a *cut*
of the forward pass); :class:`interbasis.section.Section` wraps this and verifies the cut.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from interbasis.errors import DataError, NodeLayerError

OUTPUT = "output"


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once the wanted input is read."""


@dataclass(frozen=True)
class InputLayout:
    """How a module's positional inputs map to one activation tensor.

    Attributes
    ----------
    arg_positions : positions (in the module's ``args``) of the floating tensors used.
    split : sizes of their last dimensions (concatenated in this order).
    shape : shape of each input without the last dimension, e.g. ``(batch, pos)``.
    """

    arg_positions: tuple[int, ...]
    split: tuple[int, ...]
    shape: tuple[int, ...]


def resolve_node_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module | None]:
    """Map node-layer names to modules (``None`` for ``"output"``), with clear errors.

    Raises
    ------
    NodeLayerError
        For an empty list, an unknown or duplicated name (close matches from
        ``named_modules()`` are listed), or ``"output"`` not given last.
    """
    if len(names) == 0:
        raise NodeLayerError("node_layers is empty: give at least one module name")
    modules = dict(model.named_modules())
    resolved: dict[str, nn.Module | None] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise NodeLayerError(f"node layer names must be strings, got {name!r}")
        if name in resolved:
            raise NodeLayerError(f"node layer {name!r} is given twice")
        if name == OUTPUT:
            if i != len(names) - 1:
                raise NodeLayerError(
                    f'"output" must be the last node layer, but it is at position {i} of '
                    f"{list(names)}"
                )
            resolved[name] = None
            continue
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
            hint = f" Close matches: {close}." if close else ""
            raise NodeLayerError(
                f"unknown node layer {name!r}: no module of that name in model.named_modules()."
                f'{hint} Use "output" for the model output.'
            )
        resolved[name] = modules[name]
    return resolved


def model_input(batch: Any) -> torch.Tensor:
    """The model input of one batch: the batch itself or the first element of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise DataError("a batch is an empty tuple; expected (inputs, ...)")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise DataError(
            f"each batch must be a tensor or a tuple whose first element is a tensor, got "
            f"{type(batch).__name__}"
        )
    return batch


def _tensor_args(args: tuple[Any, ...]) -> tuple[list[int], list[torch.Tensor]]:
    positions = [
        i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
    ]
    return positions, [args[i] for i in positions]


def _layout_of(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
) -> tuple[InputLayout, torch.Tensor]:
    """The layout of a module's positional tensor inputs and a *copy* of them, concatenated.

    The copy keeps gradients but not storage: a model that later modifies the tensor in place
    (``ReLU(inplace=True)``, ``h += ...``) must not change what was read.
    """
    positions, tensors = _tensor_args(args)
    if not tensors:
        if any(isinstance(v, torch.Tensor) for v in (kwargs or {}).values()):
            raise DataError(
                f"module {name!r} is called with keyword tensor inputs {sorted(kwargs or {})}; "
                "node layers read positional inputs only: choose a module called positionally"
            )
        kinds = [
            type(a).__name__ if not isinstance(a, torch.Tensor) else str(a.dtype) for a in args
        ]
        raise DataError(
            f"module {name!r} receives no floating-point tensor input (its inputs: {kinds}); "
            "it cannot be a node layer"
        )
    lead = tensors[0].shape[:-1]
    for t in tensors[1:]:
        if t.shape[:-1] != lead:
            raise DataError(
                f"module {name!r} receives inputs of shapes {[tuple(t.shape) for t in tensors]} "
                "that differ before the last dimension; they cannot be concatenated"
            )
    if len(lead) < 1:
        raise DataError(
            f"input of module {name!r} has no batch dimension: {tuple(tensors[0].shape)}"
        )
    layout = InputLayout(tuple(positions), tuple(t.shape[-1] for t in tensors), tuple(lead))
    acts = tensors[0].clone() if len(tensors) == 1 else torch.cat(tensors, dim=-1)
    return layout, acts


def as_positions(acts: torch.Tensor) -> torch.Tensor:
    """Reshape ``(batch, [pos...], d)`` to ``(batch, pos, d)`` (pos = 1 when absent)."""
    return acts.reshape(acts.shape[0], -1, acts.shape[-1])


OutputSelector = Callable[[Any], torch.Tensor]


def select_output(out: Any, output: OutputSelector | None = None) -> torch.Tensor:
    """The tensor the ``"output"`` node layer reads from a model's return value.

    ``output`` (a callable, e.g. ``lambda out: out.logits[:, -1]``) is applied when given.
    Otherwise a tensor is taken as is, a mapping (a HuggingFace ``ModelOutput`` or a dict)
    gives its ``"logits"`` entry, else its first tensor value, and a tuple or list its first
    tensor.
    """
    if output is not None:
        out = output(out)
        if not isinstance(out, torch.Tensor):
            raise DataError(
                f"the output= selector returned {type(out).__name__}, not a tensor; it must map "
                "the model's return value to the tensor to analyse"
            )
    elif isinstance(out, Mapping):
        if isinstance(out.get("logits"), torch.Tensor):
            out = out["logits"]
        else:
            tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
            if not tensors:
                raise DataError(
                    f"the model returns {type(out).__name__} with no tensor entry "
                    f"(keys {list(out)}); pass output= to select the tensor to analyse"
                )
            out = tensors[0]
    elif isinstance(out, (tuple, list)):
        tensors = [v for v in out if isinstance(v, torch.Tensor)]
        if not tensors:
            raise DataError(
                f"the model returns a {type(out).__name__} without tensors; pass output= to "
                "select the tensor to analyse"
            )
        out = tensors[0]
    if not isinstance(out, torch.Tensor):
        raise DataError(
            f'the model returns {type(out).__name__}, not a tensor; "output" needs a tensor '
            "output: pass output= (a callable from the return value to a tensor)"
        )
    if not out.is_floating_point():
        raise DataError(f'the model output has dtype {out.dtype}; "output" needs floating point')
    return out


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping of keyword tensors (``input_ids``, ...), else
    ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def batch_size_of(inputs: Any) -> int:
    """Number of samples in a batch of model inputs (a tensor or a mapping of tensors)."""
    if isinstance(inputs, Mapping):
        return int(next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0])
    return int(inputs.shape[0])


def capture(
    model: nn.Module,
    inputs: Any,
    modules: dict[str, nn.Module | None],
    output: OutputSelector | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, InputLayout]]:
    """Run ``model(inputs)`` once and return the input activations of the node layers.

    Parameters
    ----------
    model : the network (any ``nn.Module`` taking one positional input, or keyword tensors).
    inputs : the model input for one batch (a tensor, or a mapping of keyword tensors).
    modules : result of :func:`resolve_node_layers` (insertion order = expected forward order).
    output : selector of the analysed tensor from the model's return value
        (:func:`select_output`).

    Returns
    -------
    acts : name -> tensor ``(batch, [pos...], d)`` (the concatenated inputs of the module).
    layouts : name -> :class:`InputLayout` (``"output"`` has a layout with one input).

    Raises
    ------
    NodeLayerError
        If a module is never called, called more than once, or the node layers are not in
        forward order (the actual order is reported).
    """
    names = list(modules)
    acts: dict[str, torch.Tensor] = {}
    layouts: dict[str, InputLayout] = {}
    order: list[str] = []
    n_modules = sum(m is not None for m in modules.values())
    stop_early = OUTPUT not in modules

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in acts:
                raise NodeLayerError(
                    f"module {name!r} is called more than once in one forward pass; a node "
                    "layer must be a module that runs exactly once"
                )
            layouts[name], acts[name] = _layout_of(name, args, kwargs)
            if acts[name].shape[0] != batch:
                raise DataError(
                    f"the input of module {name!r} has shape {tuple(acts[name].shape)}: its "
                    f"first dimension is not the batch ({batch}); node layers must be "
                    "batch-first"
                )
            order.append(name)
            if stop_early and len(acts) == n_modules:
                raise _StopForward

        return hook

    batch = batch_size_of(inputs)
    handles = [
        m.register_forward_pre_hook(make_hook(n), with_kwargs=True)
        for n, m in modules.items()
        if m is not None
    ]
    try:
        out = call_model(model, inputs)
        if OUTPUT in modules:
            acts[OUTPUT] = select_output(out, output)
            layouts[OUTPUT] = InputLayout((0,), (out.shape[-1],), tuple(out.shape[:-1]))
            order.append(OUTPUT)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in acts]
    if missing:
        raise NodeLayerError(
            f"node layers {missing} were never called in the forward pass (called, in order: "
            f"{order})"
        )
    if order != names:
        raise NodeLayerError(
            f"node layers must be given in forward order; the forward pass reaches them in the "
            f"order {order}, but node_layers is {names}"
        )
    return acts, layouts


def run_section(
    model: nn.Module,
    inputs: Any,
    inject: tuple[str, nn.Module],
    value: torch.Tensor,
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
    output: OutputSelector | None = None,
) -> torch.Tensor:
    """Run the model with the input of ``inject`` replaced by ``value``; return ``read``'s input.

    Parameters
    ----------
    inputs : model input of the batch (needed to run the forward pass up to ``inject``).
    inject : (name, module) whose input is substituted.
    value : ``(batch, [pos...], d)`` activations in the concatenated layout ``layout``.
    read : (name, module) whose input is returned; module ``None`` means the model output
        (selected by ``output``, :func:`select_output`).

    This function is pure in ``value`` and so can be differentiated with ``torch.func``.
    """
    inject_name, inject_module = inject
    read_name, read_module = read
    result: list[torch.Tensor] = []

    def inject_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        new_args = list(args)
        pieces = torch.split(value, list(layout.split), dim=-1)
        for pos, piece, old in zip(
            layout.arg_positions, pieces, (args[p] for p in layout.arg_positions), strict=True
        ):
            # a copy, so that in-place operations of the model cannot write into ``value``
            new_args[pos] = piece.reshape(*piece.shape[:1], *old.shape[1:-1], piece.shape[-1])
            new_args[pos] = new_args[pos].clone()
        return tuple(new_args)

    def read_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        _, acts = _layout_of(read_name, args)
        result.append(acts)
        raise _StopForward

    handles = [inject_module.register_forward_pre_hook(inject_hook)]
    if read_module is not None:
        handles.append(read_module.register_forward_pre_hook(read_hook))
    try:
        out = call_model(model, inputs)
        result.append(select_output(out, output))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if not result:
        raise NodeLayerError(f"module {read_name!r} was not reached after {inject_name!r}")
    return result[0]
