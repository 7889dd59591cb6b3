"""Training callback: top Hessian eigenvalues, sharpness vs 2/lr, eigenspace rotation.

Every ``every`` optimizer steps (``on_step``, i.e. at the updated parameters) the tracker
runs Lanczos (:func:`~interbasis.curvature.spectra.lanczos`) on the Hessian of
``loss_fn`` on a fixed evaluation batch (or on the step's training batch), warm-started from
the sum of the previous top eigenvectors. It logs the sharpness ``lambda_max`` against the
gradient-descent stability threshold ``2 / lr`` (for adaptive optimisers such as Adam the
relevant threshold is that of the preconditioned Hessian; we log the plain ratio) and how
far the top-``k`` eigenspace turned since the last log: ``overlap = ||V_prev^T V||_F^2 / k``
(1 = same subspace) and the largest principal angle in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from interbasis.callbacks import Callback
from interbasis.curvature.hessian import HessianOperator
from interbasis.curvature.objective import Batch, LossFn
from interbasis.curvature.spectra import lanczos
from interbasis.distributed import Shard
from interbasis.errors import DataError, NonFiniteError
from interbasis.train_mode import TrainMode, check_train_mode


def subspace_rotation(previous: torch.Tensor, current: torch.Tensor) -> tuple[float, float]:
    """``(overlap, max principal angle in degrees)`` between two ``(P, k)`` orthonormal bases."""
    cosines = torch.linalg.svdvals(previous.T @ current).clamp(max=1.0)
    overlap = float(cosines.pow(2).sum() / current.shape[1])
    return overlap, math.degrees(math.acos(float(cosines.min())))


class CurvatureTracker(Callback):
    """Track the top-``k`` Hessian eigenvalues during training (``on_step`` hook).

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar``.
    data : (inputs, targets) or iterable of pairs, optional
        Fixed evaluation data; default: the training batch of the step.
    k : int
        Number of top eigenpairs (``1 <= k < P``).
    every : int
        Log every ``every`` optimizer steps (and at the start when ``data`` is given).
    tol : float
        Lanczos tolerance (ARPACK relative accuracy; 0 = machine precision).
    params : sequence of str, optional
        Parameter names; default all trainable.
    train_mode : {"eval", "error", "keep"}
        The model is in train mode while it trains: by default each log analyses an eval-mode
        copy (dropout off, batch-norm running statistics; a ``UserWarning`` says so),
        ``"error"`` refuses such a model, ``"keep"`` uses it as it is (deterministic models
        only). The training model and its buffers are never changed
        (:mod:`interbasis.train_mode`).
    process_group : torch.distributed group, optional
        For a fixed evaluation ``data``: default the initialised default group, if any
        (every rank passes the whole ``data``; the Hessian products are all-reduced and the
        seeded Lanczos runs in lockstep, so every rank logs the same history). Without
        ``data`` each rank analyses its own training batch alone (the ranks' batches differ,
        e.g. under ``DistributedDataParallel``), with no collective.

    Attributes
    ----------
    history : list of dict
        One record per log: ``step``, ``eigenvalues`` (descending), ``sharpness``, ``lr``,
        ``two_over_lr``, ``sharpness_ratio`` (= sharpness · lr / 2), ``overlap``,
        ``max_angle_deg`` (None at the first log) and ``n_products`` (HVPs used).
    """

    def __init__(
        self,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch] | None = None,
        k: int = 5,
        every: int = 100,
        tol: float = 1e-8,
        params: Sequence[str] | None = None,
        train_mode: TrainMode = "eval",
        process_group: Any = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
            raise DataError(f"every must be an integer >= 1 (optimizer steps), got {every!r}")
        check_train_mode(train_mode)
        self.train_mode = train_mode
        self.loss_fn = loss_fn
        self.data = None if data is None else list(data) if not isinstance(data, tuple) else data
        self.k = k
        self.every = every
        self.tol = tol
        self.params = params
        self.process_group = process_group
        self.history: list[dict[str, Any]] = []
        self._vectors: torch.Tensor | None = None

    def on_train_begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Log step 0 when a fixed evaluation batch was given and nothing is logged yet."""
        if self.data is not None and not self.history:
            self._log(0, model, optimizer, self.data)

    def on_step(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
    ) -> None:
        """Log every ``every`` steps, on the updated parameters."""
        if step % self.every == 0:
            data: Any = self.data if self.data is not None else (batch[0], batch[1])
            self._log(step, model, optimizer, data)

    def _log(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Any
    ) -> None:
        lr = float(optimizer.param_groups[0]["lr"])
        try:
            # the step's own batch differs between ranks: analysed by each rank alone
            group = self.process_group if self.data is not None else Shard()
            op = HessianOperator(
                model, self.loss_fn, data, params=self.params, train_mode=self.train_mode,
                process_group=group,
            )  # fmt: skip
            v0 = None if self._vectors is None else self._vectors.sum(dim=1)
            pairs = lanczos(op, self.k, which="LA", v0=v0, tol=self.tol)
        except NonFiniteError as err:
            raise NonFiniteError(f"CurvatureTracker at step {step}: {err}") from err
        overlap = angle = None
        if self._vectors is not None:
            overlap, angle = subspace_rotation(self._vectors, pairs.vectors)
        self._vectors = pairs.vectors
        sharp = float(pairs.values[0])
        self.history.append(
            {
                "step": step,
                "eigenvalues": pairs.values.tolist(),
                "sharpness": sharp,
                "lr": lr,
                "two_over_lr": 2.0 / lr if lr > 0 else math.inf,
                "sharpness_ratio": sharp * lr / 2.0,
                "overlap": overlap,
                "max_angle_deg": angle,
                "n_products": pairs.n_products,
            }
        )

    def state_dict(self) -> dict[str, Any]:
        """History and the last eigenvectors (for warm starts after a resume)."""
        return {"history": list(self.history), "vectors": self._vectors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.history = list(state.get("history", []))
        self._vectors = state.get("vectors")
