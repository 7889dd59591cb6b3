"""Piecewise-linear chains: per-input layer Jacobians ``D_l W_l`` and their products.

A ReLU / leaky-ReLU MLP is, at a fixed input, a product of masked linear maps (seed 002,
"fixed-gates view"). With column vectors and layer activations ``h_0 = x``,
``z_{l+1} = W_{l+1} h_l + b_{l+1}``, ``h_{l+1} = D_{l+1} z_{l+1}``, the Jacobian of one layer is

.. math::  A_l = \\partial h_{l+1} / \\partial h_l = D_{l+1} W_{l+1}, \\qquad
           J_{a:b} = A_{b-1} \\cdots A_a \\quad (J_{a:a} = I),

so ``J_{0:L}`` is the input–output Jacobian. Index ``l`` of the chain is the activation space at
the *input* of the ``l``-th linear map (its name is ``names[l]``), the same convention as
:mod:`interbasis.capture`; index ``L`` is the output.

Gate convention at kinks: ``D = 1`` where ``z > 0`` and ``D = slope`` where ``z <= 0`` (ReLU:
``slope = 0``), which is the subgradient torch's autograd uses, so the products agree with
``torch.func.jacrev`` even at exact kinks. ``LayerJacobians.n_kinks`` counts the
pre-activations that were exactly 0.

Eval-mode regularisers are read as what they compute: ``nn.Dropout`` (any ``_DropoutNd``) is
the identity, and ``nn.BatchNorm1d`` with running statistics is the affine map
``s * h + c`` (``s = gamma / sqrt(running_var + eps)``, ``c = beta - s * running_mean``),
folded into the ``nn.Linear`` it follows directly (``Linear, BatchNorm1d, ReLU``) or, after an
activation, its own diagonal factor named by the batch-norm module. In train mode both make
the network random or batch-dependent: the entry points that take ``train_mode`` (one policy,
:mod:`interbasis.train_mode`) analyse an eval-mode copy by default, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from interbasis.errors import DataError, NodeLayerError, NotPiecewiseLinearError, ShapeError
from interbasis.performance import SMALL_WORK, single_thread
from interbasis.train_mode import TrainMode, analysed_model

__all__ = [
    "LayerJacobians",
    "NotPiecewiseLinearError",
    "PiecewiseLinearLayer",
    "jacobian_product",
    "layer_jacobians",
    "piecewise_linear_layers",
]


@dataclass(frozen=True)
class PiecewiseLinearLayer:
    """One step ``h -> gate(z) * z`` with ``z = W h + b``.

    ``weight`` is ``(d_out, d_in)`` (column convention, as ``nn.Linear.weight``), ``bias`` is
    ``(d_out,)`` or None. ``slope`` is the gate value for ``z <= 0`` (0 for ReLU) or None for
    no activation; ``mask`` ``(d_out,)`` fixes the gates regardless of the input.
    """

    name: str
    weight: Tensor
    bias: Tensor | None
    slope: float | None = None
    mask: Tensor | None = None

    def gates(self, z: Tensor) -> Tensor:
        """Gate values ``diag(D)`` for pre-activations ``z`` ``(batch, d_out)``."""
        if self.mask is not None:
            return self.mask.to(z).expand_as(z)
        if self.slope is None:
            return torch.ones_like(z)
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))


def _activation_slope(module: nn.Module, where: str) -> float | None:
    if isinstance(module, nn.ReLU):
        return 0.0
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.Identity):
        return None
    raise NotPiecewiseLinearError(
        f"{where} is {type(module).__name__}, not ReLU / LeakyReLU / Identity; deep Jacobian "
        "spectra need piecewise-linear gates (no linearisation of smooth activations is done)"
    )


def _linear(name: str, module: nn.Linear) -> PiecewiseLinearLayer:
    return PiecewiseLinearLayer(name, module.weight.detach(), _detached(module.bias))


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _train_mode_error(module: nn.Module, where: str, why: str) -> NotPiecewiseLinearError:
    return NotPiecewiseLinearError(
        f"module {where!r} ({type(module).__name__}) {why}, so the network is not one chain of "
        'per-input linear maps; call model.eval(), or pass train_mode="eval" (the default) '
        "to analyse the eval-mode function of a copy"
    )


def _batch_norm_affine(module: nn.BatchNorm1d, where: str) -> tuple[Tensor, Tensor]:
    """``(s, c)`` with ``module(h) = s * h + c`` in eval mode, float64."""
    mean, var = module.running_mean, module.running_var
    if module.training or mean is None or var is None:
        raise _train_mode_error(
            module,
            where,
            "normalises with the statistics of each batch (train mode or "
            "track_running_stats=False): it mixes the samples of a batch",
        )
    scale = 1.0 / torch.sqrt(var.detach().to(torch.float64) + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().to(torch.float64)
    shift = -scale * mean.detach().to(torch.float64)
    if module.bias is not None:
        shift = shift + module.bias.detach().to(torch.float64)
    return scale, shift


def _fold_batch_norm(
    last: PiecewiseLinearLayer, scale: Tensor, shift: Tensor
) -> PiecewiseLinearLayer:
    """``last`` followed by the affine map ``s * z + c`` as one layer (same name, same dtype)."""
    w = last.weight.to(torch.float64)
    b = shift if last.bias is None else scale * last.bias.to(torch.float64) + shift
    dtype = last.weight.dtype
    return PiecewiseLinearLayer(last.name, (scale[:, None] * w).to(dtype), b.to(dtype), last.slope)


def _from_sequential(model: nn.Sequential, prefix: str) -> list[PiecewiseLinearLayer]:
    layers: list[PiecewiseLinearLayer] = []
    gated = False
    for name, child in model._modules.items():  # named_children() skips repeated modules
        if child is None:
            continue
        full = prefix + name
        if isinstance(child, nn.Linear):
            layers.append(_linear(full, child))
            gated = False
            continue
        if isinstance(child, nn.modules.dropout._DropoutNd):
            if child.training and child.p > 0:
                raise _train_mode_error(child, full, "is in train mode: it zeroes random units")
            continue  # the identity in eval mode
        if isinstance(child, nn.BatchNorm1d):
            scale, shift = _batch_norm_affine(child, full)
            if layers and not gated:  # Linear, BatchNorm1d: one affine map
                layers[-1] = _fold_batch_norm(layers[-1], scale, shift)
            else:  # after an activation (or first): its own diagonal factor
                dtype = child.running_mean.dtype if child.running_mean is not None else None
                layers.append(
                    PiecewiseLinearLayer(full, torch.diag(scale).to(dtype), shift.to(dtype))
                )
                gated = False
            continue
        slope = _activation_slope(child, f"module {full!r}")
        if slope is None:
            continue
        if not layers or gated:
            raise NotPiecewiseLinearError(
                f"activation {full!r} does not directly follow a Linear layer; expected "
                "Linear, act, Linear, act, ..."
            )
        last = layers[-1]
        layers[-1] = PiecewiseLinearLayer(last.name, last.weight, last.bias, slope)
        gated = True
    return layers


def _tl_mlp_slope(model: nn.Module) -> float:
    act = getattr(model, "act", None) or getattr(model, "act_fn", None)
    cfg = getattr(model, "cfg", None)
    if act is None and cfg is not None:
        act = getattr(cfg, "act_fn", None)
    if isinstance(act, nn.Module):
        slope = _activation_slope(act, "the MLP block's activation")
        if slope is not None:
            return slope
    if isinstance(act, str) and act.lower() == "relu":
        return 0.0
    raise NotPiecewiseLinearError(
        f"MLP block activation {act!r} is not ReLU; deep Jacobian spectra need "
        "piecewise-linear gates"
    )


def piecewise_linear_layers(
    model: nn.Module, *, train_mode: TrainMode = "eval"
) -> list[PiecewiseLinearLayer]:
    """Read a model as a chain of :class:`PiecewiseLinearLayer`.

    Supported: ``nn.Linear``; ``nn.Sequential`` of Linear / ReLU / LeakyReLU / Identity, with
    eval-mode Dropout (skipped) and BatchNorm1d (folded, see the module docstring); an
    MLP with ``layers`` (Linear modules) and ``acts`` (one activation per hidden layer), as in
    ``experiments.models``; a TransformerLens MLP block (``W_in`` ``(d_model, d_mlp)``,
    ``b_in``, ``W_out`` ``(d_mlp, d_model)``, ``b_out``, ReLU; ``x @ W_in`` layout);
    :class:`~interbasis.jacobian_spectra.fixed_gates.FixedGatesMLP`. The chain is checked
    against ``model(x)`` in :func:`layer_jacobians`.

    Parameters
    ----------
    model : nn.Module
    train_mode : {"eval", "error", "keep"}
        A model in train mode: read the chain of an eval-mode copy (default, with a
        ``UserWarning``), refuse it (:class:`~interbasis.errors.DataError`), or read it as it
        is (``"keep"``; train-mode Dropout or BatchNorm1d then raise
        :class:`NotPiecewiseLinearError`). The caller's model is never changed
        (:mod:`interbasis.train_mode`).

    Raises
    ------
    NotPiecewiseLinearError
        For any other module, a smooth activation (GELU, tanh, ...), train-mode Dropout or
        BatchNorm1d, or a model without a linear layer (depth 0).
    """
    model = analysed_model(model, train_mode, "chain of piecewise-linear layers")
    chain_fn = getattr(model, "piecewise_linear_layers", None)
    if callable(chain_fn):
        layers: list[PiecewiseLinearLayer] = chain_fn()
    elif isinstance(model, nn.Linear):
        layers = [_linear("", model)]
    elif isinstance(model, nn.Sequential):
        layers = _from_sequential(model, "")
    elif isinstance(getattr(model, "layers", None), nn.ModuleList | nn.Sequential):
        layers = _from_layers_acts(model)
    elif isinstance(getattr(model, "W_in", None), Tensor) and isinstance(
        getattr(model, "W_out", None), Tensor
    ):
        w_in: Tensor = model.W_in  # type: ignore[assignment]
        w_out: Tensor = model.W_out  # type: ignore[assignment]
        b_in, b_out = getattr(model, "b_in", None), getattr(model, "b_out", None)
        slope = _tl_mlp_slope(model)
        layers = [
            PiecewiseLinearLayer("W_in", w_in.detach().T, _detached(b_in), slope),
            PiecewiseLinearLayer("W_out", w_out.detach().T, _detached(b_out)),
        ]
    else:
        raise NotPiecewiseLinearError(
            f"cannot read {type(model).__name__} as a chain of Linear and ReLU/LeakyReLU "
            "layers; pass an nn.Sequential, an MLP with `layers`/`acts`, or an MLP block (for "
            "a transformer, e.g. model.blocks[0].mlp: attention is not piecewise linear)"
        )
    if not layers:
        raise NotPiecewiseLinearError(
            f"{type(model).__name__} has no linear layer (depth 0): no Jacobian product to form"
        )
    return layers


def _from_layers_acts(model: nn.Module) -> list[PiecewiseLinearLayer]:
    linears = list(model.layers)  # type: ignore[arg-type]
    acts = list(getattr(model, "acts", []))
    if len(acts) not in (len(linears) - 1, len(linears)):
        raise NotPiecewiseLinearError(
            f"model has {len(linears)} entries in `layers` but {len(acts)} in `acts`; expected "
            "one activation per hidden layer"
        )
    layers = []
    for k, lin in enumerate(linears):
        if not isinstance(lin, nn.Linear):
            raise NotPiecewiseLinearError(f"layers.{k} is {type(lin).__name__}, not nn.Linear")
        slope = _activation_slope(acts[k], f"acts.{k}") if k < len(acts) else None
        layers.append(
            PiecewiseLinearLayer(f"layers.{k}", lin.weight.detach(), _detached(lin.bias), slope)
        )
    return layers


def jacobian_product(factors: Sequence[Tensor], a: int = 0, b: int | None = None) -> Tensor:
    """``J_{a:b} = A_{b-1} ... A_a`` for factors ``A_l`` ``(..., d_{l+1}, d_l)``.

    Returns ``(..., d_b, d_a)``; ``a == b`` gives the identity. One batched ``matmul`` per factor.
    """
    depth = len(factors)
    b = depth if b is None else b
    if not 0 <= a <= b <= depth:
        raise NodeLayerError(f"need 0 <= a <= b <= depth={depth}, got a={a}, b={b}")
    if a == b:
        ref = factors[a] if a < depth else factors[a - 1]
        d = ref.shape[-1] if a < depth else ref.shape[-2]
        eye = torch.eye(d, dtype=ref.dtype, device=ref.device)
        return eye.expand(*ref.shape[:-2], d, d)
    out = factors[a]
    for factor in factors[a + 1 : b]:
        if factor.shape[-1] != out.shape[-2]:
            raise ShapeError(
                f"factor shapes do not chain: {tuple(out.shape)} then {tuple(factor.shape)}"
            )
        out = factor @ out
    return out


@dataclass
class LayerJacobians:
    """Per-input layer Jacobians of a piecewise-linear chain.

    Attributes
    ----------
    names : list[str]
        ``names[l]`` is the linear map whose input is activation space ``l``.
    factors : list[Tensor]
        ``factors[l] = D_{l+1} W_{l+1}``, ``(batch, d_{l+1}, d_l)``, float64 by default.
    gates : list[Tensor]
        ``diag(D_{l+1})``, ``(batch, d_{l+1})`` (ones for a layer without activation).
    n_kinks : list[int]
        Number of pre-activations exactly 0 in each layer (gate set to ``slope`` there).
    output : Tensor
        ``h_L`` ``(batch, d_L)``, the chain's output (equal to the model's output).
    """

    names: list[str]
    factors: list[Tensor]
    gates: list[Tensor]
    n_kinks: list[int]
    output: Tensor

    @property
    def depth(self) -> int:
        """Number of factors ``L``."""
        return len(self.factors)

    @property
    def widths(self) -> list[int]:
        """``[d_0, ..., d_L]``."""
        return [self.factors[0].shape[-1]] + [f.shape[-2] for f in self.factors]

    def index(self, name: str) -> int:
        """Chain index of a node layer name (``"output"`` is ``L``)."""
        if name == "output":
            return self.depth
        if name not in self.names:
            raise NodeLayerError(f"unknown layer {name!r}; the chain has {self.names} + 'output'")
        return self.names.index(name)

    def product(self, a: int = 0, b: int | None = None) -> Tensor:
        """``J_{a:b}`` ``(batch, d_b, d_a)``, see :func:`jacobian_product`."""
        return jacobian_product(self.factors, a, b)

    def prefix_products(self) -> list[Tensor]:
        """``[J_{0:0}, J_{0:1}, ..., J_{0:L}]`` (L matmuls in all)."""
        out = [self.product(0, 0)]
        for factor in self.factors:
            out.append(factor @ out[-1])
        return out

    def suffix_products(self) -> list[Tensor]:
        """``[J_{0:L}, J_{1:L}, ..., J_{L:L}]`` (L matmuls in all)."""
        out = [self.product(self.depth, self.depth)]
        for factor in reversed(self.factors):
            out.append(out[-1] @ factor)
        return out[::-1]


def layer_jacobians(
    model: nn.Module,
    x: Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    check: bool = True,
    train_mode: TrainMode = "eval",
) -> LayerJacobians:
    """Masked weight matrices ``D_l W_l`` of a ReLU / leaky-ReLU network at each input.

    Parameters
    ----------
    model : nn.Module
        Any chain accepted by :func:`piecewise_linear_layers`.
    x : Tensor
        ``(batch, d_0)`` or ``(batch, pos, d_0)``; leading dimensions are pooled as samples.
    dtype : torch.dtype
        Dtype of the forward pass and of the factors (float64 by default).
    check : bool
        Compare the chain's output with ``model(x)`` and raise if they differ, so a model
        whose ``forward`` is not the chain its modules suggest is never silently misread.
    train_mode : {"eval", "error", "keep"}
        A model in train mode (dropout, batch norm): by default the Jacobians of an eval-mode
        copy, with a ``UserWarning``; ``"error"`` refuses such a model
        (:class:`~interbasis.errors.DataError`); ``"keep"`` uses it as it is (train-mode
        Dropout or BatchNorm1d then raise :class:`NotPiecewiseLinearError`). The caller's
        model, its parameters and buffers are never changed (:mod:`interbasis.train_mode`).

    Returns
    -------
    LayerJacobians
        ``factors[l]`` of shape ``(batch, d_{l+1}, d_l)``; one batched forward, no loop over
        inputs.
    """
    model = analysed_model(model, train_mode, "Jacobian spectra")
    layers = piecewise_linear_layers(model, train_mode="keep")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise DataError(
            f"x must be a floating tensor (batch, [pos], d_0); got "
            f"{type(x).__name__} {getattr(x, 'shape', '')}"
        )
    d0 = layers[0].weight.shape[1]
    if x.shape[-1] != d0 or x.numel() == 0:
        raise ShapeError(
            f"x has shape {tuple(x.shape)}; layer {layers[0].name!r} expects a last dimension "
            f"of {d0} and a non-empty batch"
        )
    device = layers[0].weight.device
    h = x.detach().to(device=device, dtype=dtype).reshape(-1, d0)
    if not torch.isfinite(h).all():
        raise DataError("x contains NaN or Inf")
    # small factors run on one thread: a second OpenMP thread on a busy core only waits
    # (benchmarks/bench_busy_core.py)
    largest = max(int(la.weight.numel()) for la in layers) * h.shape[0]
    with single_thread(h.device.type == "cpu" and largest < SMALL_WORK):
        factors, gates, kinks = [], [], []
        for layer in layers:
            w = layer.weight.to(dtype)
            z = h @ w.T
            if layer.bias is not None:
                z = z + layer.bias.to(dtype)
            gate = layer.gates(z)
            is_gated = layer.mask is None and layer.slope is not None
            kinks.append(int((z == 0).sum()) if is_gated else 0)
            gates.append(gate)
            factors.append(gate[:, :, None] * w)
            h = gate * z
        result = LayerJacobians([la.name for la in layers], factors, gates, kinks, h)
        if check:
            _check_forward(model, x, result)
    return result


def _check_forward(model: nn.Module, x: Tensor, result: LayerJacobians) -> None:
    param = next(iter(model.parameters()), None)
    model_dtype = param.dtype if param is not None else x.dtype
    with torch.no_grad():
        y = model(x.detach().to(model_dtype))
    if not isinstance(y, Tensor) or y.numel() != result.output.numel():
        raise NotPiecewiseLinearError(
            f"model(x) returned {getattr(y, 'shape', type(y).__name__)}, but the chain read "
            f"from its modules gives {tuple(result.output.shape)}"
        )
    y64 = y.reshape(result.output.shape).to(result.output)
    scale = float(y64.abs().max()) + float(torch.finfo(result.output.dtype).tiny)
    err = float((y64 - result.output).abs().max()) / scale
    tol = 100 * float(torch.finfo(model_dtype).eps) * (result.depth + 1)
    if not err <= tol:
        raise NotPiecewiseLinearError(
            f"{type(model).__name__}.forward does not match the chain {result.names} read from "
            f"its modules (max relative difference {err:.3g} > {tol:.3g}); skip connections, "
            "normalisation or a custom forward cannot be read as a product of D_l W_l"
        )
