"""Choosing tracked parameters and moving between named tensors and one flat vector.

The spectral edge lives in the space of the *tracked* parameters θ_tracked ∈ R^n: the
parameters selected by a filter, flattened in the order of ``model.named_parameters()`` and
concatenated. Every direction ``v`` in this package is such a flat vector of length n.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from interbasis.errors import DataError, ShapeError

#: Default filter (seed 003): the attention weights W_Q, W_K, W_V, W_O of every block.
ATTENTION_WEIGHTS = r"(^|\.)attn\.W_[QKVO]$"

ParamFilter = str | Sequence[str] | Callable[[str, torch.nn.Parameter], bool]


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of the tracked parameters; defines the flat vector's layout.

    Attributes
    ----------
    names : tuple[str, ...]
        Parameter names, in ``named_parameters()`` order.
    shapes : tuple[tuple[int, ...], ...]
        Their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of entries of each parameter."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Length n of the flat vector."""
        return sum(self.sizes)

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise :class:`ShapeError` if a tracked parameter is missing or changed shape."""
        params = dict(model.named_parameters())
        for name, shape in zip(self.names, self.shapes, strict=True):
            if name not in params:
                raise ShapeError(f"tracked parameter {name!r} is no longer in the model")
            if tuple(params[name].shape) != shape:
                raise ShapeError(
                    f"tracked parameter {name!r} changed shape: expected {shape}, "
                    f"got {tuple(params[name].shape)}"
                )

    def check_vector(self, vector: torch.Tensor, what: str = "direction") -> None:
        """Raise :class:`ShapeError` unless ``vector`` has shape ``(n,)``."""
        if vector.ndim != 1 or vector.shape[0] != self.numel:
            raise ShapeError(
                f"{what} must be a flat vector of length {self.numel} (the tracked "
                f"parameters {list(self.names)}), got shape {tuple(vector.shape)}"
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
        wanted = list(params)
        known = {n for n, _ in named}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise DataError(f"params names {missing} are not parameters of the model")
        chosen = [n for n, _ in named if n in set(wanted)]
    if not chosen:
        sample = [n for n, _ in named][:12]
        raise DataError(
            f"parameter filter {params!r} selected no parameters; the model has {len(named)} "
            f"parameters, e.g. {sample}"
        )
    shapes = dict((n, tuple(p.shape)) for n, p in named)
    return ParamLayout(tuple(chosen), tuple(shapes[n] for n in chosen))


def flatten_params(
    model: torch.nn.Module, layout: ParamLayout, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Concatenate the tracked parameters into one detached vector θ_tracked, shape (n,)."""
    layout.check_model(model)
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1).to(dtype) for n in layout.names])


def unflatten(vector: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Split a flat vector of shape (n,) into named tensors of the tracked shapes."""
    layout.check_vector(vector)
    parts = torch.split(vector, list(layout.sizes))
    return {n: t.reshape(s) for n, t, s in zip(layout.names, parts, layout.shapes, strict=True)}
