"""Models of the experiments: :class:`Transformer` and :class:`MLP`, and their (de)serialisation.

A model is described by a *spec*, ``{"kind": "transformer" | "mlp", "config": {...}}``, a
plain dict stored in training checkpoints so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from experiments.mlp import MLP, MLPConfig
from experiments.transformer import HookPoint, Transformer, TransformerConfig
from interbasis import FormatError

ModelConfig = TransformerConfig | MLPConfig

__all__ = [
    "MLP",
    "HookPoint",
    "MLPConfig",
    "ModelConfig",
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
    raise TypeError(f"expected TransformerConfig or MLPConfig, got {type(config).__name__}")


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"kind", "config"}`` of one of our models (inverse of :func:`model_from_spec`)."""
    if isinstance(model, Transformer):
        return {"kind": "transformer", "config": model.cfg.to_dict()}
    if isinstance(model, MLP):
        return {"kind": "mlp", "config": model.cfg.to_dict()}
    raise TypeError(f"model_spec needs a Transformer or MLP, got {type(model).__name__}")


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a freshly initialised model from a spec; bad specs raise FormatError."""
    if not isinstance(spec, dict) or "kind" not in spec or "config" not in spec:
        raise FormatError(f"a model spec needs keys 'kind' and 'config', got {spec!r:.200}")
    kind, config = spec["kind"], spec["config"]
    if kind == "transformer":
        return Transformer(TransformerConfig.from_dict(config))
    if kind == "mlp":
        return MLP(MLPConfig.from_dict(config))
    raise FormatError(f"unknown model kind {kind!r}; expected 'transformer' or 'mlp'")
