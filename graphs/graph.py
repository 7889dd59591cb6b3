"""The interaction graph: layered nodes and one non-negative edge matrix per layer pair.

The graph is plain numpy (DESIGN §5): ``layers[i]`` is a :class:`NodeLayer` in forward order and
``edges[i]`` (float64, shape ``(layers[i+1].size, layers[i].size)`` = (out, in)) holds the
interaction strengths ``E`` between node layer ``i`` and node layer ``i + 1`` (DESIGN §4,
seed 004 §6). A constant (bias) node, when present, is node 0 of its layer and has no edges.
Node ids are ``"{layer_name}:{index}"`` everywhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from graphs.errors import InvalidGraphError, UnknownNodeError

if TYPE_CHECKING:
    import igraph


def _vector(value: Any, size: int, dtype: type, what: str, layer: str) -> np.ndarray:
    try:  # a copy: later edits by the caller cannot leak in
        raw = np.array(value)
        if raw.dtype.kind not in "biuf":  # strings, objects, complex: never silently cast
            raise TypeError(f"dtype {raw.dtype}")
        if (
            dtype is not np.float64
            and raw.dtype.kind == "f"
            and (~np.isfinite(raw) | (raw != np.round(raw))).any()
        ):
            raise TypeError("values that are not whole numbers")  # NaN != NaN lands here too
        if dtype is np.bool_ and raw.dtype.kind != "b" and ((raw != 0) & (raw != 1)).any():
            raise TypeError("values other than 0/1 (True/False)")
        arr: np.ndarray = raw.astype(dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidGraphError(
            f"layer {layer!r}: {what} must be a numeric array of shape ({size},), got {exc}"
        ) from exc
    if arr.shape != (size,):
        raise InvalidGraphError(
            f"layer {layer!r}: {what} has shape {arr.shape}, expected ({size},) (the layer size)"
        )
    arr.flags.writeable = False
    return arr


@dataclass(eq=False)
class NodeLayer:
    """One node layer of an interaction graph.

    Parameters
    ----------
    name : str
        Layer name (a ``named_modules()`` name or ``"output"``); node ids are ``"{name}:{i}"``.
    size : int
        Number of nodes, constant node included.
    eigenvalues : array (size,)
        Λ of each node (seed 004 §6); NaN where undefined (always NaN for the constant node).
    is_constant : bool array (size,)
        True only for the constant (bias) direction, which must be node 0.
    activation_variance : array (size,)
        Variance of each node's activation over the data (NaN allowed where unknown).

    Raises
    ------
    InvalidGraphError
        Wrong shapes, infinite values, negative variances or a constant node that is not node 0.
    """

    name: str
    size: int
    eigenvalues: np.ndarray
    is_constant: np.ndarray
    activation_variance: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidGraphError(f"layer name must be a non-empty string, got {self.name!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer):
            raise InvalidGraphError(f"layer {self.name!r}: size must be an int, got {self.size!r}")
        if self.size < 0:
            raise InvalidGraphError(f"layer {self.name!r}: size must be >= 0, got {self.size}")
        self.size = int(self.size)
        name = self.name
        self.eigenvalues = _vector(self.eigenvalues, self.size, np.float64, "eigenvalues", name)
        self.is_constant = _vector(self.is_constant, self.size, np.bool_, "is_constant", name)
        self.activation_variance = _vector(
            self.activation_variance, self.size, np.float64, "activation_variance", name
        )
        if np.isinf(self.eigenvalues).any():
            raise InvalidGraphError(f"layer {name!r}: eigenvalues contain +-inf")
        var = self.activation_variance
        if np.isinf(var).any() or (var < 0).any():
            raise InvalidGraphError(f"layer {name!r}: activation_variance must be finite and >= 0")
        if self.is_constant[1:].any():
            bad = int(np.flatnonzero(self.is_constant[1:])[0]) + 1
            raise InvalidGraphError(
                f"layer {name!r}: node {bad} is marked constant; only node 0 may be constant"
            )

    @property
    def has_constant(self) -> bool:
        """Whether node 0 is the constant (bias) direction."""
        return bool(self.size > 0 and self.is_constant[0])

    def node_ids(self) -> list[str]:
        """Node ids ``"{name}:{index}"`` in index order."""
        return [f"{self.name}:{i}" for i in range(self.size)]


class InteractionGraph:
    """Layered interaction graph (DESIGN §5).

    Parameters
    ----------
    layers : list of NodeLayer
        Node layers in forward order; names must be unique.
    edges : list of arrays
        ``edges[i]`` float64 of shape ``(layers[i+1].size, layers[i].size)`` (out, in), finite,
        non-negative, zero on constant nodes. Copied and made read-only.
    metadata : dict, optional
        JSON-serialisable description of how the graph was built (saved with it).
    modules : list of int arrays, optional
        Module id per node and layer (−1 = unassigned or constant); usually set with
        :meth:`with_modules`.

    Raises
    ------
    InvalidGraphError
        Naming the layer pair and the problem: wrong count or shape, NaN/Inf, negative weights,
        edges on a constant node, duplicate layer names.

    Examples
    --------
    >>> import numpy as np
    >>> from graphs import InteractionGraph, NodeLayer
    >>> layer = lambda n, s: NodeLayer(n, s, np.ones(s), np.zeros(s, bool), np.ones(s))
    >>> g = InteractionGraph([layer("a", 2), layer("b", 3)], [np.ones((3, 2))], {})
    >>> g.n_nodes, g.to_networkx().number_of_edges()
    (5, 6)
    """

    def __init__(
        self,
        layers: list[NodeLayer],
        edges: list[np.ndarray],
        metadata: dict[str, Any] | None = None,
        modules: list[np.ndarray] | None = None,
    ) -> None:
        if not isinstance(layers, list | tuple):
            raise InvalidGraphError(f"layers must be a list of NodeLayer, got {type(layers)}")
        if not isinstance(edges, list | tuple):
            raise InvalidGraphError(f"edges must be a list of arrays, got {type(edges)}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidGraphError(f"metadata must be a dict or None, got {type(metadata)}")
        self.layers = list(layers)
        for layer in self.layers:
            if not isinstance(layer, NodeLayer):
                raise InvalidGraphError(f"layers must be NodeLayer objects, got {type(layer)}")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise InvalidGraphError(f"layer names must be unique, got {names}")
        expected = max(len(self.layers) - 1, 0)
        if len(edges) != expected:
            raise InvalidGraphError(
                f"{len(self.layers)} layers need {expected} edge matrices, got {len(edges)}"
            )
        self.edges = [self._check_edges(i, e) for i, e in enumerate(edges)]
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.modules = None if modules is None else self._check_modules(modules)

    def _pair(self, i: int) -> str:
        return f"{self.layers[i].name!r} -> {self.layers[i + 1].name!r}"

    def _check_edges(self, i: int, edges: Any) -> np.ndarray:
        src, dst = self.layers[i], self.layers[i + 1]
        try:
            raw = np.array(edges)
            if raw.dtype.kind not in "biuf":  # strings, objects, complex: never silently cast
                raise TypeError(f"dtype {raw.dtype}")
            arr = raw.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidGraphError(f"edges of {self._pair(i)} are not numeric: {exc}") from exc
        if arr.shape != (dst.size, src.size):
            raise InvalidGraphError(
                f"edges of {self._pair(i)} have shape {arr.shape}, expected "
                f"({dst.size}, {src.size}) = (size of {dst.name!r}, size of {src.name!r})"
            )
        if not np.isfinite(arr).all():
            raise InvalidGraphError(f"edges of {self._pair(i)} contain NaN or Inf")
        if (arr < 0).any():
            raise InvalidGraphError(
                f"edges of {self._pair(i)} contain negative weights (min {arr.min():.3g}); "
                "interaction strengths must be >= 0"
            )
        if (src.has_constant and arr[:, 0].any()) or (dst.has_constant and arr[0, :].any()):
            raise InvalidGraphError(
                f"edges of {self._pair(i)} touch a constant node (node 0); they must be zero"
            )
        arr.flags.writeable = False
        return arr

    def _check_modules(self, modules: list[np.ndarray]) -> list[np.ndarray]:
        if not isinstance(modules, list | tuple) or len(modules) != len(self.layers):
            raise InvalidGraphError(
                f"modules: need a list with one array per layer ({len(self.layers)}), "
                f"got {type(modules).__name__}"
            )
        out = []
        for layer, mod in zip(self.layers, modules, strict=True):
            arr = _vector(mod, layer.size, np.int64, "modules", layer.name)
            if (arr < -1).any():
                bad = int(np.flatnonzero(arr < -1)[0])
                raise InvalidGraphError(
                    f"node '{layer.name}:{bad}': module id {int(arr[bad])} is below -1 "
                    "(module ids are >= 0, -1 = unassigned)"
                )
            if layer.has_constant and arr[0] != -1:
                raise InvalidGraphError(
                    f"node '{layer.name}:0' is the constant node and cannot be in a module "
                    f"(got module {int(arr[0])}; it must be -1)"
                )
            out.append(arr)
        return out

    # ----------------------------------------------------------------- nodes
    @property
    def n_nodes(self) -> int:
        """Total number of nodes (constant nodes included)."""
        return sum(layer.size for layer in self.layers)

    def node_ids(self) -> list[str]:
        """All node ids in forward order, then index order."""
        return [nid for layer in self.layers for nid in layer.node_ids()]

    def locate(self, node_id: str) -> tuple[int, int]:
        """Return ``(layer_index, index)`` of a node id.

        Raises
        ------
        UnknownNodeError
            If the id is malformed or names a layer or index that is not in the graph.
        """
        name, sep, idx = str(node_id).rpartition(":")
        for li, layer in enumerate(self.layers):
            if sep and layer.name == name and idx.isdigit() and int(idx) < layer.size:
                return li, int(idx)
        raise UnknownNodeError(
            f"node id {node_id!r} is not in the graph (ids are '{{layer}}:{{index}}' with layers "
            f"{[layer.name for layer in self.layers]})"
        )

    # ----------------------------------------------------------------- views
    def _node_attrs(self) -> list[tuple[str, dict[str, Any]]]:
        nodes = []
        for li, layer in enumerate(self.layers):
            for i, nid in enumerate(layer.node_ids()):
                attrs: dict[str, Any] = {
                    "layer": layer.name,
                    "layer_index": li,
                    "index": i,
                    "eigenvalue": float(layer.eigenvalues[i]),
                    "is_constant": bool(layer.is_constant[i]),
                    "activation_variance": float(layer.activation_variance[i]),
                }
                if self.modules is not None:
                    attrs["module"] = int(self.modules[li][i])
                nodes.append((nid, attrs))
        return nodes

    def edge_list(self) -> tuple[list[str], list[str], np.ndarray]:
        """Positive edges as ``(sources, targets, weights)``; edges point forward."""
        sources: list[str] = []
        targets: list[str] = []
        weights = []
        for i, e in enumerate(self.edges):
            out, inp = np.nonzero(e)
            src_name, dst_name = self.layers[i].name, self.layers[i + 1].name
            sources += [f"{src_name}:{j}" for j in inp.tolist()]
            targets += [f"{dst_name}:{j}" for j in out.tolist()]
            weights.append(e[out, inp])
        return sources, targets, np.concatenate(weights) if weights else np.zeros(0)

    def to_networkx(self) -> nx.DiGraph:
        """A ``networkx.DiGraph`` (edges point forward, only positive edges).

        Node attributes: ``layer``, ``layer_index``, ``index``, ``eigenvalue``, ``is_constant``,
        ``activation_variance`` and, when modules are attached, ``module``. Edge attribute
        ``weight`` (= E). Graph attribute ``metadata``.
        """
        g = nx.DiGraph(metadata=copy.deepcopy(self.metadata))
        g.add_nodes_from(self._node_attrs())
        src, dst, w = self.edge_list()
        g.add_weighted_edges_from(zip(src, dst, w.tolist(), strict=True))
        return g

    def to_igraph(self) -> igraph.Graph:
        """A directed ``igraph.Graph`` with the same attributes as :meth:`to_networkx`.

        Vertex attribute ``name`` holds the node id (igraph looks vertices up by it).
        """
        import igraph  # lazily: only this method needs it

        nodes = self._node_attrs()
        position = {nid: k for k, (nid, _) in enumerate(nodes)}
        src, dst, w = self.edge_list()
        g = igraph.Graph(n=len(nodes), directed=True)
        g.add_edges([(position[s], position[t]) for s, t in zip(src, dst, strict=True)])
        g.vs["name"] = [nid for nid, _ in nodes]
        for key in nodes[0][1] if nodes else ():
            g.vs[key] = [attrs[key] for _, attrs in nodes]
        g.es["weight"] = w.tolist()
        return g

    # ----------------------------------------------------------------- pruning
    def _kept_mask(self, e: np.ndarray, fraction: float) -> np.ndarray:
        flat = e.ravel()
        order = np.argsort(-flat, kind="stable")
        cumulative = np.cumsum(flat[order])
        keep = np.zeros(flat.size, dtype=bool)
        if flat.size and cumulative[-1] > 0:
            n_keep = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left")) + 1
            keep[order[: min(n_keep, int(np.count_nonzero(flat)))]] = True
        return keep.reshape(e.shape)

    def _check_fraction(self, fraction: float) -> float:
        if isinstance(fraction, bool) or not (
            isinstance(fraction, int | float | np.integer | np.floating) and 0.0 < fraction <= 1.0
        ):
            raise InvalidGraphError(f"fraction must be in (0, 1], got {fraction!r}")
        return float(fraction)

    def edges_needed(self, fraction: float) -> list[int]:
        """Per layer pair, the fewest edges whose weights sum to ``fraction`` of the pair's total.

        Constant nodes have no edges, so they are excluded automatically.
        """
        fraction = self._check_fraction(fraction)
        return [int(self._kept_mask(e, fraction).sum()) for e in self.edges]

    def prune(self, fraction: float) -> InteractionGraph:
        """Keep, per layer pair, the largest edges that make up ``fraction`` of its total weight.

        Parameters
        ----------
        fraction : float in (0, 1]
            Share of each pair's total edge weight to keep (1 keeps every positive edge).

        Returns
        -------
        InteractionGraph
            A new graph; dropped edges are set to zero, nodes and modules are unchanged.
        """
        fraction = self._check_fraction(fraction)
        edges = [np.where(self._kept_mask(e, fraction), e, 0.0) for e in self.edges]
        meta = {**copy.deepcopy(self.metadata), "pruned_fraction": fraction}
        return InteractionGraph(self.layers, edges, meta, self.modules)

    # ----------------------------------------------------------------- modules
    def with_modules(self, partition: Any) -> InteractionGraph:
        """Return a copy with a module id attached to every node (−1 = unassigned/constant).

        Parameters
        ----------
        partition : Partition or mapping node id -> module id
            Anything with a ``membership`` mapping, or the mapping itself. Missing nodes get −1.

        Raises
        ------
        UnknownNodeError
            A node id that is not in the graph.
        InvalidGraphError
            A constant node given a module, or a module id below −1.
        """
        membership = getattr(partition, "membership", partition)
        if not isinstance(membership, Mapping):
            raise InvalidGraphError(f"expected a Partition or a mapping, got {type(partition)}")
        modules = [np.full(layer.size, -1, dtype=np.int64) for layer in self.layers]
        for node_id, module in membership.items():
            li, i = self.locate(node_id)
            if isinstance(module, bool | np.bool_) or not isinstance(module, int | np.integer):
                raise InvalidGraphError(
                    f"node {node_id!r}: module id must be an int (>= 0, or -1 = unassigned), "
                    f"got {module!r} of type {type(module).__name__}"
                )
            if module < -1:
                raise InvalidGraphError(f"node {node_id!r}: module id {module} is below -1")
            modules[li][i] = int(module)
        return InteractionGraph(self.layers, self.edges, copy.deepcopy(self.metadata), modules)

    def module_membership(self) -> dict[str, int]:
        """The attached modules as ``{node id: module id}`` (constant nodes excluded)."""
        if self.modules is None:
            return {}
        return {
            f"{layer.name}:{i}": int(m)
            for layer, mods in zip(self.layers, self.modules, strict=True)
            for i, m in enumerate(mods.tolist())
            if not layer.is_constant[i]
        }

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as ``.npz`` (arrays) with a JSON header (names, metadata, format version).

        The write is atomic. See :func:`graphs.export.save_npz`.
        """
        from graphs.export import save_npz  # export imports this module

        save_npz(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InteractionGraph:
        """Load a graph written by :meth:`save`; see :func:`graphs.export.load_npz`."""
        from graphs.export import load_npz

        return load_npz(path)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{layer.name}:{layer.size}" for layer in self.layers)
        n_edges = sum(int(np.count_nonzero(e)) for e in self.edges)
        return f"InteractionGraph([{sizes}], {n_edges} edges)"
