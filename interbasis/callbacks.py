"""Training-callback protocol shared by the training loop and the library's trackers.

The training harness in ``experiments.train`` calls these hooks; trackers in the library
(D_LR in :mod:`interbasis.richness`, the spectral edge in :mod:`interbasis.spectral_edge`,
curvature in :mod:`interbasis.curvature`) implement them without importing ``experiments``
(DESIGN §2: imports flow experiments -> interbasis -> graphs).

Order of calls in one training run::

    on_train_begin(model, optimizer)           # once, also after a resume
    for each optimizer step (step = 1, 2, ...):
        on_before_step(step, model, optimizer, batch)   # gradients computed, not applied
        on_step(step, model, optimizer, batch)          # parameters updated
        on_eval(step, model, metrics)                   # only at evaluation steps
    on_train_end(step, model)

``step`` counts optimizer updates, starting at 1 for the first update. ``batch`` is the
tuple ``(inputs, targets)`` used for that update. ``metrics`` is the dict written to the
JSONL log (``step``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ...).

For resumable runs a callback may keep state: ``state_dict()`` is saved in each training
checkpoint and ``load_state_dict()`` is called before ``on_train_begin`` on resume.
"""

from __future__ import annotations

from typing import Any

import torch


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once before the first step (and again after resuming)."""

    def on_before_step(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
    ) -> None:
        """Called after ``backward()`` and before ``optimizer.step()``."""

    def on_step(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
    ) -> None:
        """Called after ``optimizer.step()``; ``step`` is the number of updates so far."""

    def on_eval(self, step: int, model: torch.nn.Module, metrics: dict[str, Any]) -> None:
        """Called after each evaluation with the metrics that were logged."""

    def on_train_end(self, step: int, model: torch.nn.Module) -> None:
        """Called once when training stops normally."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in training checkpoints (default: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
