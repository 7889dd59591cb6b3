"""A plain MLP whose node layers are addressable by name.

Module tree: ``layers.{k}`` (``nn.Linear``, k = 0..n_hidden) and ``acts.{k}`` (one activation
module per hidden layer, k = 0..n_hidden-1). Forward: ``x -> layers.0 -> acts.0 -> layers.1
-> ... -> layers.{n_hidden}`` with no activation at the end. So the *input* of ``acts.{k}`` is
the k-th pre-activation and the input of ``layers.{k}`` (k >= 1) the (k-1)-th activation.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from interbasis import DataError, FormatError, ShapeError

MLP_ACT_FNS = ("relu", "leaky_relu", "gelu", "tanh", "identity")


@dataclass
class MLPConfig:
    """Configuration of :class:`MLP`.

    ``d_hidden`` lists the width of each hidden layer (``[]`` gives a linear model).
    ``leaky_slope`` is the negative slope of ``leaky_relu``. ``seed`` makes the (PyTorch
    default) initialisation deterministic and independent of the global RNG.
    """

    d_in: int
    d_hidden: list[int] = field(default_factory=list)
    d_out: int = 1
    act_fn: str = "relu"
    bias: bool = True
    leaky_slope: float = 0.01
    seed: int | None = None

    def __post_init__(self) -> None:
        self.d_hidden = list(self.d_hidden)
        for name, value in [("d_in", self.d_in), ("d_out", self.d_out)] + [
            (f"d_hidden[{i}]", w) for i, w in enumerate(self.d_hidden)
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"MLPConfig.{name} must be a positive int, got {value!r}")
        if self.act_fn not in MLP_ACT_FNS:
            raise DataError(f"MLPConfig.act_fn={self.act_fn!r}; expected one of {MLP_ACT_FNS}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MLPConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~interbasis.FormatError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FormatError(f"unknown MLP config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def _activation(cfg: MLPConfig) -> nn.Module:
    if cfg.act_fn == "relu":
        return nn.ReLU()
    if cfg.act_fn == "leaky_relu":
        return nn.LeakyReLU(cfg.leaky_slope)
    if cfg.act_fn == "gelu":
        return nn.GELU()
    if cfg.act_fn == "tanh":
        return nn.Tanh()
    return nn.Identity()


class MLP(nn.Module):
    """Fully connected network ``(batch, d_in) -> (batch, d_out)``; see the module docstring.

    Weights use PyTorch's ``nn.Linear`` initialisation (Kaiming-uniform), drawn from a private
    generator state when ``cfg.seed`` is set.
    """

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.d_in, *cfg.d_hidden, cfg.d_out]
        with torch.random.fork_rng(devices=[]):
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
            self.layers = nn.ModuleList(
                nn.Linear(a, b, bias=cfg.bias) for a, b in itertools.pairwise(widths)
            )
        self.acts = nn.ModuleList(_activation(cfg) for _ in cfg.d_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, d_in) -> (batch, d_out)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"MLP expects input (batch, d_in={self.cfg.d_in}), got {shape}")
        for k, act in enumerate(self.acts):
            x = act(self.layers[k](x))
        return self.layers[-1](x)
