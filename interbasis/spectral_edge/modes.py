"""Functional modes: what a parameter direction does to the network's readout (seed 003).

For a unit direction v in the tracked parameter space and inputs x = (a, b),

* ``squared`` (the seed's f_v): ``f_v(x) = ‖h(x; θ + εv) − h(x; θ)‖²``;
* ``delta``: the field ``Δh(x) = h(x; θ + εv) − h(x; θ)`` ∈ R^d (keeps the phase that the
  squared norm loses: a pure rotation cos(ω(a+b)) → cos(ω(a+b) + φ) has a flat f_v);
* ``jvp``: its first-order limit ``ε · J_θ h(x) v`` (exact, by forward-mode AD), so
  ``Δh − ε J v = O(ε²)``.

h is the residual stream at the readout position before the final normalisation — the
input of the ``readout`` module (``ln_final``), captured with a forward pre-hook — and
``ε = 0.005 · ‖θ_tracked‖`` by default.

A model in train mode follows the project's policy (:mod:`interbasis.train_mode`): by default
the eval-mode function of a copy is analysed, with a warning; the caller's model, its mode and
its buffers are never changed.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from torch.func import functional_call, jvp

from interbasis.errors import DataError, NodeLayerError, NonFiniteError, ShapeError
from interbasis.spectral_edge.parameters import (
    ParamLayout,
    check_vector,
    flatten_params,
    unflatten,
)
from interbasis.train_mode import TrainMode, check_train_mode, needs_eval_copy

ModeKind = Literal["squared", "delta", "jvp"]


def _readout_module(model: torch.nn.Module, readout: str) -> torch.nn.Module:
    """Check that ``readout`` is a submodule of ``model`` and return it."""
    try:
        return model.get_submodule(readout)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise NodeLayerError(
            f"readout module {readout!r} is not in the model; modules include {names}"
        ) from None


def _readout_input(
    model: torch.nn.Module,
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    position: int,
    name: str = "readout",
) -> torch.Tensor:
    """Run ``model`` with ``params`` substituted; return the input of ``module``, (N, d)."""
    captured: list[torch.Tensor] = []

    def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        functional_call(model, params, (inputs,))
    finally:
        handle.remove()
    if not captured:
        raise NodeLayerError(
            f"readout module {name!r} was not called in the forward pass; give as readout a "
            "module whose input is the residual stream (e.g. 'ln_final')"
        )
    h = captured[0]
    if h.ndim == 3:  # (N, pos, d): the readout position
        h = h[:, position]
    if h.ndim != 2:
        raise ShapeError(
            f"the input of readout module {name!r} must be (N, d) or (N, pos, d), got "
            f"{tuple(captured[0].shape)}"
        )
    return h


def functional_mode(
    model: torch.nn.Module,
    layout: ParamLayout,
    direction: torch.Tensor,
    inputs: torch.Tensor,
    *,
    kind: ModeKind = "squared",
    epsilon: float | None = None,
    rel_epsilon: float = 0.005,
    readout: str = "ln_final",
    position: int = -1,
    batch_size: int = 4096,
    dtype: torch.dtype | None = torch.float64,
    train_mode: TrainMode = "eval",
) -> torch.Tensor:
    """The functional mode of ``direction`` on ``inputs`` (see module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        Evaluated at its current parameters θ (neither it, its mode nor its buffers change).
    layout : ParamLayout
        The tracked parameters (e.g. ``tracker.layout``); defines the flat direction.
    direction : torch.Tensor, shape (n,) or (k, n)
        One direction, or k of them (h(θ) is then computed once); each is normalised to
        unit length here.
    inputs : torch.Tensor, shape (N, ...)
        Model inputs, e.g. tokens (N, seq).
    kind : {"squared", "delta", "jvp"}
    epsilon : float, optional
        Absolute step; default ``rel_epsilon · ‖θ_tracked‖``.
    readout : str
        Module whose *input* is h.
    position : int
        Readout position when h has a position axis.
    batch_size : int
        Inputs per forward pass.
    dtype : torch.dtype or None
        Forward dtype (a float64 copy of the model by default; None keeps the model's).
    train_mode : {"eval", "error", "keep"}
        For a model in train mode (:mod:`interbasis.train_mode`): ``"eval"`` (default)
        analyses the eval-mode function of a copy, with a warning; ``"error"`` refuses it
        with :class:`DataError`; ``"keep"`` runs it in train mode (on a copy).

    Returns
    -------
    torch.Tensor, float64: shape (N,) for ``squared``, (N, d) for ``delta`` and ``jvp``,
    with a leading axis k when ``direction`` is (k, n).

    Raises
    ------
    DataError
        An unknown ``kind`` or ``train_mode``, a zero or non-finite direction, ``epsilon``
        not > 0, a train-mode model with ``train_mode="error"``.
    ShapeError
        A direction that does not fit ``layout``, a readout input that is not (N, [pos], d).
    NodeLayerError
        ``readout`` is not a module of the model, or is not called in the forward pass.
    NonFiniteError
        The mode has NaN or Inf (inputs or parameters with NaN/Inf, or an overflow).
    """
    if kind not in ("squared", "delta", "jvp"):
        raise DataError(f"kind must be 'squared', 'delta' or 'jvp', got {kind!r}")
    check_train_mode(train_mode)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    dirs = torch.as_tensor(direction)
    single = dirs.ndim == 1
    dirs = dirs[None] if single else dirs
    if dirs.ndim != 2:
        raise ShapeError(
            f"direction must be (n,) or (k, n) with n = {layout.size}, got {tuple(dirs.shape)}"
        )
    for i in range(dirs.shape[0]):
        check_vector(layout, dirs[i])
    dirs = dirs.to(torch.float64)
    norms = torch.linalg.vector_norm(dirs, dim=1)
    if not bool(torch.isfinite(dirs).all()) or bool((norms == 0).any()):
        raise DataError(f"each direction must be finite and non-zero (norms {norms.tolist()[:8]})")
    if epsilon is not None and not epsilon > 0:
        raise DataError(f"epsilon must be > 0 (or None for rel_epsilon · ‖θ‖), got {epsilon}")
    if epsilon is None and not rel_epsilon > 0:
        raise DataError(f"rel_epsilon must be > 0, got {rel_epsilon}")
    _readout_module(model, readout)  # a clear error before any copy
    eval_copy = needs_eval_copy(model, train_mode, "functional mode")
    net = model
    if dtype is not None or model.training:  # a train-mode model is never run itself
        net = copy.deepcopy(model)
        net = net.to(dtype) if dtype is not None else net
        net = net.eval() if eval_copy else net
    theta = flatten_params(net, layout)
    eps = rel_epsilon * float(torch.linalg.vector_norm(theta)) if epsilon is None else epsilon
    if not eps > 0:
        raise DataError(
            f"epsilon = rel_epsilon · ‖θ_tracked‖ = {eps} is not > 0 (the tracked parameters "
            "are zero); give an absolute epsilon"
        )
    ref = next(iter(dict(net.named_parameters()).values()))
    dirs = (dirs / norms[:, None]).to(device=ref.device)
    base = {k: t.to(ref.dtype) for k, t in unflatten(theta.to(ref.device), layout).items()}
    module = _readout_module(net, readout)
    outs: list[list[torch.Tensor]] = [[] for _ in range(dirs.shape[0])]
    with torch.no_grad():
        for chunk in torch.split(inputs, batch_size):
            chunk = chunk.to(ref.device)
            h0 = (
                None
                if kind == "jvp"
                else _readout_input(net, module, base, chunk, position, readout)
            )
            for i in range(dirs.shape[0]):
                step = {k: t.to(ref.dtype) for k, t in unflatten(eps * dirs[i], layout).items()}
                if h0 is None:

                    def h_of(p: dict[str, torch.Tensor], x: torch.Tensor = chunk) -> torch.Tensor:
                        return _readout_input(net, module, p, x, position, readout)

                    with warnings.catch_warnings():  # torch's first jvp scripts decompositions
                        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
                        out = jvp(h_of, (base,), (step,))[1]
                else:
                    moved = {k: base[k] + step[k] for k in base}
                    out = _readout_input(net, module, moved, chunk, position, readout) - h0
                outs[i].append(out.to(torch.float64).cpu())
    delta = torch.stack([torch.cat(o) for o in outs])
    if not torch.isfinite(delta).all():
        bad = int((~torch.isfinite(delta)).sum())
        raise NonFiniteError(
            f"the functional mode ({kind!r}) has {bad} NaN/Inf entries of {delta.numel()}: "
            "check the inputs and parameters for NaN/Inf, or use dtype=torch.float64"
        )
    result = (delta**2).sum(dim=2) if kind == "squared" else delta
    return result[0] if single else result
