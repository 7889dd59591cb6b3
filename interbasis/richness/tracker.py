"""A training callback that records D_LR and the richness baselines (seed 001 §4, Table 3).

Φ is captured as the input of a named module (a forward pre-hook, e.g. on ``"unembed"``)
and F is the model output, on evaluation sets the tracker holds itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from interbasis.callbacks import Callback
from interbasis.errors import DataError, NodeLayerError, ShapeError
from interbasis.richness.baselines import nc1, parameter_norm_sq, within_class_trace
from interbasis.richness.cka import cka, d_lr


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise NodeLayerError(
            f"feature module {name!r} not found in {type(model).__name__}; modules include {names}"
        ) from err


def _select(t: torch.Tensor, position: int | None, what: str) -> torch.Tensor:
    if position is None or t.ndim == 2:
        return t
    if t.ndim != 3:
        raise ShapeError(f"{what} has shape {tuple(t.shape)}; expected (batch, [pos], d)")
    return t[:, position]


@torch.no_grad()
def collect_features(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    feature_module: str,
    *,
    position: int | None = None,
    batch_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features Φ (input of ``feature_module``) and outputs F of ``model`` on ``inputs``.

    Parameters
    ----------
    model
        Any module; run in eval mode under ``no_grad`` (its mode is restored afterwards).
    inputs
        Model inputs, first axis = samples; sent to the model's device in chunks.
    feature_module
        Name in ``model.named_modules()`` whose (first positional) input is Φ.
    position
        If given, pick this position from (batch, pos, d) features and outputs.

    Returns
    -------
    (features (n, p), outputs (n, C)), float64 on the CPU.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())

    handle = _module(model, feature_module).register_forward_pre_hook(hook)
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    feats, outs = [], []
    try:
        for chunk in torch.split(inputs, batch_size):
            captured.clear()
            out = model(chunk.to(device))
            if len(captured) != 1:
                raise ShapeError(
                    f"module {feature_module!r} was called {len(captured)} times in one "
                    "forward pass; Φ must be the input of a module called exactly once"
                )
            feats.append(_select(captured[0], position, "features").to("cpu", torch.float64))
            outs.append(_select(out.detach(), position, "outputs").to("cpu", torch.float64))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(feats), torch.cat(outs)


class RichnessTracker(Callback):
    """Record D_LR and the seed-001 baselines at chosen training steps.

    Parameters
    ----------
    eval_sets
        ``{name: (inputs, labels)}`` or ``{name: inputs}``; labels (n,) class indices or
        (n, C) one-hot enable NC1 and Tr(Σ_W). Each set gets its own keys in the history.
    feature_module
        Module whose input is Φ (e.g. ``"unembed"``); F is the model output.
    every, steps
        Record when ``step % every == 0`` or ``step in steps`` (optimizer updates). The
        state at initialisation is recorded as step 0 on a fresh start.
    position, batch_size
        Passed to :func:`collect_features`.
    baselines
        Also record S_init, ||θ||², NC1 (ridge ``nc1_ridge``) and Tr(Σ_W).

    Notes
    -----
    Each history entry is a flat dict: ``step``, ``param_norm_sq`` and per set ``name/d_lr``
    (appendix E.1 form), ``name/d_lr_projection`` (Definition 1 form), ``name/s_init``,
    ``name/nc1``, ``name/tr_sigma_w``. ``state_dict`` holds the history and the features at
    initialisation, so a resumed run continues the same record.
    """

    def __init__(
        self,
        eval_sets: Mapping[str, Any],
        *,
        feature_module: str,
        every: int | None = None,
        steps: Iterable[int] = (),
        position: int | None = None,
        batch_size: int = 4096,
        baselines: bool = True,
        nc1_ridge: float = 1e-4,
    ) -> None:
        if not eval_sets:
            raise DataError("eval_sets is empty: give at least one {name: (inputs, labels)}")
        if every is not None and every < 1:
            raise DataError(f"every must be a positive number of steps, got {every}")
        self.eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for name, value in eval_sets.items():
            inputs, labels = value if isinstance(value, tuple) else (value, None)
            if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0 or len(inputs) < 2:
                raise DataError(f"eval set {name!r} needs a tensor of at least 2 inputs")
            if labels is not None and len(labels) != len(inputs):
                raise ShapeError(
                    f"eval set {name!r}: {len(inputs)} inputs but {len(labels)} labels"
                )
            self.eval_sets[name] = (inputs, labels)
        self.feature_module = feature_module
        self.every = every
        self.steps = frozenset(int(s) for s in steps)
        self.position = position
        self.batch_size = batch_size
        self.baselines = baselines
        self.nc1_ridge = nc1_ridge
        self.history: list[dict[str, float]] = []
        self._init_features: dict[str, torch.Tensor] | None = None

    def should_record(self, step: int) -> bool:
        """Whether ``step`` is one of the chosen steps."""
        return step in self.steps or (self.every is not None and step % self.every == 0)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Compute every recorded quantity for ``model`` now (without a ``step`` key)."""
        record: dict[str, float] = {}
        if self.baselines:
            record["param_norm_sq"] = parameter_norm_sq(model)
        for name, (inputs, labels) in self.eval_sets.items():
            phi, out = collect_features(
                model,
                inputs,
                self.feature_module,
                position=self.position,
                batch_size=self.batch_size,
            )
            record[f"{name}/d_lr"] = d_lr(phi, out, mode="gram")
            record[f"{name}/d_lr_projection"] = d_lr(phi, out, mode="projection")
            if not self.baselines:
                continue
            if self._init_features is not None:
                record[f"{name}/s_init"] = cka(self._init_features[name], phi)
            if labels is not None:
                record[f"{name}/nc1"] = nc1(phi, labels, ridge=self.nc1_ridge)
                record[f"{name}/tr_sigma_w"] = within_class_trace(phi, labels)
        return record

    def on_train_begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """On a fresh start keep Φ at initialisation (for S_init) and record step 0."""
        if self._init_features is not None:
            return  # resumed: the initial features came from load_state_dict
        self._init_features = {
            name: collect_features(
                model,
                inputs,
                self.feature_module,
                position=self.position,
                batch_size=self.batch_size,
            )[0]
            for name, (inputs, _) in self.eval_sets.items()
        }
        self.history.append({"step": 0, **self.measure(model)})

    def on_step(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
    ) -> None:
        """Record at the chosen steps."""
        if self.should_record(step) and not any(r["step"] == step for r in self.history[-1:]):
            self.history.append({"step": step, **self.measure(model)})

    def state_dict(self) -> dict[str, Any]:
        """History and initial features, for training checkpoints."""
        return {
            "history": [dict(r) for r in self.history],
            "init_features": None
            if self._init_features is None
            else {k: v.clone() for k, v in self._init_features.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.history = [dict(r) for r in state["history"]]
        init = state["init_features"]
        self._init_features = None if init is None else {k: v.clone() for k, v in init.items()}
