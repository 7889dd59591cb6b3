"""Module ablation: remove one module's nodes in every layer and read the metric per task.

A module of a partition (:func:`graphs.find_modules`) is a set of nodes ``{layer: S_layer}``
across node layers. Ablating it sets, in every node layer except ``"output"``, the
coordinates ``S_layer`` to their target by equation (1) of
:mod:`interbasis.ablation.directions` (all layers in one forward pass, in forward order,
each after the earlier ones' changes). Nodes of the ``"output"`` layer are what the metric
reads and are not ablated; constant nodes are never in a module. The metric is evaluated per
*output group* (e.g. the output units of each task): a module is a unit of computation for a
task when ablating it breaks that task and leaves the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from graphs import InteractionGraph
from interbasis.ablation.directions import DirectionAblation, Mode, check_mode
from interbasis.ablation.forward import Forward, check_bases, labelled_batches, prepare_model
from interbasis.ablation.metrics import MetricFn, check_metric, make_accumulator
from interbasis.basis import Basis
from interbasis.capture import OUTPUT
from interbasis.errors import DataError, ShapeError


@dataclass
class ModuleAblation:
    """``values[m, g]``: metric of output group ``g`` with module ``modules[m]`` ablated."""

    modules: list[int]
    groups: list[str]
    values: np.ndarray
    baseline: np.ndarray
    ablated_nodes: dict[int, dict[str, list[int]]]
    settings: dict[str, Any] = field(default_factory=dict)


def _membership(partition: Any) -> dict[str, int]:
    membership = getattr(partition, "membership", partition)
    if not isinstance(membership, Mapping):
        raise DataError(
            "partition must be a graphs.Partition or a dict node id -> module id, got "
            f"{type(partition).__name__}"
        )
    for node_id, m in membership.items():
        if isinstance(m, bool) or not isinstance(m, int | np.integer):
            raise DataError(f"partition: module id of node {node_id!r} must be an int, got {m!r}")
    return {str(k): int(v) for k, v in membership.items()}


def _groups(groups: Mapping[str, Sequence[int]] | None) -> dict[str, list[int] | None]:
    if groups is None:
        return {"all": None}
    if not isinstance(groups, Mapping):
        raise DataError(
            f"groups must be a dict name -> output column indices, got {type(groups).__name__}"
        )
    if not groups:
        raise DataError("groups is empty: give {name: output column indices}")
    for name, cols in groups.items():
        if (
            isinstance(cols, str | bytes)
            or not isinstance(cols, Sequence | np.ndarray)
            or any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in cols)
        ):
            raise DataError(
                f"groups[{name!r}] must be a list of output column indices, got {cols!r}"
            )
    return {str(k): [int(i) for i in v] for k, v in groups.items()}


def module_nodes(
    graph: InteractionGraph, membership: Mapping[str, int]
) -> dict[int, dict[str, list[int]]]:
    """module id -> {layer: node indices}; output-layer and constant nodes left out."""
    layers = {layer.name: layer for layer in graph.layers}
    out: dict[int, dict[str, list[int]]] = {}
    for node_id, m in membership.items():
        if m < 0:
            continue
        name, _, index = node_id.rpartition(":")
        if name not in layers or not (index.isascii() and index.isdigit()):
            raise ShapeError(f"partition node {node_id!r} is not in the graph's layers")
        i = int(index)
        if i >= layers[name].size:
            raise ShapeError(
                f"partition node {node_id!r} is not in the graph: layer {name!r} has "
                f"{layers[name].size} nodes"
            )
        if name == OUTPUT or layers[name].is_constant[i]:
            continue
        out.setdefault(m, {}).setdefault(name, []).append(i)
    return {m: {k: sorted(v) for k, v in out[m].items()} for m in sorted(out)}


def module_ablation(
    model: nn.Module,
    data: Any,
    graph: InteractionGraph,
    partition: Any,
    metric: str | MetricFn = "r2",
    *,
    bases: Sequence[Basis] | Mapping[str, Basis],
    groups: Mapping[str, Sequence[int]] | None = None,
    mode: Mode = "zero",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
) -> ModuleAblation:
    """Metric per output group with each module's nodes ablated in turn.

    Parameters
    ----------
    graph : the graph the partition was found on (node ids ``"{layer}:{i}"``).
    partition : a :class:`graphs.Partition` or ``{node id: module id}`` (−1 = unassigned,
        never ablated).
    metric : as in :func:`ablation_curve`; default ``"r2"`` (1 = the function kept, 0 =
        chance for a regression), evaluated on the output columns of each group.
    bases : the bases of the graph's layers.
    groups : ``{name: output column indices}`` (e.g. ``{"A": [0], "B": [1]}``); default one
        group of all outputs. Targets with the outputs' trailing shape are sliced alike.

    Returns
    -------
    ModuleAblation with ``values`` of shape ``(n_modules, n_groups)`` and the unablated
    ``baseline`` ``(n_groups,)``.
    """
    check_metric(metric)
    check_mode(mode, "keep")
    membership = _membership(partition)
    cols = _groups(groups)
    nodes = module_nodes(graph, membership)
    names = [layer.name for layer in graph.layers if layer.name != OUTPUT]
    table = check_bases(bases, names)
    model, dev = prepare_model(model, dtype, device)
    forward = Forward(model, names)
    subs = {
        m: {n: DirectionAblation(table[n], idx, mode, "keep", dev) for n, idx in per.items()}
        for m, per in nodes.items()
    }
    base = {g: make_accumulator(metric) for g in cols}
    accs = {m: {g: make_accumulator(metric) for g in cols} for m in subs}

    def pick(t: torch.Tensor | None, c: list[int] | None, width: int) -> torch.Tensor | None:
        if t is None or c is None or t.shape[-1:] != (width,):
            return t
        return t[..., c]

    def cols_of(t: torch.Tensor, c: list[int] | None) -> torch.Tensor:
        return t if c is None else t[..., c]

    for b, (x, y) in enumerate(labelled_batches(data, batch_size, dev, dtype)):
        acts, layouts, out = forward.clean(x)
        if b == 0:
            for n in names:
                forward.width(n, acts, table[n])
        w = out.shape[-1]
        for g, c in cols.items():
            base[g].update(cols_of(out, c), pick(y, c, w), cols_of(out, c))
        for m, s in subs.items():
            result = forward.substituted(x, acts, layouts, dict(s)) if s else out
            for g, c in cols.items():
                accs[m][g].update(cols_of(result, c), pick(y, c, w), cols_of(out, c))
    mods = list(subs)
    return ModuleAblation(
        mods, list(cols),
        np.array([[accs[m][g].value() for g in cols] for m in mods]).reshape(len(mods), len(cols)),
        np.array([base[g].value() for g in cols]), nodes,
        dict(mode=mode, dtype=str(dtype), metric=metric if isinstance(metric, str) else "callable"),
    )  # fmt: skip
