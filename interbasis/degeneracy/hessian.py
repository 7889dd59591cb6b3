"""Nullity of the Hessian of the behavioural loss at the trained parameters (seed 004 eqs 6, 10).

The behavioural loss compares the network with its own trained outputs,

.. math::
    L_B(\\theta) = \\frac{1}{n} \\sum_x \\tfrac12
                   \\lVert f_\\theta(x) - f_{\\theta^*}(x) \\rVert^2 ,

so ``L_B(theta*) = 0`` with zero gradient, and its Hessian there is exactly the Gram of the
weight gradients, ``(1/n) sum_x J_x^T J_x`` (eq. 10; the residual term vanishes). A direction
is in its null space iff it leaves every output unchanged to first order — the free
directions that seed 004 §3 counts. Small models: exact Hessian (``torch.func.hessian``),
float64 ``eigh``. Larger ones: the GGN operator (equal to that Hessian at ``theta*``) and
Lanczos for its top eigenvalues.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from interbasis.curvature import GGNOperator, ParamLayout, eigh_descending, hessian_matrix, lanczos
from interbasis.data import iter_batches
from interbasis.degeneracy.ranks import RTOL, check_rtol
from interbasis.errors import DataError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Method = Literal["auto", "exact", "ggn"]

#: A behavioural loss is 0 with zero gradient when outputs equal the reference; in float64
#: both are exact or within a few ulp, far below these bounds.
_VALUE_ATOL, _GRAD_ATOL = 1e-10, 1e-8


def behavioural_mse(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``mean_x ½ ||f(x) - f*(x)||^2`` (sum over output entries, mean over the batch)."""
    diff = (outputs - reference).reshape(outputs.shape[0], -1)
    return 0.5 * (diff * diff).sum(dim=1).mean()


@dataclass(frozen=True)
class HessianNullity:
    """Measured nullity of the behavioural-loss Hessian.

    Attributes
    ----------
    nullity : number of eigenvalues with ``|lambda| <= threshold`` (all ``n_params`` minus
        ``rank`` when only the top of the spectrum was computed).
    n_params : ``P``, the number of parameters differentiated.
    rank : eigenvalues above the threshold.
    rtol, threshold : ``threshold = rtol * lambda_max``.
    method : ``"exact"`` (dense Hessian) or ``"ggn-lanczos"``.
    complete : False when Lanczos returned only eigenvalues above the threshold, so the
        rank may be larger and ``nullity`` is an upper bound.
    n_outputs : samples x output entries, an upper bound on the rank.
    eigenvalues : descending (all of them, or the Lanczos top-k).
    largest_zero, smallest_nonzero : the largest ``|lambda|`` counted as zero (``nan`` if
        none was computed) and the smallest above the threshold: a wide gap between them means
        the count does not depend on ``rtol``.
    """

    nullity: int
    n_params: int
    rank: int
    rtol: float
    threshold: float
    method: str
    complete: bool
    n_outputs: int
    eigenvalues: torch.Tensor

    @property
    def largest_zero(self) -> float:
        """The largest ``|lambda|`` counted as zero (``nan`` if none was computed)."""
        small = self.eigenvalues.abs()[self.eigenvalues.abs() <= self.threshold]
        return float(small.max()) if small.numel() else float("nan")

    @property
    def smallest_nonzero(self) -> float:
        """The smallest ``|lambda|`` above the threshold (``nan`` if there is none)."""
        big = self.eigenvalues.abs()[self.eigenvalues.abs() > self.threshold]
        return float(big.min()) if big.numel() else float("nan")


def check_behavioural_loss(loss: LossFn, reference: torch.Tensor) -> None:
    """Raise :class:`DataError` unless ``loss(f*, f*) = 0`` with zero gradient (a task loss)."""
    ref = reference.detach()
    out = ref.clone().requires_grad_(True)
    value = loss(out, ref)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
        raise DataError(
            f"loss(outputs, reference) must return a scalar tensor, got {got}; reduce over "
            "the batch (e.g. a mean)"
        )
    (grad,) = torch.autograd.grad(value, out, allow_unused=True)
    g = 0.0 if grad is None else float(grad.abs().max())
    v = float(value.detach())
    if abs(v) > _VALUE_ATOL or g > _GRAD_ATOL:
        raise DataError(
            f"loss is a task loss, not a behavioural loss: with outputs equal to the trained "
            f"outputs it gives L = {v:.4g} and max |dL/df| = {g:.3g}, but both must be 0. "
            "The degeneracy counts (seed 004 eqs 6, 10) refer to the behavioural loss "
            "L_B(theta) = E_x l(f_theta(x), f_theta*(x)), which compares the network with its "
            "own trained outputs: it is 0 with zero gradient at theta*, so its Hessian there is "
            "the Gram of weight gradients and its null space is exactly the set of directions "
            "that leave the outputs unchanged. A task loss (e.g. cross-entropy against labels) "
            "has a gradient and a residual curvature term at theta*, so its Hessian nullity is "
            "not what the mechanisms count. Pass loss=None (MSE to the model's own outputs) or "
            "a loss l(outputs, reference) that vanishes when outputs == reference."
        )


def behavioural_hessian_nullity(
    model: nn.Module,
    data: Any,
    params: Sequence[str] | None = None,
    *,
    loss: LossFn | None = None,
    rtol: float = RTOL,
    method: Method = "auto",
    max_dense: int = 2000,
    max_lanczos: int = 400,
    batch_size: int | None = None,
) -> HessianNullity:
    """Nullity of the Hessian of the behavioural loss at the model's parameters.

    Parameters
    ----------
    model : the trained network (left unchanged; evaluated in float64).
    data : model inputs, a tensor or an iterable of batches (extra tuple elements such as
        labels are ignored: the reference is the model's own output).
    params : parameter names to differentiate (default: all trainable ones); a subset gives
        the nullity of the Hessian restricted to them.
    loss : ``l(outputs, reference) -> scalar`` with ``l(f*, f*) = 0`` and zero gradient there;
        default :func:`behavioural_mse`. A task loss raises :class:`DataError`.
    rtol : eigenvalues with ``|lambda| <= rtol * lambda_max`` count as zero.
    method : ``"exact"`` (dense Hessian, ``O(P^2)`` memory), ``"ggn"`` (Lanczos on the GGN
        operator, top ``min(P - 1, n_outputs, max_lanczos)`` eigenvalues) or ``"auto"``
        (exact when ``P <= max_dense``).

    Returns
    -------
    HessianNullity

    Warns
    -----
    UserWarning
        When ``n_outputs < P``: the rank is then at most ``n_outputs`` and at least
        ``P - n_outputs`` null directions come from too few samples.
    """
    rtol = check_rtol(rtol)
    if method not in ("auto", "exact", "ggn"):
        raise DataError(f'method must be "auto", "exact" or "ggn", got {method!r}')
    if loss is not None and not callable(loss):
        raise DataError(f"loss must be None or a callable l(outputs, reference), got {loss!r}")
    model64 = copy.deepcopy(model).to(torch.float64).eval()
    device = next((p.device for p in model64.parameters()), torch.device("cpu"))
    pairs = []
    with torch.no_grad():
        for x in iter_batches(data, batch_size, device, torch.float64):
            pairs.append((x, model64(x).detach()))
    loss_fn = behavioural_mse if loss is None else loss
    if loss is not None:
        check_behavioural_loss(loss, pairs[0][1])
    size = ParamLayout.from_model(model64, params).size
    n_outputs = sum(int(y.numel()) for _, y in pairs)
    if n_outputs < size:
        warnings.warn(
            f"behavioural Hessian: {n_outputs} output values (samples x outputs) for "
            f"P = {size} parameters: its rank is at most {n_outputs}, so at least "
            f"{size - n_outputs} null directions come from too few samples",
            UserWarning,
            stacklevel=2,
        )
    if method == "exact" or (method == "auto" and size <= max_dense):
        H = hessian_matrix(model64, loss_fn, pairs, params=params)
        values = eigh_descending(H).values
        threshold = rtol * float(values.abs().max())
        rank = int((values.abs() > threshold).sum())
        return HessianNullity(
            size - rank, size, rank, rtol, threshold, "exact", True, n_outputs, values
        )
    k = max(1, min(size - 1, n_outputs, max_lanczos))
    values = lanczos(GGNOperator(model64, loss_fn, pairs, params=params), k).values
    threshold = rtol * float(values.abs().max())
    rank = int((values > threshold).sum())
    complete = rank < k or k >= n_outputs
    return HessianNullity(
        size - rank, size, rank, rtol, threshold, "ggn-lanczos", complete, n_outputs, values
    )
