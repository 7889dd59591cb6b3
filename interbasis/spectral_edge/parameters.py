"""Choosing tracked parameters and moving between named tensors and one flat vector.

The spectral edge lives in the space of the *tracked* parameters θ_tracked ∈ R^n: the
parameters selected by a filter, flattened in the order of ``model.named_parameters()`` and
concatenated. Every direction ``v`` in this package is such a flat vector of length n. The
layout is :class:`interbasis.curvature.ParamLayout` (the same flat order as the curvature
package), built here from a name filter; this module adds the checks the tracker needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from interbasis.curvature.params import ParamLayout
from interbasis.errors import DataError, ShapeError

__all__ = [
    "ATTENTION_WEIGHTS",
    "ParamFilter",
    "ParamLayout",
    "check_model",
    "check_vector",
    "flatten_params",
    "select_parameters",
    "unflatten",
]

ATTENTION_WEIGHTS = r"(^|\.)attn\.W_[QKVO]$"
"""Default parameter filter (seed 003): the attention weights W_Q, W_K, W_V, W_O of every block
(a regular expression matched against parameter names)."""

ParamFilter = str | Sequence[str] | Callable[[str, torch.nn.Parameter], bool]


def check_model(layout: ParamLayout, model: torch.nn.Module) -> None:
    """Raise :class:`ShapeError` if a tracked parameter is missing or changed shape."""
    params = dict(model.named_parameters())
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        if name not in params:
            raise ShapeError(f"tracked parameter {name!r} is no longer in the model")
        if tuple(params[name].shape) != tuple(shape):
            raise ShapeError(
                f"tracked parameter {name!r} changed shape: expected {tuple(shape)}, "
                f"got {tuple(params[name].shape)}"
            )


def check_vector(layout: ParamLayout, vector: torch.Tensor, what: str = "direction") -> None:
    """Raise :class:`ShapeError` unless ``vector`` has shape ``(n,)``, n = ``layout.size``."""
    if vector.ndim != 1 or vector.shape[0] != layout.size:
        raise ShapeError(
            f"{what} must be a flat vector of length {layout.size} (the tracked "
            f"parameters {list(layout.names)}), got shape {tuple(vector.shape)}"
        )


def select_parameters(
    model: torch.nn.Module, params: ParamFilter = ATTENTION_WEIGHTS
) -> ParamLayout:
    """Select the tracked parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
    params : str, sequence of str, or callable
        A regular expression searched in each parameter name (default: the attention weights
        ``blocks.{i}.attn.W_Q/W_K/W_V/W_O``), an explicit list of names, or a predicate
        ``f(name, parameter) -> bool``.

    Returns
    -------
    ParamLayout
        Names in ``named_parameters()`` order and their shapes.

    Raises
    ------
    DataError
        If the filter selects no parameter, or a listed name does not exist.
    """
    named = list(model.named_parameters())
    if isinstance(params, str):
        pattern = re.compile(params)
        chosen = [n for n, _ in named if pattern.search(n)]
    elif callable(params):
        chosen = [n for n, p in named if params(n, p)]
    else:
        wanted = set(params)
        missing = sorted(wanted - {n for n, _ in named})
        if missing:
            raise DataError(f"params names {missing} are not parameters of the model")
        chosen = [n for n, _ in named if n in wanted]
    if not chosen:
        sample = [n for n, _ in named][:12]
        raise DataError(
            f"parameter filter {params!r} selected no parameters; the model has {len(named)} "
            f"parameters, e.g. {sample}"
        )
    shapes = {n: p.shape for n, p in named}
    return ParamLayout(tuple(chosen), tuple(shapes[n] for n in chosen))


def flatten_params(
    model: torch.nn.Module, layout: ParamLayout, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Concatenate the tracked parameters into one detached vector θ_tracked, shape (n,)."""
    check_model(layout, model)
    return layout.gather(model, dtype)


def unflatten(vector: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Split a flat vector of shape (n,) into named tensors of the tracked shapes."""
    check_vector(layout, vector)
    return layout.unflatten(vector)
