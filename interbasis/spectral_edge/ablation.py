"""Ablation: remove the edge from θ and compare with removing random directions.

``project_out(θ, V) = θ − Q Qᵀ θ`` with Q an orthonormal basis of span(rows of V). The edge
ablation sets θ_tracked ← project_out(θ_tracked, edge); its controls are (i) projecting out
as many random directions, and (ii) moving θ by a random vector of the same norm as the
removed component ``‖Q Qᵀ θ‖``. The lifecycle paper reports that removing the edge is
catastrophic; the controls tell whether any comparable change would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from interbasis.errors import DataError, RankError
from interbasis.spectral_edge.controls import random_directions
from interbasis.spectral_edge.parameters import (
    ParamLayout,
    check_vector,
    flatten_params,
    unflatten,
)


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
) -> AblationResult:
    """Evaluate ``model`` with the edge projected out and with random controls.

    The model's parameters are restored afterwards.

    Parameters
    ----------
    model : torch.nn.Module
    layout : ParamLayout
    directions : torch.Tensor, shape (k, n) or (n,)
    evaluate : callable
        ``evaluate(model) -> float``, e.g. test accuracy.
    n_random : int
        Number of random draws for each control.
    seed : int
    """
    directions = directions[None] if directions.ndim == 1 else directions
    for i in range(directions.shape[0]):
        check_vector(layout, directions[i], what=f"directions[{i}]")
    theta = flatten_params(model, layout)
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
