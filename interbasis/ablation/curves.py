"""Ablation curves: the metric as the least important basis directions are removed.

For each ``n`` in ``counts`` the ``n`` least important non-constant directions of a node
layer's basis (smallest Λ; PCA: smallest variance; neuron: smallest activation variance) are
set to zero or to their mean by equation (1) of :mod:`interbasis.ablation.directions`, and the
model is run on to its output. seed 004 §7 and rib's ``ablate_node_layers_and_eval`` use this
curve as the evidence that the interaction basis is faithful: accuracy should survive far more
ablated directions there than in the PCA or neuron basis.

Closed form (tested): for a node layer followed by a linear map to the output, in the local
interaction basis with the neuron basis at the output, ``metric="mse"`` after ablating the set
``S`` equals ``sum_{i in S} Λ_i`` exactly — coordinates are uncorrelated with variance Λ_i
and each ablated direction moves the output by a vector of norm 1 per unit coordinate
(seed 004 §6.1: ``M_z = V Λ V^T``). The same holds for the PCA basis with the variances when
that linear map is orthogonal. The normalisation is the Grams' (``1/N`` over samples, and
``1/P`` over positions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from interbasis.ablation.directions import (
    DirectionAblation,
    Mode,
    Truncated,
    check_mode,
    least_important,
    nonconstant,
)
from interbasis.ablation.forward import Forward, check_bases, labelled_batches, prepare_model
from interbasis.ablation.metrics import MetricFn, check_metric, make_accumulator
from interbasis.basis import Basis
from interbasis.capture import OUTPUT
from interbasis.errors import DataError, NodeLayerError

CountKind = Literal["ablated", "kept"]
JOINT = "joint"


@dataclass
class AblationCurve:
    """Metric against the number of ablated directions.

    Attributes
    ----------
    layers : node layers ablated.
    jointly : whether all ``layers`` were ablated together (one curve ``"joint"``) or one at
        a time (one curve per layer, the others left clean).
    n_ablated, n_kept : layer -> list of ints, one per count: non-constant directions
        ablated / kept (the constant direction is never ablated and not counted).
    values : curve name (a layer, or ``"joint"``) -> ``(len(counts),)`` float64 metric.
    baseline : metric of the unablated model on the same data.
    settings : metric, mode, count kind, truncated, basis kinds, dtype, number of samples.
    """

    layers: tuple[str, ...]
    jointly: bool
    counts: tuple[int, ...]
    n_ablated: dict[str, list[int]]
    n_kept: dict[str, list[int]]
    values: dict[str, np.ndarray]
    baseline: float
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (curve, layer, count): for CSV files."""
        out = []
        for curve, vals in self.values.items():
            for layer in self.layers if curve == JOINT else (curve,):
                for i, v in enumerate(vals):
                    out.append(
                        dict(curve=curve, layer=layer, n_ablated=self.n_ablated[layer][i],
                             n_kept=self.n_kept[layer][i], value=float(v),
                             baseline=self.baseline)
                    )  # fmt: skip
        return out


def _check_counts(counts: Sequence[int]) -> tuple[int, ...]:
    if isinstance(counts, int) or len(counts) == 0:
        raise DataError(f"counts must be a non-empty sequence of ints, got {counts!r}")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 0:
            raise DataError(f"counts must be integers >= 0, got {c!r}")
    return tuple(int(c) for c in counts)


def _layers(node_layer: str | Sequence[str]) -> tuple[str, ...]:
    names = (node_layer,) if isinstance(node_layer, str) else tuple(node_layer)
    if not names:
        raise NodeLayerError("node_layer is empty: give a node-layer name or a list of them")
    if OUTPUT in names:
        raise NodeLayerError('"output" cannot be ablated: it is what the metric reads')
    return names


def n_ablated_for(basis: Basis, count: int, kind: CountKind) -> int:
    """Directions to ablate for ``count`` (clamped to the non-constant directions)."""
    k = int(nonconstant(basis).numel())
    return min(count, k) if kind == "ablated" else max(k - count, 0)


def ablation_curve(
    model: nn.Module,
    data: Any,
    bases: Sequence[Basis] | Mapping[str, Basis],
    node_layer: str | Sequence[str],
    counts: Sequence[int],
    metric: str | MetricFn = "accuracy",
    *,
    count: CountKind = "ablated",
    mode: Mode = "zero",
    jointly: bool = False,
    truncated: Truncated = "keep",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
) -> AblationCurve:
    """Metric after ablating the least important directions, for each count.

    Parameters
    ----------
    model : the network (its input activations at ``node_layer`` must be a cut).
    data : tensor of inputs, ``(inputs, targets)``, or a re-iterable of such batches.
    bases : bases (a list or ``{name: Basis}``) containing every layer in ``node_layer``.
    node_layer : one node-layer name or several.
    counts : numbers of non-constant directions to ablate (``count="ablated"``) or to keep
        (``count="kept"``); clamped per layer to its number of non-constant directions.
    metric : ``"accuracy"``, ``"loss"``, ``"mse"``, ``"r2"`` or a callable
        (:mod:`interbasis.ablation.metrics`).
    mode : ``"zero"`` or ``"mean"`` replacement (the same in centred bases).
    jointly : ablate every layer of ``node_layer`` together (one curve) instead of one at a
        time (one curve each).
    truncated : ``"keep"`` (default, eq. 1) or ``"drop"`` (rib's rotate-and-back).
    dtype, device, batch_size : of the forward passes (the model is copied if needed).

    Returns
    -------
    AblationCurve

    Memory is independent of the dataset (one batch at a time); each count costs one
    forward pass per batch and nothing is rebuilt per count.
    """
    check_metric(metric)
    check_mode(mode, truncated)
    if count not in ("ablated", "kept"):
        raise DataError(f'count must be "ablated" or "kept", got {count!r}')
    counts_t = _check_counts(counts)
    names = _layers(node_layer)
    table = check_bases(bases, names)
    model, dev = prepare_model(model, dtype, device)
    forward = Forward(model, names)
    n_abl = {n: [n_ablated_for(table[n], c, count) for c in counts_t] for n in names}
    n_kept = {n: [int(nonconstant(table[n]).numel()) - a for a in n_abl[n]] for n in names}

    def sub(name: str, i: int) -> DirectionAblation:
        S = least_important(table[name], n_abl[name][i])
        return DirectionAblation(table[name], S, mode, truncated, dev)

    curves: dict[str, list[dict[str, DirectionAblation]]] = {}
    if jointly:
        curves[JOINT] = [{n: sub(n, i) for n in names} for i in range(len(counts_t))]
    else:
        for n in names:
            curves[n] = [{n: sub(n, i)} for i in range(len(counts_t))]
    base_acc = make_accumulator(metric)
    accs = {k: [make_accumulator(metric) for _ in counts_t] for k in curves}
    n_samples = 0
    for b, (x, y) in enumerate(labelled_batches(data, batch_size, dev, dtype)):
        acts, layouts, out = forward.clean(x)
        if b == 0:
            for n in names:
                forward.width(n, acts, table[n])
        n_samples += x.shape[0]
        base_acc.update(out, y, out)
        for key, per_count in curves.items():
            for i, subs in enumerate(per_count):
                result = forward.substituted(x, acts, layouts, dict(subs))
                accs[key][i].update(result, y, out)
    settings = dict(
        metric=metric if isinstance(metric, str) else getattr(metric, "__name__", "callable"),
        mode=mode, count=count, truncated=truncated, dtype=str(dtype), n_samples=n_samples,
        bases={n: table[n].kind for n in names},
    )  # fmt: skip
    return AblationCurve(
        names, jointly, counts_t, n_abl, n_kept,
        {k: np.array([a.value() for a in v]) for k, v in accs.items()},
        base_acc.value(), settings,
    )  # fmt: skip
