"""Streaming metrics of an ablated forward pass against targets or the clean outputs.

Every metric is accumulated batch by batch (memory independent of the dataset size) and
read once at the end. Built-in metrics (``metric=`` of every ablation function):

``"accuracy"``
    ``mean[argmax(logits) == y]``; ``y`` = the targets when the data carry them, else the
    clean model's argmax (agreement with the unablated model). ``logits`` = the output, or its
    last position for a ``(batch, pos, classes)`` output (next-token tasks such as mod-add).
``"loss"``
    mean cross-entropy of the same logits against the targets (targets required).
``"mse"``
    ``mean_x mean_pos sum_k (out_k - clean_k)^2``: squared deviation from the clean outputs,
    summed over output units, averaged over samples (and positions). This is the
    normalisation of the Grams (``/ (N P)``), so ablating interaction direction ``i`` of the
    layer before a linear output costs exactly ``Λ_i`` (see :func:`ablation_curve`).
``"r2"``
    ``1 - SSE / SST`` per output unit, averaged over units, against the targets (else the
    clean outputs): 1 = the function is kept, 0 = no better than predicting the mean (chance
    for a regression). Used per output group by :func:`module_ablation`.

A callable ``metric(outputs, targets, clean) -> (batch,)`` tensor gives per-sample values
whose mean is reported (``targets`` is ``None`` when the data carry none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from interbasis.errors import DataError

METRICS = ("accuracy", "loss", "mse", "r2")
MetricFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


class Accumulator(Protocol):
    def update(self, out: torch.Tensor, targets: torch.Tensor | None, clean: torch.Tensor) -> None:
        """Add one batch."""

    def value(self) -> float:
        """The metric over everything added."""


def _logits(out: torch.Tensor) -> torch.Tensor:
    return out[:, -1] if out.ndim == 3 else out.reshape(out.shape[0], -1)


class _Mean:
    """Mean of per-sample values."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], Any]):
        self.fn = fn
        self.total = 0.0
        self.count = 0

    def update(self, out: torch.Tensor, targets: torch.Tensor | None, clean: torch.Tensor) -> None:
        values = torch.as_tensor(self.fn(out, targets, clean)).detach()
        if values.ndim != 1 or values.shape[0] != out.shape[0]:
            raise DataError(
                f"a metric callable must return one value per sample, shape ({out.shape[0]},); "
                f"got shape {tuple(values.shape)}"
            )
        self.total += float(values.to(torch.float64).sum())
        self.count += int(values.shape[0])

    def value(self) -> float:
        return self.total / max(self.count, 1)


def _accuracy(out: torch.Tensor, targets: torch.Tensor | None, clean: torch.Tensor) -> torch.Tensor:
    logits = _logits(out)
    labels = _logits(clean).argmax(-1) if targets is None else targets.reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise DataError(
            f'"accuracy" needs one class label per sample: targets have shape '
            f"{tuple(targets.shape) if targets is not None else None}, outputs {tuple(out.shape)}"
        )
    return (logits.argmax(-1) == labels.to(logits.device)).to(torch.float64)


def _loss(out: torch.Tensor, targets: torch.Tensor | None, clean: torch.Tensor) -> torch.Tensor:
    if targets is None:
        raise DataError(
            '"loss" (cross-entropy) needs targets: pass data as (inputs, targets) batches'
        )
    logits = _logits(out).to(torch.float64)
    return F.cross_entropy(logits, targets.reshape(-1).to(logits.device), reduction="none")


def _mse(out: torch.Tensor, _targets: torch.Tensor | None, clean: torch.Tensor) -> torch.Tensor:
    diff = (out.to(torch.float64) - clean.to(torch.float64)) ** 2
    return diff.sum(-1).reshape(out.shape[0], -1).mean(1)


class _R2:
    """``1 - SSE/SST`` per unit (streamed sums), averaged over units."""

    def __init__(self) -> None:
        self.sse: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.n = 0

    def update(self, out: torch.Tensor, targets: torch.Tensor | None, clean: torch.Tensor) -> None:
        y = (clean if targets is None else targets).to(torch.float64)
        pred = out.to(torch.float64).reshape(out.shape[0], -1)
        y = y.reshape(y.shape[0], -1).to(pred.device)
        if y.shape != pred.shape:
            raise DataError(
                f'"r2" needs targets shaped like the outputs: {tuple(y.shape)} vs '
                f"{tuple(pred.shape)}"
            )
        sse, s1, s2 = ((pred - y) ** 2).sum(0), y.sum(0), (y**2).sum(0)
        if self.sse is None or self.s1 is None or self.s2 is None:
            self.sse, self.s1, self.s2 = sse, s1, s2
        else:
            self.sse, self.s1, self.s2 = self.sse + sse, self.s1 + s1, self.s2 + s2
        self.n += y.shape[0]

    def value(self) -> float:
        if self.sse is None or self.s1 is None or self.s2 is None:
            return float("nan")
        sst = (self.s2 - self.s1**2 / self.n).clamp_min(torch.finfo(torch.float64).tiny)
        return float((1 - self.sse / sst).mean())


def check_metric(metric: Any) -> None:
    """Raise :class:`~interbasis.DataError` for an unknown metric name (before any work)."""
    if callable(metric):
        return
    if metric not in METRICS:
        raise DataError(f"metric must be one of {METRICS} or a callable, got {metric!r}")


def make_accumulator(metric: str | MetricFn) -> Accumulator:
    """A fresh accumulator for ``metric`` (a name from :data:`METRICS` or a callable)."""
    check_metric(metric)
    if callable(metric):
        return _Mean(metric)
    if metric == "r2":
        return _R2()
    return _Mean({"accuracy": _accuracy, "loss": _loss, "mse": _mse}[metric])
