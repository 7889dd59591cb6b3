"""Spectral edge ↔ graph: which nodes and modules a parameter direction moves.

For each direction ``v`` (an edge direction of :class:`interbasis.spectral_edge.
SpectralEdgeTracker`, a Hessian eigenvector, a random control) the first-order change of
every node function, ``delta f_hat^L_i = (J^L v) C^L_{:, i}`` (:mod:`.jvp`), gives

- ``movement_i = E_x delta f_hat_i(x)^2`` and, to compare layers, the *layer-normalised*
  movement ``moved_i = movement_i / sum_{j in L} E_x f_hat_j(x)^2`` (the share of layer
  ``L``'s function energy that ``v`` moves through node ``i``; constant node excluded);
- per module the sum of ``moved_i`` over its nodes, and the nodes moved most.

On the full grid ``(a, b) in Z_p^2`` of a modular task every function has a 2-D DFT. Its
non-constant power is grouped by *key frequency* ``k``: the classes ``(k, 0), (0, k),
(k, k), (k, -k)`` and their negatives (functions of ``a``, of ``b``, of ``a + b`` and of
``a - b`` at frequency ``k``; mixed classes such as ``(3, 5)`` only count in the total). A
node's *label* is its key frequency with the most power (and that power's share); a
direction's *mode frequency* at layer ``L`` is the key frequency with the most power in
``delta f_hat^L`` summed over nodes. ``match = sum_i moved_i [label_i = mode frequency] /
sum_i moved_i``: how much of what the direction moves sits on nodes of its own frequency.

A model in train mode follows :mod:`interbasis.train_mode` (``train_mode`` of
:func:`edge_graph_links`): an eval-mode copy with a warning (default), refused, or kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from interbasis.basis import Basis
from interbasis.errors import DataError, ShapeError
from interbasis.links.jvp import Layout, node_function_jvps, node_functions
from interbasis.spectral_edge import to_grid
from interbasis.train_mode import TrainMode, analysed_model


def key_classes(p: int) -> np.ndarray:
    """``(p, p)`` key frequency of each DFT index ``(k_a, k_b)`` (0 = DC, −1 = mixed)."""
    signed = np.where(np.arange(p) <= p // 2, np.arange(p), np.arange(p) - p)
    sa, sb = np.meshgrid(np.abs(signed), np.abs(signed), indexing="ij")
    pure = (sa == 0) | (sb == 0) | (sa == sb)
    return np.where(pure, np.maximum(sa, sb), -1)


def key_frequencies(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dominant key frequency of each function on ``Z_p^2`` and its share of the power.

    Parameters
    ----------
    grid : ``(p, p, ..., n)``: ``n`` functions of ``(a, b)`` (rows = ``a``); the middle axes
        (positions, channels) are summed in the power.

    Returns
    -------
    frequency : ``(n,)`` int in ``1..p//2``; 0 where a function has no non-constant power or
        all of it lies in mixed classes (no key frequency).
    share : ``(n,)`` the share of the non-constant power at that key frequency.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim < 3 or g.shape[0] != g.shape[1]:
        raise ShapeError(
            f"grid must have shape (p, p, ..., n): n functions on Z_p^2 (rows = a), got "
            f"{g.shape}; add a last axis for a single function"
        )
    p = g.shape[0]
    power = np.abs(np.fft.fft2(g, axes=(0, 1))) ** 2
    power = power.reshape(p * p, -1, g.shape[-1]).sum(axis=1)  # (p*p, n)
    keys = key_classes(p).reshape(-1)
    total = power[keys != 0].sum(axis=0)
    by_key = np.stack([power[keys == k].sum(axis=0) for k in range(1, p // 2 + 1)])
    best = by_key.argmax(axis=0)
    share = by_key[best, np.arange(by_key.shape[1])] / np.where(total > 0, total, 1.0)
    scale = (g.reshape(p * p, -1) ** 2).sum() * p * p
    flat = total <= 1e3 * np.finfo(np.float64).eps ** 2 * max(scale, 1e-300)
    none = flat | (share <= 1e3 * np.finfo(np.float64).eps)
    return np.where(none, 0, best + 1), np.where(flat, 0.0, share)


@dataclass(frozen=True)
class FourierGrid:
    """The inputs of a full ``Z_p^2`` grid: ``a[i], b[i]`` of each data row, modulus ``p``."""

    a: np.ndarray
    b: np.ndarray
    p: int


@dataclass(frozen=True)
class EdgeGraphLinks:
    """What ``k`` directions do to the graph's nodes (module docstring).

    Attributes
    ----------
    layers : node-layer names.
    movement : layer -> ``(k, n)`` ``E delta f_hat_i^2`` (constant node 0 stays 0).
    moved : layer -> ``(k, n)`` layer-normalised movement.
    modules : module ids; module_moved : ``(k, n_modules)`` summed ``moved`` per module;
        unassigned_moved : ``(k,)`` the rest (nodes in no module).
    top_nodes : per direction, the ``top`` node ids by ``moved``, with their ``moved``.
    labels, label_shares : layer -> ``(n,)`` node key frequency (0 = none) and share.
    mode_frequency, mode_share : layer -> ``(k,)`` each direction's key frequency and share.
    match : layer -> ``(k,)`` (module docstring); NaN where nothing moves.
    """

    layers: tuple[str, ...]
    movement: dict[str, np.ndarray]
    moved: dict[str, np.ndarray]
    modules: tuple[int, ...]
    module_moved: np.ndarray
    unassigned_moved: np.ndarray
    top_nodes: list[list[tuple[str, float]]]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    label_shares: dict[str, np.ndarray] = field(default_factory=dict)
    mode_frequency: dict[str, np.ndarray] = field(default_factory=dict)
    mode_share: dict[str, np.ndarray] = field(default_factory=dict)
    match: dict[str, np.ndarray] = field(default_factory=dict)


def _to_grid(values: np.ndarray, grid: FourierGrid) -> np.ndarray:
    return to_grid(values, grid.a, grid.b, grid.p)


def edge_graph_links(
    model: nn.Module,
    data: Any,
    bases: Sequence[Basis],
    directions: torch.Tensor,
    layout: Layout,
    membership: Mapping[str, int] | None = None,
    *,
    grid: FourierGrid | None = None,
    top: int = 5,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
) -> EdgeGraphLinks:
    """Node and module movement of ``directions`` ``(k, P)``, and the Fourier match.

    Parameters
    ----------
    data : model inputs; with ``grid`` they must be the full ``Z_p^2`` grid, row ``i`` being
        the pair ``(grid.a[i], grid.b[i])``.
    layout : the parameters the directions live in (e.g. ``SpectralEdgeTracker.layout``).
    membership : node id -> module id (``graphs.Partition.membership``).
    train_mode : a model in train mode is analysed as an eval-mode copy with a warning
        (``"eval"``, default), refused with :class:`DataError` (``"error"``) or run in train
        mode on a copy (``"keep"``); the model, its mode and its buffers never change.

    Raises
    ------
    DataError
        A ``grid`` whose number of pairs differs from the data's rows, an unknown
        ``train_mode``, a train-mode model with ``train_mode="error"``; and the errors of
        :func:`interbasis.links.node_function_jvps`.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise DataError(f"top must be an int >= 1, got {top!r}")
    model = analysed_model(model, train_mode, "edge-graph links")
    jv = node_function_jvps(
        model, data, bases, directions, layout, batch_size=batch_size, train_mode=train_mode
    )
    f_hat = node_functions(model, data, bases, batch_size=batch_size, train_mode=train_mode)
    membership = membership or {}
    modules = tuple(sorted({m for m in membership.values() if m >= 0}))
    col = {m: c for c, m in enumerate(modules)}
    k = jv.n_directions
    module_moved, unassigned = np.zeros((k, len(modules))), np.zeros(k)
    movement, moved, ids, flat = {}, {}, [], []
    for b in bases:
        mv = jv.movement()[b.name].numpy()
        energy = (f_hat[b.name] ** 2).reshape(-1, f_hat[b.name].shape[-1]).mean(dim=0).numpy()
        if b.has_constant:
            energy[0] = 0.0
        norm = mv / max(float(energy.sum()), 1e-300)
        movement[b.name], moved[b.name] = mv, norm
        for i in range(b.n_nodes):
            if b.has_constant and i == 0:
                continue
            node = f"{b.name}:{i}"
            ids.append(node)
            flat.append(norm[:, i])
            m = membership.get(node, -1)
            if m >= 0:
                module_moved[:, col[m]] += norm[:, i]
            else:
                unassigned += norm[:, i]
    stacked = np.stack(flat, axis=1)  # (k, nodes)
    order = np.argsort(-stacked, axis=1)[:, :top]
    top_nodes = [[(ids[j], float(stacked[r, j])) for j in order[r]] for r in range(k)]
    out = EdgeGraphLinks(
        tuple(jv.layers), movement, moved, modules, module_moved, unassigned, top_nodes
    )
    if grid is None:
        return out
    if len(grid.a) != next(iter(f_hat.values())).shape[0]:
        raise DataError(
            f"grid has {len(grid.a)} pairs but data has a different number of rows "
            f"({next(iter(f_hat.values())).shape[0]}): the data must be the full Z_p^2 grid"
        )
    for b in bases:
        labels, shares = key_frequencies(_to_grid(f_hat[b.name].numpy(), grid))
        if b.has_constant:
            labels[0], shares[0] = 0, 0.0
        delta = jv.deltas[b.name].numpy()  # (k, N, [pos], n)
        summed = np.moveaxis(delta, 0, -1).reshape(delta.shape[1], -1, k)
        freq, share = key_frequencies(_to_grid(summed, grid))
        w = moved[b.name]
        same = labels[None, :] == freq[:, None]
        tot = w.sum(axis=1)
        out.labels[b.name], out.label_shares[b.name] = labels, shares
        out.mode_frequency[b.name], out.mode_share[b.name] = freq, share
        out.match[b.name] = np.where(
            tot > 0, (w * same).sum(axis=1) / np.where(tot > 0, tot, 1), np.nan
        )
    return out
