"""The generalized Gauss–Newton matrix ``GGN = J^T (d^2 loss / d f^2) J``.

``J = d f(X; theta) / d theta`` is the Jacobian of all model outputs, ``d^2 loss / d f^2``
the Hessian of ``loss_fn`` w.r.t. those outputs. The Hessian splits as
``H = GGN + sum_{x,k} (d loss / d f_{x,k}) d^2 f_{x,k} / d theta^2``; at zero residual the
second term vanishes and, for MSE, ``GGN`` is seed 004 eq. 10 (a Gram of weight gradients).
For a convex loss the GGN is positive semi-definite, so negative Hessian eigenvalues come
from the residual term.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

from interbasis.curvature.objective import Batch, LossFn, Objective
from interbasis.curvature.operator import CurvatureOperator
from interbasis.train_mode import TrainMode


class GGNOperator(CurvatureOperator):
    """``v -> J^T H_f J v`` as a ``scipy.sparse.linalg.LinearOperator`` of shape ``(P, P)``.

    Per column: a JVP through the model (``J v``), an HVP of the loss in output space
    (``H_f J v``) and a VJP back (``J^T ...``); all vmapped over a block of columns.
    Parameters as in :class:`~interbasis.curvature.hessian.HessianOperator`, including
    ``train_mode`` (a model in train mode: eval-mode copy with a warning by default,
    ``"error"`` refuses it, ``"keep"`` uses it; the caller's model is never changed) and
    ``process_group`` (default: the initialised default group, if any; each rank takes its
    shard of the batches and the ``(P, m)`` products are all-reduced in float64).
    """

    kind = "GGN"

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
        obj = self.objective

        def f(t: torch.Tensor) -> torch.Tensor:
            return obj.outputs(t, x)

        def loss_of_outputs(o: torch.Tensor) -> torch.Tensor:
            return obj.loss_fn(o, y)

        out, pullback = vjp(f, obj.theta)[:2]
        # output-space Hessian by reverse-over-reverse (symmetric), see hessian.py on why
        loss_pullback = vjp(grad(loss_of_outputs), out.detach())[1]

        def column(v: torch.Tensor) -> torch.Tensor:
            jv = jvp(f, (obj.theta,), (v,))[1]
            return pullback(loss_pullback(jv)[0])[0]

        return vmap(column, in_dims=1, out_dims=1)(V)


def ggn_matrix(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    params: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> torch.Tensor:
    """Dense ``(P, P)`` float64 GGN (``P`` products of :class:`GGNOperator` with the identity).

    Parameters (``train_mode`` and ``process_group`` included) as in :class:`GGNOperator`.
    """
    op = GGNOperator(
        model, loss_fn, data, params=params, dtype=dtype, train_mode=train_mode,
        process_group=process_group,
    )  # fmt: skip
    return op.to_dense()
