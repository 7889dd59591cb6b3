"""Node functions of a graph and their first-order change along parameter directions.

Every node ``i`` of node layer ``L`` is a function of the model input,
``f_hat^L_i(x; theta) = ([f^L(x; theta), 1] @ C^L)_i`` (DESIGN §4, row convention). A
parameter direction ``v`` (a flat vector in the order of a parameter layout) changes it, to
first order, by

.. math::
    \\delta \\hat f^L_i(x) = \\frac{d}{dt} \\hat f^L_i(x; \\theta + t v)\\Big|_{t=0}
                          = \\big(J^L(x)\\, v\\big) \\cdot C^L_{:d, i},

``J^L = d f^L / d theta``. The bases ``C^L`` stay fixed: they are the coordinates in which
the change is read. :func:`node_function_jvps` computes this for every node of every layer by
one forward-mode pass (:func:`torch.func.jvp` through :func:`torch.func.functional_call`,
activations read with forward pre-hooks), vmapped over a block of directions and streamed
over batches of data. The constant node 0 never changes.

Every function here that runs a model takes ``train_mode`` (:mod:`interbasis.train_mode`): a
model in train mode is analysed as an eval-mode copy with a warning (``"eval"``, default),
refused with :class:`~interbasis.errors.DataError` (``"error"``) or run in train mode
(``"keep"``); the model is always copied (float64), so it, its mode and its buffers never change.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from interbasis.basis import Basis
from interbasis.capture import OUTPUT, capture, resolve_node_layers
from interbasis.data import iter_batches
from interbasis.errors import DataError, NonFiniteError, ShapeError
from interbasis.train_mode import TrainMode, needs_eval_copy


class Layout(Protocol):
    """Names and shapes of the parameters a flat direction vector is cut into.

    Both :class:`interbasis.curvature.ParamLayout` and
    :class:`interbasis.spectral_edge.ParamLayout` satisfy it.
    """

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def shapes(self) -> tuple[Any, ...]: ...


def layout_size(layout: Layout) -> int:
    """Length of the flat vector of ``layout``."""
    return sum(int(torch.Size(s).numel()) for s in layout.shapes)


def split_directions(layout: Layout, directions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cut ``directions`` ``(k, P)`` into ``{name: (k, *shape)}`` (float64).

    Raises
    ------
    ShapeError
        If ``P`` is not the layout's length (the expected length is named).
    """
    d = torch.as_tensor(directions).to(torch.float64)
    if d.ndim == 1:
        d = d[None]
    size = layout_size(layout)
    if d.ndim != 2 or d.shape[1] != size:
        raise ShapeError(
            f"directions must have shape (k, {size}) or ({size},) for the parameters "
            f"{list(layout.names)[:6]}{'...' if len(layout.names) > 6 else ''}, got "
            f"{tuple(torch.as_tensor(directions).shape)}"
        )
    if not bool(torch.isfinite(d).all()):
        raise NonFiniteError("directions contain NaN or Inf")
    sizes = [int(torch.Size(s).numel()) for s in layout.shapes]
    parts = torch.split(d, sizes, dim=1)
    return {
        n: p.reshape(d.shape[0], *tuple(s))
        for n, p, s in zip(layout.names, parts, layout.shapes, strict=True)
    }


def float64_copy(
    model: nn.Module, train_mode: TrainMode = "eval", what: str = "link analysis"
) -> nn.Module:
    """A float64 copy of ``model`` (the model itself, its mode and buffers are left untouched).

    The copy is in eval mode for a model in eval mode and, under the train-mode policy
    (:mod:`interbasis.train_mode`), for a model in train mode with ``train_mode="eval"`` (with
    a warning naming ``what``); ``"error"`` refuses a train-mode model with
    :class:`~interbasis.errors.DataError`, ``"keep"`` keeps the copy in train mode.
    """
    eval_copy = needs_eval_copy(model, train_mode, what)
    net = copy.deepcopy(model).to(torch.float64)
    return net.eval() if eval_copy or not model.training else net


def _floating_input(args: tuple[Any, ...]) -> torch.Tensor:
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=-1)


def activations_fn(
    model: nn.Module, names: Sequence[str]
) -> Callable[[dict[str, torch.Tensor], torch.Tensor], tuple[torch.Tensor, ...]]:
    """``(params, x) -> (f^L(x; params) for L in names)``, pure in ``params``.

    ``params`` may hold any subset of the model's parameters (the rest are the model's own).
    Activations are read at module inputs (several floating inputs are concatenated on the
    last dimension, as :func:`interbasis.capture.capture` does); ``"output"`` is the output.
    """
    modules = resolve_node_layers(model, list(names))

    def fn(params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        got: dict[str, torch.Tensor] = {}

        def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
            def read(_module: nn.Module, args: tuple[Any, ...]) -> None:
                got[name] = _floating_input(args)

            return read

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items() if m]
        try:
            out = functional_call(model, params, (x,), strict=False)
        finally:
            for h in handles:
                h.remove()
        if OUTPUT in modules:
            got[OUTPUT] = out
        missing = [n for n in names if n not in got]
        if missing:
            raise DataError(
                f"node layers {missing} were not reached in the forward pass: their modules "
                "exist but are not called; use modules that the forward pass runs"
            )
        return tuple(got[n] for n in names)

    return fn


def activation_rows(basis: Basis) -> torch.Tensor:
    """``(d, n)``: the rows of ``C`` acting on the activations (all nodes, constant included,
    so node indices match the graph's; :func:`interbasis.build.node_map` drops the constant)."""
    return basis.C[:-1] if basis.has_constant else basis.C


@dataclass(frozen=True)
class NodeJVPs:
    """First-order change of every node function along ``k`` parameter directions.

    Attributes
    ----------
    layers : node-layer names, in forward order.
    deltas : ``name -> (k, N, [pos], n_L)`` float64 on the CPU: ``delta f_hat^L_i(x)``.
    """

    layers: tuple[str, ...]
    deltas: dict[str, torch.Tensor]

    @property
    def n_directions(self) -> int:
        return int(next(iter(self.deltas.values())).shape[0])

    def movement(self) -> dict[str, torch.Tensor]:
        """``name -> (k, n_L)``: ``E_x delta f_hat_i(x)^2`` (positions pooled as samples)."""
        out = {}
        for name, d in self.deltas.items():
            out[name] = (d**2).reshape(d.shape[0], -1, d.shape[-1]).mean(dim=1)
        return out


def node_function_jvps(
    model: nn.Module,
    data: Any,
    bases: Sequence[Basis],
    directions: torch.Tensor,
    layout: Layout,
    *,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
) -> NodeJVPs:
    """``delta f_hat^L(x)`` for every node layer ``L`` and direction (module docstring).

    Parameters
    ----------
    model : the network (a float64 copy is differentiated; the model is not changed).
    train_mode : the policy for a model in train mode (module docstring).
    data : model inputs (tensor or re-iterable of batches).
    bases : one :class:`Basis` per node layer, in forward order (``b.name`` = module name or
        ``"output"``).
    directions : ``(k, P)`` or ``(P,)`` parameter directions in the order of ``layout``
        (not normalised here).
    layout : the parameters the directions live in (e.g. ``ParamLayout.from_model``).

    Returns
    -------
    NodeJVPs
        ``deltas[L]`` of shape ``(k, N, [pos], n_L)``.

    Raises
    ------
    DataError
        Layout parameters not in the model, node layers the forward pass does not reach, an
        unknown ``train_mode`` or a train-mode model with ``train_mode="error"``.
    ShapeError
        A layout shape that differs from the model's, directions that do not fit the layout,
        a basis of another width than its layer's activations.
    NonFiniteError
        NaN/Inf directions or JVPs.
    """
    net = float64_copy(model, train_mode, "node-function JVPs")
    named = dict(net.named_parameters())
    unknown = [n for n in layout.names if n not in named]
    if unknown:
        raise DataError(f"parameters {unknown} of the layout are not in the model")
    for n, s in zip(layout.names, layout.shapes, strict=True):
        if tuple(named[n].shape) != tuple(s):
            raise ShapeError(
                f"parameter {n!r} has shape {tuple(named[n].shape)} in the model but "
                f"{tuple(s)} in the layout: build the layout from this model"
            )
    tangents = split_directions(layout, directions)
    primals = {n: named[n].detach() for n in layout.names}
    names = [b.name for b in bases]
    fn = activations_fn(net, names)
    maps = [activation_rows(b) for b in bases]
    chunks: list[list[torch.Tensor]] = [[] for _ in names]
    with warnings.catch_warnings():  # torch's first jvp scripts its decompositions
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
        for x in iter_batches(data, batch_size, torch.device("cpu"), torch.float64):

            def one(t: dict[str, torch.Tensor], x: torch.Tensor = x) -> tuple[torch.Tensor, ...]:
                return jvp(lambda p: fn(p, x), (primals,), (t,))[1]

            outs = vmap(one)(tangents)
            for i, (d, C) in enumerate(zip(outs, maps, strict=True)):
                if d.shape[-1] != C.shape[0]:
                    raise ShapeError(
                        f"node layer {names[i]!r}: activations have width {d.shape[-1]}, the "
                        f"basis expects {C.shape[0]}"
                    )
                chunks[i].append((d.to(torch.float64) @ C).detach())
    deltas = {n: torch.cat(c, dim=1) for n, c in zip(names, chunks, strict=True)}
    for n, d in deltas.items():
        if not bool(torch.isfinite(d).all()):
            raise NonFiniteError(
                f"node layer {n!r}: the JVP of its node functions has "
                f"{int((~torch.isfinite(d)).sum())} NaN/Inf entries: check the model's "
                "parameters and the data for NaN/Inf or overflow"
            )
    return NodeJVPs(tuple(names), deltas)


@torch.no_grad()
def node_functions(
    model: nn.Module,
    data: Any,
    bases: Sequence[Basis],
    *,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
) -> dict[str, torch.Tensor]:
    """``name -> f_hat^L(x)`` of shape ``(N, [pos], n_L)`` (float64, CPU), node 0 included.

    ``train_mode``: the policy for a model in train mode (module docstring).
    """
    net = float64_copy(model, train_mode, "node functions")
    modules = resolve_node_layers(net, [b.name for b in bases])
    parts: dict[str, list[torch.Tensor]] = {b.name: [] for b in bases}
    for x in iter_batches(data, batch_size, torch.device("cpu"), torch.float64):
        acts, _ = capture(net, x, modules)
        for b in bases:
            parts[b.name].append(b.transform(acts[b.name]))
    return {n: torch.cat(p) for n, p in parts.items()}
