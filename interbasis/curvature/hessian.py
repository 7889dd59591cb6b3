"""The loss Hessian ``H = d^2 L / d theta^2``: exact matrix and matrix-free operator.

Seed 000 studies the eigenpairs ``H v_i = lambda_i v_i`` of this matrix; seed 004 eq. 10
writes it, at a minimum of an MSE loss, as a Gram of weight gradients (the GGN of
:mod:`.ggn`). Both objects here use :mod:`torch.func`: ``hessian`` (= ``jacfwd(jacrev)``)
for the dense matrix, reverse-over-reverse ``vjp(grad)`` vmapped over columns for products
(one gradient graph per batch, then one vmapped pullback for a block of columns). We do not
use forward-over-reverse ``jvp(grad)`` (curvlinops' choice): in torch <= 2.13 it fails for
``F.mse_loss(reduction="mean")`` with "ZeroTensors are immutable" (pytorch issue #123996).
curvlinops' ``HessianLinearOperator`` is the independent check in the tests and benchmark;
it is not a runtime dependency because its PyPI requirements pull torchvision, which does
not import beside our CPU torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.func import grad, vjp, vmap

from interbasis.curvature.objective import Batch, LossFn, Objective
from interbasis.curvature.operator import CurvatureOperator
from interbasis.errors import NonFiniteError
from interbasis.train_mode import TrainMode


def hessian_matrix(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    params: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> torch.Tensor:
    """Exact Hessian of the loss w.r.t. the flat trainable parameters.

    Parameters
    ----------
    model, loss_fn, data, params, dtype
        As in :class:`~interbasis.curvature.objective.Objective`.
    train_mode : {"eval", "error", "keep"}
        A model in train mode: analyse an eval-mode copy (default, with a warning), refuse it
        (:class:`~interbasis.errors.DataError`) or use it as it is; the caller's model and
        buffers are never changed (:mod:`interbasis.train_mode`).
    process_group : torch.distributed group, optional
        Default: the initialised default group, if any. Every rank passes the whole data,
        sums ``w_b H_b`` over its shard of the batches, and one float64 all-reduce of the
        ``(P, P)`` partial sums gives every rank the same matrix.

    Returns
    -------
    torch.Tensor
        ``(P, P)`` float64, ordered as :class:`~interbasis.curvature.params.ParamLayout`.
        Memory is ``O(P^2)``: meant for small models (``P`` up to a few thousand).
    """
    obj = Objective(
        model, loss_fn, data, params=params, dtype=dtype, train_mode=train_mode,
        process_group=process_group,
    )  # fmt: skip
    H = torch.zeros(obj.layout.size, obj.layout.size, dtype=torch.float64)
    with obj.shard.stage("Hessian"):  # a rank that raises stops every rank
        for w, (x, y) in zip(obj.weights, obj.batches, strict=True):
            hess = torch.func.hessian(lambda t, x=x, y=y: obj.batch_loss(t, x, y))(obj.theta)
            H += w * hess.to(torch.float64)
    H = obj.shard.sum(H)
    if not bool(torch.isfinite(H).all()):
        raise NonFiniteError(
            f"the Hessian has {int((~torch.isfinite(H)).sum())} NaN/Inf entries: check the "
            "model's parameters, the data and the loss for NaN/Inf or overflow"
        )
    return H


class HessianOperator(CurvatureOperator):
    """``v -> H v`` as a ``scipy.sparse.linalg.LinearOperator`` of shape ``(P, P)``.

    Each product is one reverse-over-reverse pass, ``vjp(grad L, theta)(v)`` (``H`` is
    symmetric); a block of columns is one :func:`torch.vmap` call over the pullback.
    Use with :func:`~interbasis.curvature.spectra.lanczos`.

    Parameters
    ----------
    model, loss_fn, data, params, dtype, train_mode
        As in :func:`hessian_matrix` (train-mode policy of :mod:`interbasis.train_mode`).
    chunk_size : int
        Columns per vmapped call (bounds memory at ``chunk_size`` times one HVP).
    process_group : torch.distributed group, optional
        Default: the initialised default group, if any; each rank takes its shard of the
        batches and the products are all-reduced in float64
        (:class:`~interbasis.curvature.operator.CurvatureOperator`).
    """

    kind = "Hessian"

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        params: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float64,
        chunk_size: int = 64,
        train_mode: TrainMode = "eval",
        process_group: Any = None,
    ) -> None:
        obj = Objective(
            model, loss_fn, data, params=params, dtype=dtype, train_mode=train_mode,
            process_group=process_group,
        )  # fmt: skip
        super().__init__(obj, chunk_size)

    def _batch_matmat(self, x: torch.Tensor, y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        g = grad(lambda t: self.objective.batch_loss(t, x, y))
        pullback = vjp(g, self.objective.theta)[1]  # H is symmetric: v^T H = (H v)^T
        return vmap(lambda v: pullback(v)[0], in_dims=1, out_dims=1)(V)
