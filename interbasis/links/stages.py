"""Weight layers between consecutive node layers, read in interaction-basis coordinates.

A *graph stage* is a module ``l`` whose input is node layer ``l`` and whose output is the
input of the next node layer, affine in its input (an ``nn.Linear``, TransformerLens's
``unembed``, two Linear maps side by side, ...): ``f^{l+1} = [f^l, 1] @ W_bar^T``.
Writing the input in its basis, ``[f^l, 1] = f_hat^l @ C^l_pinv``, and reading the output in
the next one, ``f_hat^{l+1} = f^{l+1} @ C^{l+1}_{:d}`` (+ constant), the stage becomes the
transition between node functions (DESIGN §4's closed forms use the same matrix)

.. math::
    T = C^l_{pinv}\\, \\bar W^T C^{l+1}_{:d} \\quad (n_l \\times n_{l+1}), \\qquad
    \\hat f^{l+1} = \\hat f^l\\, T + \\text{const},

so a parameter change ``delta theta`` of the stage is the change ``delta T`` of the weight
between in-node ``j`` and out-node ``i``. ``delta W_bar`` is read without knowing how the
module stores its weight: the forward-mode derivative ``D(a) = d/dt g(a; theta + t delta
theta)`` at the probe inputs ``0, e_1, ..., e_d`` gives ``delta b = D(0)`` and
``delta W^T e_r = D(e_r) - D(0)``.

:func:`find_graph_stages`, :func:`stage_transitions` and :func:`node_pair_direction` take
``train_mode`` (:mod:`interbasis.train_mode`): a model in train mode is analysed as an
eval-mode copy with a warning (default ``"eval"``; batch norm is affine only in eval mode),
refused (``"error"``) or used as it is (``"keep"``); the model and its buffers never change.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacfwd, jvp, vmap

from interbasis.basis import Basis
from interbasis.capture import OUTPUT, capture, model_input, resolve_node_layers
from interbasis.data import iter_batches
from interbasis.errors import DataError, ShapeError
from interbasis.links.jvp import Layout, activation_rows, float64_copy
from interbasis.train_mode import TrainMode, analysed_model

#: A stage reproduces the next node layer, and its affine fit reproduces the stage, to this
#: relative accuracy in float64 (round-off is ~1e-15; a nonlinearity misses by far more).
AFFINE_RTOL = 1e-9


@dataclass(frozen=True)
class GraphStage:
    """Module ``input`` maps node layer ``input`` affinely onto node layer ``output``.

    Attributes
    ----------
    input, output : node-layer names (``output`` may be ``"output"``).
    params : the module's trainable parameters (full names), in ``named_parameters`` order.
    """

    input: str
    output: str
    params: tuple[str, ...]


def _module_params(model: nn.Module, name: str) -> tuple[str, ...]:
    prefix = f"{name}." if name else ""
    return tuple(
        prefix + n for n, p in model.get_submodule(name).named_parameters() if p.requires_grad
    )


def _call(module: nn.Module, params: Mapping[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    out = functional_call(module, dict(params), (a,))
    if not isinstance(out, torch.Tensor):
        raise DataError(
            f"module {type(module).__name__} returns {type(out).__name__}, not a tensor: a "
            "graph stage must map its input tensor to one output tensor"
        )
    return out


def check_stage_bases(stage: GraphStage, basis_in: Basis, basis_out: Basis) -> None:
    """Raise :class:`DataError` unless the bases are those of the stage's node layers."""
    if (basis_in.name, basis_out.name) != (stage.input, stage.output):
        raise DataError(
            f"stage {stage.input} -> {stage.output} got the bases of {basis_in.name} -> "
            f"{basis_out.name}"
        )


def _local(params: Sequence[str], prefix: str) -> list[str]:
    return [p[len(prefix) + 1 :] if prefix else p for p in params]


@torch.no_grad()
def find_graph_stages(
    model: nn.Module, data: object, node_layers: Sequence[str], *, train_mode: TrainMode = "eval"
) -> tuple[list[GraphStage], list[str]]:
    """The graph stages among consecutive node layers, checked on the first batch of ``data``.

    A pair ``(l, l+1)`` is a stage when module ``l`` has trainable parameters, its output is
    the input of ``l+1`` and it is affine in its input (both to ``AFFINE_RTOL``).
    ``train_mode``: the policy for a model in train mode (module docstring).

    Returns
    -------
    stages : the stages, in forward order.
    notes : one line per pair with parameters that is *not* a stage, saying why.
    """
    net = float64_copy(model, train_mode, "graph stages")
    names = list(node_layers)
    modules = resolve_node_layers(net, names)
    x = next(iter_batches(data, None, torch.device("cpu"), torch.float64))
    acts, _ = capture(net, model_input(x), modules)
    stages, notes = [], []
    for src, dst in itertools.pairwise(names):
        if src == OUTPUT:
            continue
        params = _module_params(net, src)
        if not params:
            continue
        module = net.get_submodule(src)
        own = dict(module.named_parameters())
        a = acts[src].reshape(-1, acts[src].shape[-1])
        want = acts[dst].reshape(-1, acts[dst].shape[-1])
        try:
            got = _call(module, own, a)
        except (RuntimeError, DataError, TypeError) as err:
            notes.append(f"{src} -> {dst}: module {src!r} cannot be applied alone ({err})")
            continue
        scale = float(want.abs().max().clamp_min(1e-300))
        if got.shape != want.shape or float((got - want).abs().max()) > AFFINE_RTOL * scale:
            notes.append(f"{src} -> {dst}: the output of {src!r} is not the input of {dst!r}")
            continue
        d = a.shape[1]
        probes = torch.cat([torch.zeros(1, d, dtype=a.dtype), torch.eye(d, dtype=a.dtype)])
        with torch.no_grad():
            out = _call(module, own, probes)
        fit = out[0] + a @ (out[1:] - out[0])
        if float((fit - want).abs().max()) > AFFINE_RTOL * scale:
            notes.append(f"{src} -> {dst}: module {src!r} is not affine in its input")
            continue
        stages.append(GraphStage(src, dst, params))
    return stages, notes


def _probe_outputs(module: nn.Module, params: Mapping[str, torch.Tensor], d: int) -> torch.Tensor:
    """``[W^T; b]`` ``(d + 1, d_out)`` of an affine module, read at the probes ``0, e_r``."""
    probes = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    out = _call(module, params, probes)
    return torch.cat([out[1:] - out[:1], out[:1]])


def stage_weight_changes(
    model: nn.Module, stage: GraphStage, d_in: int, tangents: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``delta W_bar^T = [delta W^T; delta b]`` ``(k, d_in + 1, d_out)`` of ``k`` changes.

    Forward-mode derivatives of the module's outputs at the probes ``0, e_1, ..., e_d`` (the
    module is affine in its input, so they hold the whole weight change).

    Parameters
    ----------
    model : a float64 model (e.g. :func:`interbasis.links.jvp.float64_copy`).
    tangents : ``{full parameter name: (k, *shape)}`` for every parameter of the stage.
    """
    module = model.get_submodule(stage.input)
    local = _local(stage.params, stage.input)
    primals = {n: p.detach() for n, p in module.named_parameters() if n in local}
    tang = {loc: tangents[full] for loc, full in zip(local, stage.params, strict=True)}

    def derivative(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return jvp(lambda p: _probe_outputs(module, p, d_in), (primals,), (t,))[1]

    return vmap(derivative)(tang).to(torch.float64)


def in_coordinates(basis: Basis) -> torch.Tensor:
    """``(n, d + 1)``: ``C_pinv`` acting on ``[f, 1]`` (a zero column added without constant)."""
    C_pinv = basis.C_pinv.to(torch.float64)
    if basis.has_constant:
        return C_pinv
    return torch.cat([C_pinv, C_pinv.new_zeros(C_pinv.shape[0], 1)], dim=1)


def stage_transitions(
    model: nn.Module,
    stage: GraphStage,
    basis_in: Basis,
    basis_out: Basis,
    tangents: dict[str, torch.Tensor],
    *,
    train_mode: TrainMode = "eval",
) -> torch.Tensor:
    """``delta T = C^l_pinv delta W_bar^T C^{l+1}_{:d}`` of ``k`` parameter changes.

    ``model`` is a float64 model (e.g. :func:`interbasis.links.jvp.float64_copy`);
    ``train_mode``: the policy for a model in train mode (module docstring).

    Returns
    -------
    ``(k, n_in, n_out)`` float64: row ``j`` = in-node ``j`` (0 = constant), column ``i`` =
    out-node ``i``. Without a constant in-node a bias change has no row (it is off-basis).
    """
    check_stage_bases(stage, basis_in, basis_out)
    model = analysed_model(model, train_mode, "stage transitions")
    dW = stage_weight_changes(model, stage, basis_in.dim, tangents)
    return in_coordinates(basis_in) @ dW @ activation_rows(basis_out).to(torch.float64)


def second_moments(basis: Basis, gram: torch.Tensor) -> torch.Tensor:
    """``(n,)``: ``E[f_hat_j^2]`` of each node, ``diag(C_augᵀ G C_aug)``.

    ``gram`` is the layer's uncentred, bias-folded activation Gram ``E[[f, 1]ᵀ[f, 1]]``
    ``(d + 1, d + 1)`` (``activation_grams(...)[name].gram(fold_bias=True)``); ``C_aug`` is
    ``C`` with a zero row for the constant input when the basis has no constant node. Read
    from the Gram, not from ``basis.eigenvalues``: Λ is the variance for centred bases but the
    second moment for uncentred ones, and a basis does not record which it is.
    """
    G = torch.as_tensor(gram, dtype=torch.float64)
    C = basis.C.to(torch.float64)
    if not basis.has_constant:
        C = torch.cat([C, C.new_zeros(1, C.shape[1])], dim=0)
    if G.shape != (C.shape[0], C.shape[0]):
        raise ShapeError(
            f"gram of {basis.name!r} must be ({C.shape[0]}, {C.shape[0]}) (bias-folded: "
            f"activation_grams(...)[{basis.name!r}].gram(fold_bias=True)), got {tuple(G.shape)}"
        )
    return torch.einsum("ab,an,bn->n", G, C, C)


def node_pair_direction(
    model: nn.Module,
    stage: GraphStage,
    basis_in: Basis,
    basis_out: Basis,
    out_node: int,
    in_node: int,
    layout: Layout,
    *,
    train_mode: TrainMode = "eval",
) -> torch.Tensor:
    """The parameter direction that is the weight from ``in_node`` to ``out_node`` alone.

    Solves ``delta T = e_j e_i^T`` for the stage's parameters: the target
    ``delta W_bar^T = C^l[:, j] C^{l+1}_pinv[i, :d]`` is mapped to parameters through the
    (linear) Jacobian of the module's probe outputs with respect to its parameters, by
    least squares; a target outside that map's range raises :class:`DataError`. Meant for
    small stages (the Jacobian is ``(d_in + 1) d_out x P_stage``). ``train_mode``: the
    policy for a model in train mode (module docstring).

    Returns
    -------
    ``(P,)`` float64 in the order of ``layout`` (zero outside the stage).
    """
    check_stage_bases(stage, basis_in, basis_out)
    net = float64_copy(model, train_mode, "node-pair direction")
    module = net.get_submodule(stage.input)
    local = _local(stage.params, stage.input)
    primals = {n: p.detach() for n, p in module.named_parameters() if n in local}
    sizes = [primals[n].numel() for n in local]

    def outputs(flat: torch.Tensor) -> torch.Tensor:
        ps = {n: t.reshape(primals[n].shape) for n, t in zip(local, flat.split(sizes), strict=True)}
        return _probe_outputs(module, ps, basis_in.dim).reshape(-1)  # [W^T; b]

    theta = torch.cat([primals[n].reshape(-1) for n in local])
    J = jacfwd(outputs)(theta)
    C_in = basis_in.C.to(torch.float64)
    col = (
        C_in[:, in_node]
        if basis_in.has_constant
        else torch.cat([C_in[:, in_node], C_in.new_zeros(1)])
    )
    target = torch.outer(col, basis_out.C_pinv.to(torch.float64)[out_node, : basis_out.dim])
    sol = torch.linalg.lstsq(J, target.reshape(-1, 1), driver="gelsd").solution[:, 0]
    resid = float((J @ sol - target.reshape(-1)).norm())
    if resid > 1e-8 * max(float(target.norm()), 1e-300):
        raise DataError(
            f"stage {stage.input} -> {stage.output}: no parameter change of {list(stage.params)} "
            f"gives the weight {in_node} -> {out_node} alone (residual {resid:.3g}): the "
            "module cannot express that change (e.g. a constant in-node without a bias)"
        )
    pieces = dict(zip(stage.params, sol.split(sizes), strict=True))
    parts = []
    for n, s in zip(layout.names, layout.shapes, strict=True):
        size = int(torch.Size(s).numel())
        parts.append(pieces[n] if n in pieces else torch.zeros(size, dtype=torch.float64))
    return torch.cat(parts)
