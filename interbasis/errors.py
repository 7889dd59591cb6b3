"""Exceptions raised by interbasis.

Every error says what was wrong and carries the offending name, shape or value, so a user
can fix the call without reading our source (networkx's ``NetworkXError`` is the model).
"""

from __future__ import annotations


class InterbasisError(Exception):
    """Base class of every error raised by interbasis."""


class NodeLayerError(InterbasisError, KeyError):
    """A node-layer name is unknown, duplicated or out of forward order."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(InterbasisError, ValueError):
    """The data cannot be used: empty, wrong type, wrong shape or dtype, mixed devices."""


class NonFiniteError(InterbasisError, FloatingPointError):
    """NaN or Inf found in activations, Jacobians or other computed tensors."""


class RankError(InterbasisError, ValueError):
    """A Gram (or other matrix) has no direction above the truncation threshold."""


class FormatError(InterbasisError, ValueError):
    """A file is not in a format written by interbasis (or has an unknown version)."""


class ShapeError(InterbasisError, ValueError):
    """Arrays whose shapes do not fit together."""


class NotPiecewiseLinearError(InterbasisError, TypeError):
    """The model is not a chain of linear maps and ReLU / leaky-ReLU gates."""


class WriteError(InterbasisError, OSError):
    """An output path that cannot be written (missing folder, a directory, no permission)."""
