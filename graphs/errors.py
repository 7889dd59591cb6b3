"""Exceptions and warnings raised by :mod:`graphs`.

``graphs`` never imports ``interbasis`` (DESIGN §2), so it has its own small hierarchy. Every
error names the offending layer pair, shape, node, value or path, so a user can fix the call
without reading our source. Each type also subclasses the matching builtin (``ValueError``,
``KeyError``, ``OSError``) so generic ``except ValueError`` handlers keep working.
"""

from __future__ import annotations


class GraphError(Exception):
    """Base class of every error raised by :mod:`graphs`."""


class InvalidGraphError(GraphError, ValueError):
    """Layers or edge matrices that do not form a valid interaction graph.

    Wrong shapes, NaN/Inf or negative weights, edges on a constant node, duplicate names.
    """


class UnknownNodeError(GraphError, KeyError):
    """A node id (``"{layer}:{index}"``) that is not in the graph."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class GraphFormatError(GraphError, ValueError):
    """A file that was not written by :mod:`graphs` (or has an unknown format version)."""


class GraphWriteError(GraphError, OSError):
    """An output path that cannot be written (missing folder, a directory, no permission)."""


class ModuleSearchError(GraphError, ValueError):
    """Invalid arguments to a module search (ε ≤ 0, too many nodes for exact search, ...)."""


class EpsilonWarning(UserWarning):
    """No edge lies above the cutoff ε, so the cut objective carries no evidence."""
