"""Activations at the *input* of named modules, and sections of the forward pass.

A *node layer* is addressed by a module name from ``model.named_modules()`` and means the
activations that flow *into* that module (DESIGN §2), or ``"output"``: the model's output.
Captured activations keep their position dimension: shape ``(batch, d)`` or
``(batch, pos, d)`` (any middle dimensions are flattened into one position dimension).
The activation of a module is its first floating-point positional input (other arguments,
such as an attention mask, pass through unchanged), or its ``hidden_states`` keyword
argument. Features are the last axis, except for channels-first inputs (convolutions,
batch norm, pooling: channels are features, spatial axes positions) or a ``feature_dim``
given per node layer.

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

from interbasis.errors import DataError, InterbasisError, NodeLayerError

OUTPUT = "output"


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once the wanted input is read."""


@dataclass(frozen=True)
class InputLayout:
    """Where a module's activation tensor sits among its inputs, and how it is laid out.

    Attributes
    ----------
    arg_positions : position (in the module's ``args``) of the tensor read; empty when it is
        the keyword argument ``kwarg``.
    split : its feature width (one entry).
    shape : its shape without the feature axis, batch first, e.g. ``(batch, pos)``.
    feature_dim : the feature axis of the module's input (``-1``; ``1`` for channels-first
        inputs such as those of convolutions, which are moved to the last axis).
    kwarg : name of the keyword argument read, when the module gets no positional tensor.
    """

    arg_positions: tuple[int, ...]
    split: tuple[int, ...]
    shape: tuple[int, ...]
    feature_dim: int = -1
    kwarg: str | None = None


#: modules whose (>= 3-d) inputs are channels-first: channels are the features, the
#: spatial axes positions
CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)  # fmt: skip


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


def model_input(batch: Any) -> Any:
    """The model input of one batch: the batch itself or the first element of a tuple/list.

    A mapping of tensors (e.g. ``{"input_ids": ..., "attention_mask": ...}``) is a model input
    passed as keyword arguments.
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise DataError("a batch is an empty tuple; expected (inputs, ...)")
        batch = batch[0]
    if isinstance(batch, Mapping):
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        if not tensors:
            raise DataError(f"a batch is a mapping without tensors (keys {list(batch)})")
        sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
        if len(sizes) != 1 or -1 in sizes:
            shapes = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            raise DataError(
                "the tensors of a batch mapping must share their first (batch) dimension; got "
                f"shapes {shapes}"
            )
        return batch
    if not isinstance(batch, torch.Tensor):
        raise DataError(
            f"each batch must be a tensor, a mapping of keyword tensors, or a tuple whose first "
            f"element is one, got {type(batch).__name__}"
        )
    return batch


def feature_dim_of(module: nn.Module | None, ndim: int, override: int | None = None) -> int:
    """The feature axis of a module input with ``ndim`` axes (normalised to be positive)."""
    if override is not None:
        dim = override if override >= 0 else ndim + override
        if not 1 <= dim < ndim:
            raise DataError(
                f"feature_dim={override} is not an axis after the batch axis of a {ndim}-d input"
            )
        return dim
    if isinstance(module, CHANNELS_FIRST) and ndim >= 3:
        return 1
    return ndim - 1


def _layout_of(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    module: nn.Module | None = None,
    feature_dim: int | None = None,
) -> tuple[InputLayout, torch.Tensor]:
    """The layout of a module's activation input and a *copy* of it, features last.

    The activation is the first floating-point positional tensor (other arguments, e.g. an
    attention mask, pass through unchanged); a module called with keyword tensors only reads
    ``hidden_states`` or else its first floating keyword tensor. The copy keeps gradients but
    not storage: a model that later modifies the tensor in place (``ReLU(inplace=True)``,
    ``h += ...``) must not change what was read.
    """
    positions = [
        i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
    ]
    kw = {k: v for k, v in (kwargs or {}).items()
          if isinstance(v, torch.Tensor) and v.is_floating_point()}  # fmt: skip
    kwarg: str | None = None
    if positions:
        tensor = args[positions[0]]
    elif kw:
        kwarg = "hidden_states" if "hidden_states" in kw else next(iter(kw))
        tensor = kw[kwarg]
    else:
        kinds = [
            type(a).__name__ if not isinstance(a, torch.Tensor) else str(a.dtype) for a in args
        ]
        raise DataError(
            f"module {name!r} receives no floating-point tensor input (its inputs: {kinds}); "
            "it cannot be a node layer"
        )
    if tensor.ndim < 2:
        raise DataError(f"input of module {name!r} has no batch dimension: {tuple(tensor.shape)}")
    dim = feature_dim_of(module, tensor.ndim, feature_dim)
    acts = tensor.movedim(dim, -1) if dim != tensor.ndim - 1 else tensor
    fd = -1 if dim == tensor.ndim - 1 else dim
    layout = InputLayout(tuple(positions[:1]), (acts.shape[-1],), tuple(acts.shape[:-1]), fd, kwarg)
    return layout, acts.clone()


def _substitute(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: torch.Tensor, layout: InputLayout
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` with the activation replaced by ``value`` (features last)."""
    old = kwargs[layout.kwarg] if layout.kwarg is not None else args[layout.arg_positions[0]]
    fd = layout.feature_dim
    moved = old.shape if fd == -1 else old.movedim(fd, -1).shape
    new = value.reshape(value.shape[0], *moved[1:-1], value.shape[-1])
    if fd != -1:
        new = new.movedim(-1, fd)
    new = new.clone()  # so that in-place operations of the model cannot write into ``value``
    if layout.kwarg is not None:
        return args, {**kwargs, layout.kwarg: new}
    new_args = list(args)
    new_args[layout.arg_positions[0]] = new
    return tuple(new_args), kwargs


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


def _shapes(inputs: Any) -> str:
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}={tuple(v.shape)}" for k, v in inputs.items() if hasattr(v, "shape"))
    return str(tuple(inputs.shape)) if hasattr(inputs, "shape") else type(inputs).__name__


def forward_failure(
    model: nn.Module, inputs: Any, err: BaseException, batch_index: int | None = None
) -> DataError:
    """A :class:`DataError` for ``model(inputs)`` raising ``err``: the forward pass is run
    again with hooks on every submodule to name the innermost module that failed (and, for
    a linear or convolution layer, the width it expects against the width it got)."""
    stack: list[str] = []
    failed: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            stack.append(name)

        return hook

    def leave(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:  # None: output unchanged
            stack.pop()

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave(name)))
    try:
        with torch.no_grad():
            call_model(model, inputs)
    except Exception:  # the same failure again: the innermost module still on the stack
        failed = [n for n in stack if n]
    finally:
        for h in handles:
            h.remove()
    where = f"batch {batch_index}" if batch_index is not None else "a batch"
    msg = f"the model failed on {where} (input shape {_shapes(inputs)})"
    if failed:
        module = model.get_submodule(failed[-1])
        msg += f" inside module {failed[-1]!r} ({type(module).__name__})"
        expects = getattr(module, "in_features", getattr(module, "in_channels", None))
        if expects is not None:
            msg += f", which expects {expects} input features"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(f"{msg}: {first}. Check that the data fit the model.")


def capture(
    model: nn.Module,
    inputs: Any,
    modules: dict[str, nn.Module | None],
    output: OutputSelector | None = None,
    feature_dims: Mapping[str, int] | None = None,
    batch_index: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, InputLayout]]:
    """Run ``model(inputs)`` once and return the input activations of the node layers.

    Parameters
    ----------
    model : the network (any ``nn.Module`` taking one positional input, or keyword tensors).
    inputs : the model input for one batch (a tensor, or a mapping of keyword tensors).
    modules : result of :func:`resolve_node_layers` (insertion order = expected forward order).
    output : selector of the analysed tensor from the model's return value
        (:func:`select_output`).
    feature_dims : per node layer, the feature axis of its input (default: last, channels for
        convolution / batch-norm / pooling inputs, :func:`feature_dim_of`).
    batch_index : position of this batch in the data, named in errors.

    Returns
    -------
    acts : name -> tensor ``(batch, [pos...], d)`` (features last).
    layouts : name -> :class:`InputLayout` (``"output"`` has a layout with one input).

    Raises
    ------
    NodeLayerError
        If a module is never called, called more than once, or the node layers are not in
        forward order (the actual order is reported).
    DataError
        If the model itself fails on the batch (e.g. an input of the wrong width): the
        message names the innermost module that failed (:func:`forward_failure`).
    """
    names = list(modules)
    acts: dict[str, torch.Tensor] = {}
    layouts: dict[str, InputLayout] = {}
    order: list[str] = []
    n_modules = sum(m is not None for m in modules.values())
    stop_early = OUTPUT not in modules

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in acts:
                raise NodeLayerError(
                    f"module {name!r} is called more than once in one forward pass; a node "
                    "layer must be a module that runs exactly once (e.g. TransformerLens calls "
                    "blocks.{i}.ln1 three times, for q, k and v: use blocks.{i}.hook_resid_pre "
                    "or blocks.{i}.ln1.hook_normalized)"
                )
            fd = (feature_dims or {}).get(name)
            layouts[name], acts[name] = _layout_of(name, args, kwargs, module, fd)
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
        try:
            out = call_model(model, inputs)
        except InterbasisError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            for h in handles:  # the diagnosis reruns the forward pass without our hooks
                h.remove()
            raise forward_failure(model, inputs, err, batch_index) from err
        if OUTPUT in modules:
            acts[OUTPUT] = y = select_output(out, output)
            layouts[OUTPUT] = InputLayout((0,), (y.shape[-1],), tuple(y.shape[:-1]))
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
    read_feature_dim: int | None = None,
) -> torch.Tensor:
    """Run the model with the input of ``inject`` replaced by ``value``; return ``read``'s input.

    Parameters
    ----------
    inputs : model input of the batch (needed to run the forward pass up to ``inject``).
    inject : (name, module) whose input is substituted.
    value : ``(batch, [pos...], d)`` activations (features last) in the layout ``layout``.
    read : (name, module) whose input is returned; module ``None`` means the model output
        (selected by ``output``, :func:`select_output`).

    This function is pure in ``value`` and so can be differentiated with ``torch.func``.
    """
    inject_name, inject_module = inject
    read_name, read_module = read
    result: list[torch.Tensor] = []

    def inject_hook(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return _substitute(args, kwargs, value, layout)

    def read_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        _, acts = _layout_of(read_name, args, kwargs, module, read_feature_dim)
        result.append(acts)
        raise _StopForward

    handles = [inject_module.register_forward_pre_hook(inject_hook, with_kwargs=True)]
    if read_module is not None:
        handles.append(read_module.register_forward_pre_hook(read_hook, with_kwargs=True))
    try:
        out = call_model(model, inputs)
        if read_module is None:  # reading the model output
            result.append(select_output(out, output))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if not result:
        raise NodeLayerError(f"module {read_name!r} was not reached after {inject_name!r}")
    return result[0]
