"""The training loss as a function of the flat parameter vector ``theta``.

Every curvature object in this package differentiates one function,

.. math::
    L(\\theta) = \\sum_b \\frac{n_b}{N}\\, \\ell\\big(f(X_b; \\theta), Y_b\\big),

the data-weighted average of ``loss_fn`` over the batches ``(X_b, Y_b)`` (exact for losses
that average over their batch, e.g. ``reduction="mean"``; with a summing loss pass a single
batch). The model is evaluated with :func:`torch.func.functional_call` on parameters, copies
of its buffers and floating-point data cast to ``dtype`` (float64 by default), so the model
itself is left untouched and the derivatives are float64 even for a float32 model.

Train mode (:mod:`interbasis.train_mode`, one policy for every entry point): a model in train
mode is analysed as an eval-mode copy with a warning (``train_mode="eval"``, default), refused
(``"error"``) or used as it is (``"keep"``, for deterministic train-mode models; batch norm that
updates running statistics is refused, since :mod:`torch.func` cannot differentiate it).

Distributed (``process_group``, docs/distributed.md): every rank passes the whole data and
keeps the batches ``b`` with ``b % R == r`` (:attr:`Objective.batches`); the weights
``n_b / N`` use the total ``N`` over all batches, so the sum over ranks of each rank's partial
sum is the full one. The operators all-reduce their products (float64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.func import functional_call

from interbasis.curvature.params import ParamLayout
from interbasis.distributed_ops import check_same_data, data_shard
from interbasis.errors import DataError, ShapeError
from interbasis.train_mode import TrainMode, analysed_model

#: Modules that update buffers in place in train mode (running statistics), which the
#: ``torch.func`` transforms refuse.
_STATEFUL = (torch.nn.modules.batchnorm._BatchNorm,)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype) if t.is_floating_point() else t.detach()


def refuse_running_stats(model: torch.nn.Module, train_mode: str, what: str) -> None:
    """Raise :class:`DataError` if a module of ``model`` would update running statistics.

    Batch norm in train mode (reachable with ``train_mode="keep"``, or a train-mode submodule
    of an eval-mode model) writes its buffers in every forward pass, which the
    :mod:`torch.func` transforms refuse with a raw ``RuntimeError``.
    """
    stateful = [
        n for n, m in model.named_modules()
        if isinstance(m, _STATEFUL) and m.training and m.track_running_stats
    ]  # fmt: skip
    if stateful:
        raise DataError(
            f"batch-norm module(s) {stateful} are in train mode (train_mode={train_mode!r}) "
            f"and update their running statistics in every forward pass, which the {what}'s "
            "torch.func transforms cannot differentiate; call model.eval(), or pass "
            'train_mode="eval" (the default) to analyse an eval-mode copy'
        )


def as_batches(data: Batch | Iterable[Batch], dtype: torch.dtype) -> list[Batch]:
    """Normalise ``data`` — one ``(inputs, targets)`` pair or an iterable of them."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        pairs: list[Any] = [data]
    elif isinstance(data, torch.Tensor):
        raise DataError(
            "curvature needs (inputs, targets) pairs to evaluate the loss, got a single tensor "
            f"of shape {tuple(data.shape)}"
        )
    else:
        pairs = list(data)
    if not pairs:
        raise DataError("curvature: data is empty; pass (inputs, targets) or a list of such pairs")
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, Sequence) and len(pair) >= 2):
            raise DataError(
                f"data: batch {i} is not an (inputs, targets) pair: {type(pair).__name__}"
                + (f" of length {len(pair)}" if isinstance(pair, Sequence) else "")
            )
        x, y = pair[0], pair[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(
                f"data: batch {i}: inputs and targets must be tensors, got "
                f"{type(x).__name__} and {type(y).__name__}"
            )
        if x.ndim == 0 or x.shape[0] == 0:
            raise DataError(
                f"data: batch {i}: inputs of shape {tuple(x.shape)} hold no samples (need "
                "(batch, ...) with batch >= 1)"
            )
        out.append((_cast(x, dtype), _cast(y, dtype)))
    return out


class Objective:
    """``theta -> L(theta)`` for ``model``, ``loss_fn`` and ``data`` (see module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        Any module whose forward takes the batch inputs; it must not mix samples of a batch
        (no batch norm in train mode) for the per-sample quantities of :mod:`.kfac`.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar tensor``.
    data : (inputs, targets) or iterable of such pairs
    params : sequence of str, optional
        Parameter names to differentiate; default all with ``requires_grad=True``.
    dtype : torch.dtype
        Dtype of every evaluation (float64 default).
    train_mode : {"eval", "error", "keep"}
        A model in train mode is analysed as an eval-mode copy (default, with a warning),
        refused with :class:`~interbasis.errors.DataError`, or kept as it is
        (:mod:`interbasis.train_mode`). The caller's model and buffers are never changed.
    process_group : torch.distributed group, optional
        Default: the initialised default group, if any (as the builds). Each rank passes the
        whole ``data`` and keeps its shard of the batches; a
        :class:`~interbasis.distributed.Shard` is used as it is (``Shard()``: this process
        alone, inside a group too).

    Attributes
    ----------
    batches : list of (inputs, targets)
        This rank's batches (all of them in a single process), cast to ``dtype``.
    weights : list of float
        ``n_b / N`` of each of :attr:`batches`, ``N`` = :attr:`n_samples`.
    n_samples : int
        ``N``, the samples of *all* batches (every rank's).
    shard : Shard
        This process's part of the group (``Shard()`` without one).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        params: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float64,
        layout: ParamLayout | None = None,
        train_mode: TrainMode = "eval",
        process_group: Any = None,
    ) -> None:
        model = analysed_model(model, train_mode, "curvature")  # the same on every rank
        refuse_running_stats(model, train_mode, "curvature")
        self.shard = data_shard(process_group, "curvature")
        with self.shard.stage("curvature objective"):  # a rank that raises stops every rank
            self._setup(model, loss_fn, data, params, dtype, layout)
        check_same_data(self.shard, [len(self.all_batches), self.n_samples], "curvature data")

    def _setup(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        params: Sequence[str] | None,
        dtype: torch.dtype,
        layout: ParamLayout | None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.dtype = dtype
        self.layout = layout if layout is not None else ParamLayout.from_model(model, params)
        self.all_batches = as_batches(data, dtype)
        self.n_samples = sum(x.shape[0] for x, _ in self.all_batches)
        self.batches = list(self.shard.batches(self.all_batches))
        self.weights = [x.shape[0] / self.n_samples for x, _ in self.batches]
        self.theta = self.layout.gather(model, dtype)
        chosen = set(self.layout.names)
        self._fixed = {n: _cast(p, dtype) for n, p in model.named_parameters() if n not in chosen}
        # copies: a forward pass must never write into the caller's buffers
        self._fixed.update({n: _cast(b, dtype).clone() for n, b in model.named_buffers()})
        x0, y0 = self.all_batches[0]  # every rank checks (an empty shard too)
        with torch.no_grad():
            value = self.batch_loss(self.theta, x0, y0)
        if value.ndim != 0:
            raise ShapeError(
                f"loss_fn returned a tensor of shape {tuple(value.shape)}; curvature needs a "
                "scalar loss (e.g. reduction='mean')"
            )

    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model outputs at parameters ``theta`` (P,) on inputs ``x``."""
        tensors = {**self._fixed, **self.layout.unflatten(theta)}
        return functional_call(self.model, tensors, (x,))

    def batch_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``loss_fn(f(x; theta), y)`` for one batch."""
        return self.loss_fn(self.outputs(theta, x), y)

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The data-weighted loss ``L(theta)`` over this rank's batches (differentiable).

        In a single process this is ``L(theta)``; on a rank of a group it is the rank's part
        ``sum_{b in shard} (n_b / N) l_b`` (summed over ranks it gives ``L``).
        """
        total = sum(
            w * self.batch_loss(theta, x, y)
            for w, (x, y) in zip(self.weights, self.batches, strict=True)
        )
        return torch.as_tensor(total, dtype=self.dtype)
