"""One policy for models in train mode, shared by every entry point that runs a model.

Dropout makes the forward pass random and train-mode batch norm mixes the samples of a batch
(and updates its running statistics in place, which ``torch.func`` refuses). Analyses are of a
deterministic per-sample function, so by default (``"eval"``) they use the eval-mode function
of a *copy* of the model, with a warning that says so; ``"error"`` refuses such a model and
``"keep"`` analyses it as it is (for deterministic train-mode models). The caller's model and
its buffers are never changed.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

from torch import nn

from interbasis.errors import DataError

TrainMode = Literal["eval", "error", "keep"]
TRAIN_MODES = ("eval", "error", "keep")


def check_train_mode(train_mode: object) -> None:
    if train_mode not in TRAIN_MODES:
        raise DataError(f'train_mode must be "eval", "error" or "keep", got {train_mode!r}')


def needs_eval_copy(model: nn.Module, train_mode: TrainMode, what: str) -> bool:
    """Apply the policy's checks; True when the caller must analyse an eval-mode copy."""
    check_train_mode(train_mode)
    if not model.training or train_mode == "keep":
        return False
    if train_mode == "error":
        raise DataError(
            f"the model ({type(model).__name__}) is in train mode: dropout and batch norm make "
            f"the {what} random or batch-dependent; call model.eval(), or pass "
            'train_mode="eval" to analyse the eval-mode function of a copy'
        )
    warnings.warn(
        f"the model ({type(model).__name__}) is in train mode; analysing its eval-mode function "
        f"(dropout off, batch-norm running statistics) on a copy for the {what}. Call "
        'model.eval() to silence this, or pass train_mode="keep" / "error"',
        UserWarning,
        stacklevel=4,
    )
    return True


def analysed_model(model: nn.Module, train_mode: TrainMode = "eval", what: str = "analysis"):
    """``model`` itself, or an eval-mode copy of it under the train-mode policy."""
    if needs_eval_copy(model, train_mode, what):
        return copy.deepcopy(model).eval()
    return model
