"""Ablation: remove the edge from θ and compare with removing random directions.

``project_out(θ, V) = θ − Q Qᵀ θ`` with Q an orthonormal basis of span(rows of V). The edge
ablation sets θ_tracked ← project_out(θ_tracked, edge); its controls are (i) projecting out
as many random directions, and (ii) moving θ by a random vector of the same norm as the
removed component ``‖Q Qᵀ θ‖``. The lifecycle paper reports that removing the edge is
catastrophic; the controls tell whether any comparable change would be.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from interbasis.errors import DataError, RankError, ShapeError
from interbasis.spectral_edge.controls import random_directions
from interbasis.spectral_edge.parameters import (
    ParamLayout,
    check_vector,
    flatten_params,
    unflatten,
)
from interbasis.train_mode import TrainMode, check_train_mode, needs_eval_copy


def project_out(theta: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """θ − Q Qᵀ θ, Q = orthonormal basis of the rows of ``directions`` (float64).

    Parameters
    ----------
    theta : torch.Tensor, shape (n,)
    directions : torch.Tensor, shape (k, n), linearly independent rows
    """
    d = directions.to(torch.float64)
    if d.ndim != 2 or d.shape[1] != theta.shape[0]:
        raise DataError(
            f"directions must have shape (k, {theta.shape[0]}), got {tuple(directions.shape)}"
        )
    q, r = torch.linalg.qr(d.T)
    diag = torch.diagonal(r).abs()
    if diag.numel() == 0 or float(diag.min()) <= float(diag.max()) * d.shape[1] * 1e-15:
        raise RankError(f"the {d.shape[0]} directions are linearly dependent")
    t = theta.to(torch.float64)
    return t - q @ (q.T @ t)


@dataclass(frozen=True)
class AblationResult:
    """Metric (e.g. test accuracy) after each ablation.

    Attributes
    ----------
    baseline : float
    edge : float
        After projecting the edge out.
    random_subspace : numpy.ndarray, shape (n_random,)
        After projecting out as many random directions.
    random_equal_norm : numpy.ndarray, shape (n_random,)
        After a random move of norm ``removed_norm``.
    removed_norm : float
        ‖θ − project_out(θ, edge)‖.
    """

    baseline: float
    edge: float
    random_subspace: np.ndarray
    random_equal_norm: np.ndarray
    removed_norm: float


def _set_tracked(model: torch.nn.Module, layout: ParamLayout, theta: torch.Tensor) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in unflatten(theta, layout).items():
            params[name].copy_(value.to(params[name].dtype))


def ablate_directions(
    model: torch.nn.Module,
    layout: ParamLayout,
    directions: torch.Tensor,
    evaluate: Callable[[torch.nn.Module], float],
    *,
    n_random: int = 8,
    seed: int = 0,
    train_mode: TrainMode = "eval",
) -> AblationResult:
    """Evaluate ``model`` with the edge projected out and with random controls.

    A model in eval mode is ablated in place and its parameters are restored afterwards; a
    model in train mode is never changed: a copy is ablated (see ``train_mode``).

    Parameters
    ----------
    model : torch.nn.Module
    layout : ParamLayout
    directions : torch.Tensor, shape (k, n) or (n,)
    evaluate : callable
        ``evaluate(model) -> float``, e.g. test accuracy. It must evaluate the module it is
        given (which is a copy for a model in train mode), not a model it closes over.
    n_random : int
        Number of random draws for each control.
    seed : int
    train_mode : {"eval", "error", "keep"}
        For a model in train mode (:mod:`interbasis.train_mode`): ``"eval"`` (default)
        ablates an eval-mode copy, with a warning; ``"error"`` refuses the model with
        :class:`DataError`; ``"keep"`` ablates a copy in train mode.

    Raises
    ------
    DataError
        ``n_random`` not an int >= 1, an unknown ``train_mode``, a train-mode model with
        ``train_mode="error"``.
    RankError
        Linearly dependent directions.
    ShapeError
        Directions that do not fit ``layout``, or a model whose tracked parameters differ.
    """
    check_train_mode(train_mode)
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise DataError(f"n_random must be an int >= 1, got {n_random!r}")
    directions = torch.as_tensor(directions)
    directions = directions[None] if directions.ndim == 1 else directions
    if directions.ndim != 2:
        raise ShapeError(
            f"directions must be (k, n) or (n,) with n = {layout.size}, got "
            f"{tuple(directions.shape)}"
        )
    for i in range(directions.shape[0]):
        check_vector(layout, directions[i], what=f"directions[{i}]")
    theta = flatten_params(model, layout)
    if model.training:  # the caller's train-mode model is never ablated, nor run
        eval_copy = needs_eval_copy(model, train_mode, "edge ablation")
        model = copy.deepcopy(model)
        model = model.eval() if eval_copy else model
    with torch.no_grad():
        return _ablate(model, layout, directions, theta, evaluate, n_random, seed)


def _ablate(
    model: torch.nn.Module,
    layout: ParamLayout,
    directions: torch.Tensor,
    theta: torch.Tensor,
    evaluate: Callable[[torch.nn.Module], float],
    n_random: int,
    seed: int,
) -> AblationResult:
    k, n = directions.shape
    try:
        baseline = float(evaluate(model))
        ablated = project_out(theta, directions)
        removed = float(torch.linalg.vector_norm(theta - ablated))
        _set_tracked(model, layout, ablated)
        edge = float(evaluate(model))
        sub, move = [], []
        for i in range(n_random):
            rand = random_directions(n, k, seed=seed + i)
            _set_tracked(model, layout, project_out(theta, rand))
            sub.append(float(evaluate(model)))
            u = random_directions(n, 1, seed=seed + n_random + i)[0]
            _set_tracked(model, layout, theta - removed * u)
            move.append(float(evaluate(model)))
    finally:
        _set_tracked(model, layout, theta)
    return AblationResult(baseline, edge, np.array(sub), np.array(move), removed)
