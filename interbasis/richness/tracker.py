"""A training callback that records D_LR and the richness baselines (seed 001 §4, Table 3).

Φ is captured as the input of a named module (a forward pre-hook, e.g. on ``"unembed"``)
and F is the model output, on evaluation sets the tracker holds itself.

Models in train mode follow the project's policy (:mod:`interbasis.train_mode`): by default
the eval-mode function of a *copy* is analysed, with a warning; the caller's model, its mode
and its buffers (batch-norm running statistics) are never changed.

Distributed (``process_group``; default: the initialised default group, if any): every rank
passes the whole inputs, runs the forward passes of its shard of the chunks of ``batch_size``
(chunk ``b`` on rank ``b % R``), and the features and outputs are all-gathered in sample
order (:func:`interbasis.distributed_ops.gather_batches`), so every rank holds the same
``(n, p)`` and ``(n, C)`` matrices as one process and computes the same D_LR, CKA and NC1.
They are gathered rather than reduced to Grams because D_LR's projection form needs the SVD
of the centred outputs (rank decisions at round-off, which a Gram ``F_c^T F_c`` would
square), S_init pairs the features of the same samples at two times, and NC1 needs the class
of every sample; the matrices are ``(n, p)``, never ``n x n``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from interbasis.callbacks import Callback
from interbasis.distributed import Shard
from interbasis.distributed_ops import check_same_data, data_shard, gather_batches
from interbasis.errors import DataError, NodeLayerError, ShapeError
from interbasis.richness.baselines import nc1, parameter_norm_sq, within_class_trace
from interbasis.richness.cka import cka, d_lr
from interbasis.train_mode import TrainMode, analysed_model, check_train_mode


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
        raise ShapeError(
            f"{what} has shape {tuple(t.shape)}; with position={position} they must be "
            "(batch, d) or (batch, pos, d): choose a feature_module whose input has that shape"
        )
    return t[:, position]


def _check_batch_size(batch_size: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")


def _model_to_run(model: torch.nn.Module, train_mode: TrainMode, what: str) -> torch.nn.Module:
    """The model to run under the train-mode policy; never the caller's train-mode model.

    ``"eval"`` gives an eval-mode copy (with the policy's warning); ``"keep"`` on a model in
    train mode gives a copy in train mode, so that batch norm cannot update the caller's
    running statistics; a model in eval mode is used as it is.
    """
    net = analysed_model(model, train_mode, what)
    return copy.deepcopy(model) if net is model and model.training else net


@torch.no_grad()
def _collect(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    feature_module: str,
    position: int | None,
    batch_size: int,
    shard: Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`collect_features` on a model that may be run as it is (options checked).

    With an active ``shard`` this rank runs its chunks and the rows are all-gathered.
    """
    shard = shard or Shard()
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())

    handle = _module(model, feature_module).register_forward_pre_hook(hook)
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    feats, outs = [], []
    try:
        with shard.stage("D_LR features"):  # a rank that raises stops every rank
            for b, chunk in shard.batches(enumerate(torch.split(inputs, batch_size))):
                captured.clear()
                out = model(chunk.to(device))
                if len(captured) != 1:
                    raise ShapeError(
                        f"module {feature_module!r} was called {len(captured)} times in one "
                        "forward pass; Φ must be the input of a module called exactly once"
                    )
                phi = _select(captured[0], position, "features").to("cpu", torch.float64)
                feats.append((b, phi))
                outs.append(
                    (b, _select(out.detach(), position, "outputs").to("cpu", torch.float64))
                )
    finally:
        handle.remove()
    check_same_data(shard, [len(inputs)], "D_LR inputs")
    return (
        torch.cat(gather_batches(shard, feats, "D_LR features")),
        torch.cat(gather_batches(shard, outs, "D_LR outputs")),
    )


def collect_features(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    feature_module: str,
    *,
    position: int | None = None,
    batch_size: int = 4096,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features Φ (input of ``feature_module``) and outputs F of ``model`` on ``inputs``.

    Parameters
    ----------
    model
        Any module; run under ``no_grad``. Neither it, nor its mode, nor its buffers change.
    inputs
        Model inputs, first axis = samples; sent to the model's device in chunks.
    feature_module
        Name in ``model.named_modules()`` whose (first positional) input is Φ.
    position
        If given, pick this position from (batch, pos, d) features and outputs.
    batch_size
        Samples per forward pass (a positive int).
    train_mode
        For a model in train mode (dropout, batch norm; :mod:`interbasis.train_mode`):
        ``"eval"`` (default) analyses the eval-mode function of a copy, with a warning;
        ``"error"`` refuses the model with :class:`DataError`; ``"keep"`` runs it in train
        mode (on a copy, so batch norm cannot update the caller's running statistics).
    process_group
        Default: the initialised default group, if any. Every rank passes the whole
        ``inputs``, runs the chunks ``b`` with ``b % R == r`` and the rows of all ranks are
        all-gathered in sample order (module docstring); a
        :class:`~interbasis.distributed.Shard` is used as it is (``Shard()``: alone).

    Returns
    -------
    (features (n, p), outputs (n, C)), float64 on the CPU — the same on every rank.

    Raises
    ------
    DataError
        ``batch_size`` not a positive int, ``inputs`` not a non-empty tensor, an unknown
        ``train_mode``, or a train-mode model with ``train_mode="error"``.
    NodeLayerError
        ``feature_module`` is not a module of ``model``.
    ShapeError
        The module is not called exactly once per forward pass, or features / outputs that
        are not (batch, [pos], d).
    """
    _check_batch_size(batch_size)
    check_train_mode(train_mode)
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0 or len(inputs) == 0:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise DataError(f"inputs must be a tensor with at least one sample, got {shape}")
    _module(model, feature_module)  # a clear error before any copy
    shard = data_shard(process_group, "collect_features")
    net = _model_to_run(model, train_mode, "D_LR features")
    return _collect(net, inputs, feature_module, position, batch_size, shard)


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
    train_mode
        The train-mode policy (:mod:`interbasis.train_mode`) for the model the hooks get,
        which is in train mode during training: ``"eval"`` (default) measures the eval-mode
        function of a copy (warning once per tracker), ``"error"`` refuses a model in train
        mode with :class:`DataError`, ``"keep"`` measures the train-mode function (on a copy).
        The training model itself, its mode and its buffers are never changed.
    process_group
        Default: the initialised default group, if any, found at each measurement. Every
        rank holds the same ``eval_sets``; each runs its shard of the chunks and the features
        are all-gathered (module docstring), so every rank records the same history.

    Notes
    -----
    Each history entry is a flat dict: ``step``, ``param_norm_sq`` and per set ``name/d_lr``
    (appendix E.1 form), ``name/d_lr_projection`` (Definition 1 form), ``name/s_init``,
    ``name/nc1``, ``name/tr_sigma_w``. ``state_dict`` holds the history and the features at
    initialisation, so a resumed run continues the same record.

    Raises
    ------
    DataError
        At construction: empty ``eval_sets``, an eval set that is not a tensor of at least 2
        inputs (or an ``(inputs, labels)`` pair), ``every`` or ``batch_size`` that is not a
        positive int, an unknown ``train_mode``.
    ShapeError
        Labels whose length differs from the inputs'.
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
        train_mode: TrainMode = "eval",
        process_group: Any = None,
    ) -> None:
        if not eval_sets:
            raise DataError("eval_sets is empty: give at least one {name: (inputs, labels)}")
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise DataError(f"every must be a positive number of steps (or None), got {every!r}")
        _check_batch_size(batch_size)
        check_train_mode(train_mode)
        self.eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for name, value in eval_sets.items():
            if isinstance(value, tuple) and len(value) != 2:
                raise DataError(
                    f"eval set {name!r} must be inputs or an (inputs, labels) pair, got a "
                    f"tuple of {len(value)}"
                )
            inputs, labels = value if isinstance(value, tuple) else (value, None)
            if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0 or len(inputs) < 2:
                got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
                raise DataError(f"eval set {name!r} needs a tensor of at least 2 inputs, got {got}")
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
        self.train_mode: TrainMode = train_mode
        self.process_group = process_group
        self.history: list[dict[str, float]] = []
        self._init_features: dict[str, torch.Tensor] | None = None
        self._warned = False

    def should_record(self, step: int) -> bool:
        """Whether ``step`` is one of the chosen steps."""
        return step in self.steps or (self.every is not None and step % self.every == 0)

    def _analysed(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to measure: see ``train_mode``; the policy's warning comes once."""
        if self._warned and model.training and self.train_mode == "eval":
            return copy.deepcopy(model).eval()
        net = _model_to_run(model, self.train_mode, "D_LR tracker")
        self._warned = self._warned or (model.training and self.train_mode == "eval")
        return net

    def _features(self, net: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shard = data_shard(self.process_group, "RichnessTracker")
        return _collect(net, inputs, self.feature_module, self.position, self.batch_size, shard)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Compute every recorded quantity for ``model`` now (without a ``step`` key)."""
        return self._measure(model, self._analysed(model))

    def _measure(self, model: torch.nn.Module, net: torch.nn.Module) -> dict[str, float]:
        record: dict[str, float] = {}
        if self.baselines:
            record["param_norm_sq"] = parameter_norm_sq(model)
        for name, (inputs, labels) in self.eval_sets.items():
            phi, out = self._features(net, inputs)
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
        net = self._analysed(model)
        self._init_features = {
            name: self._features(net, inputs)[0] for name, (inputs, _) in self.eval_sets.items()
        }
        self.history.append({"step": 0, **self._measure(model, net)})

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
