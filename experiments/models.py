"""Models of the experiments: :class:`Transformer`, :class:`Seed001Transformer` and :class:`MLP`.

A model is described by a *spec*, ``{"kind": "transformer" | "seed001" | "mlp", "config":
{...}}``, a plain dict stored in training checkpoints so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from experiments.mlp import MLP, MLPConfig
from experiments.seed001_model import Seed001Config, Seed001Transformer
from experiments.transformer import HookPoint, Transformer, TransformerConfig
from interbasis import DataError, FormatError

ModelConfig = TransformerConfig | MLPConfig | Seed001Config

__all__ = [
    "MLP",
    "HookPoint",
    "MLPConfig",
    "ModelConfig",
    "Seed001Config",
    "Seed001Transformer",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "model_from_spec",
    "model_spec",
]


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model a config describes (``Transformer`` or ``MLP``)."""
    if isinstance(config, TransformerConfig):
        return Transformer(config)
    if isinstance(config, MLPConfig):
        return MLP(config)
    if isinstance(config, Seed001Config):
        return Seed001Transformer(config)
    raise DataError(
        f"build_model needs a TransformerConfig, Seed001Config or MLPConfig, got "
        f"{type(config).__name__}"
    )


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"kind", "config"}`` of one of our models (inverse of :func:`model_from_spec`)."""
    if isinstance(model, Transformer):
        return {"kind": "transformer", "config": model.cfg.to_dict()}
    if isinstance(model, MLP):
        return {"kind": "mlp", "config": model.cfg.to_dict()}
    if isinstance(model, Seed001Transformer):
        return {"kind": "seed001", "config": model.cfg.to_dict()}
    raise DataError(
        f"model_spec needs a Transformer, Seed001Transformer or MLP, got {type(model).__name__}"
    )


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a freshly initialised model from a spec; bad specs raise FormatError."""
    if not isinstance(spec, dict) or "kind" not in spec or "config" not in spec:
        raise FormatError(f"a model spec needs keys 'kind' and 'config', got {spec!r:.200}")
    kind, config = spec["kind"], spec["config"]
    if kind == "transformer":
        return Transformer(TransformerConfig.from_dict(config))
    if kind == "mlp":
        return MLP(MLPConfig.from_dict(config))
    if kind == "seed001":
        return Seed001Transformer(Seed001Config.from_dict(config))
    raise FormatError(f"unknown model kind {kind!r}; expected 'transformer', 'seed001' or 'mlp'")
