"""Edge ablation: keep only the strongest edges of a section, and how many are needed.

**Definition.** Section ``s`` maps node layer ``L = graph.layers[s]`` to ``H =
graph.layers[s + 1]``: ``f^H = F(f^L)``. With bases ``B^L``, ``B^H`` (coordinates
``f_hat = [f, 1] @ C``), the edges ``E[j, i]`` of ``graph.edges[s]`` are ranked by weight
(descending, ties by flat index ``j * n_L + i``) among the non-constant pairs; ``keep`` = how
many of them are kept (mask ``K[j, i]``; the constant input direction is always kept, it is
not an edge). Every output direction ``j`` of ``H`` is computed from its own input, in which
the directions whose edge to ``j`` is removed are set to their target ``t`` (zero or mean,
as in :mod:`interbasis.ablation.directions`)::

    f_hat^H_j' = [ F( f^L + sum_{i : not K[j, i]} (t_i - f_hat^L_i) C_pinv^L[i, :d] ) @ C^H ]_j  (2)
    f^H'       = f^H + sum_j (f_hat^H_j' - f_hat^H_j) C_pinv^H[j, :d]                         (3)

and the model runs on from ``H`` with ``f^H'`` (or ``f^H'`` is the output when ``H`` is
``"output"``). This is rib's ``edge_ablation_forward_hook_fn`` (each output direction from
its own masked input). For an affine section, ``f_hat^H = f_hat^L W + b`` in basis
coordinates, (2) is the masked linear map ``f_hat^H_j' = sum_i W_ij (K_ji f_hat^L_i +
(1 - K_ji) t_i) + b_j``; keeping every edge reproduces the model exactly, and keeping none
gives every output direction the *constant-only path* ``F(f^L with all non-constant
directions at t)`` (in a centred basis with no truncation: ``F(mean of f^L)``).

Output directions with the same mask row share one forward pass; rows are stacked along the
batch (``max_rows`` rows per pass).

``edges_needed`` finds, per section, the smallest ``keep`` whose metric is within
``tolerance`` of the unablated model's, by bisection on a log scale (as rib's edge-bisect
schedule): with ``lo`` failing and ``hi`` passing, ``mid = round(sqrt((lo + 1)(hi + 1))) - 1``
clamped into ``(lo, hi)``. This is the linear scan's answer when the metric's distance to
the baseline shrinks monotonically with ``keep``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from graphs import InteractionGraph
from interbasis.ablation.directions import Mode, check_mode, targets
from interbasis.ablation.forward import Forward, check_bases, labelled_batches, prepare_model
from interbasis.ablation.metrics import MetricFn, check_metric, make_accumulator
from interbasis.basis import Basis
from interbasis.capture import OUTPUT
from interbasis.errors import DataError, ShapeError

DEFAULT_MAX_ROWS = 16384


@dataclass
class EdgeAblation:
    """Metric per section and number of kept edges.

    ``values[section][k]`` is the metric with ``keep[k]`` edges of that section kept (the
    section named by its input layer); ``n_edges[section]`` = non-constant pairs.
    """

    keep: tuple[int, ...]
    values: dict[str, np.ndarray]
    n_edges: dict[str, int]
    baseline: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class EdgesNeeded:
    """Result of :func:`edges_needed` per section (named by its input layer)."""

    needed: dict[str, int]
    n_edges: dict[str, int]
    evaluated: dict[str, dict[int, float]]
    baseline: float
    tolerance: float
    settings: dict[str, Any] = field(default_factory=dict)


def _sections(graph: InteractionGraph, section: int | str | None) -> list[int]:
    names = [layer.name for layer in graph.layers]
    if section is None:
        return list(range(len(names) - 1))
    if isinstance(section, str):
        if section not in names[:-1]:
            raise DataError(f"section {section!r} is not an input layer of {names[:-1]}")
        return [names.index(section)]
    if isinstance(section, bool) or not isinstance(section, int | np.integer):
        raise DataError(
            f"section must be an int index, an input layer name or None, got {section!r}"
        )
    if not 0 <= section < len(names) - 1:
        raise DataError(f"section index {section} out of range 0..{len(names) - 2}")
    return [int(section)]


def edge_order(graph: InteractionGraph, s: int) -> np.ndarray:
    """Flat indices ``j * n_in + i`` of the non-constant pairs of section ``s``, strongest first."""
    e = graph.edges[s]
    rows = np.arange(1 if graph.layers[s + 1].has_constant else 0, e.shape[0])
    cols = np.arange(1 if graph.layers[s].has_constant else 0, e.shape[1])
    flat = (rows[:, None] * e.shape[1] + cols[None, :]).ravel()
    order = np.argsort(-e.ravel()[flat], kind="stable")
    return flat[order]


def edge_mask(graph: InteractionGraph, s: int, keep: int) -> np.ndarray:
    """Bool ``(n_out, n_in)``: the ``keep`` strongest edges (all when ``keep`` exceeds their
    number, as rib does), plus the constant input column."""
    order = edge_order(graph, s)
    if isinstance(keep, bool) or not isinstance(keep, int | np.integer) or keep < 0:
        raise DataError(f"keep must be an integer >= 0, got {keep!r}")
    mask = np.zeros(graph.edges[s].shape, dtype=bool)
    mask.ravel()[order[:keep]] = True
    if graph.layers[s].has_constant:
        mask[:, 0] = True
    return mask


class _Section:
    """Equations (2)–(3) for one section and one mask."""

    def __init__(self, b_in: Basis, b_out: Basis, mask: np.ndarray, mode: Mode, dev: Any):
        if mask.shape != (b_out.n_nodes, b_in.n_nodes):
            raise ShapeError(
                f"edges of {b_in.name!r} -> {b_out.name!r} have shape {mask.shape} but the "
                f"bases have {b_out.n_nodes} and {b_in.n_nodes} nodes (bases of another graph?)"
            )
        self.b_in, self.b_out = b_in.to(dev), b_out.to(dev)
        self.t = targets(b_in, mode).to(dev)
        rows, inverse = np.unique(mask, axis=0, return_inverse=True)
        self.rows = torch.as_tensor(rows, device=dev)  # unique mask rows (g, n_in)
        self.groups = [torch.as_tensor(np.flatnonzero(inverse.ravel() == g), device=dev)
                       for g in range(rows.shape[0])]  # fmt: skip

    def inputs(self, acts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``(g * batch, ..., d)``: the input of eq. (2) for each mask row, row-major."""
        x = acts.to(torch.float64)
        f_hat = self.b_in.transform(x)
        d = self.b_in.dim
        vals = []
        for row in rows:
            drop = ~row
            delta = (self.t[drop] - f_hat[..., drop]) @ self.b_in.C_pinv[drop, :d]
            vals.append(x + delta)
        return torch.cat(vals).to(acts.dtype)


def _section_output(
    forward: Forward, sec: _Section, x: torch.Tensor, acts: dict[str, torch.Tensor],
    layouts: dict[str, Any], lo: str, hi: str, max_rows: int,
) -> torch.Tensor:  # fmt: skip
    """``f^H'`` of eq. (3) for one batch."""
    batch = x.shape[0]
    clean_hi = acts[hi]
    new_hat = sec.b_out.transform(clean_hi).clone()
    old_hat = new_hat.clone()
    per = max(1, max_rows // batch)
    for start in range(0, len(sec.groups), per):
        rows = sec.rows[start : start + per]
        value = sec.inputs(acts[lo], rows)
        xs = x.repeat((rows.shape[0],) + (1,) * (x.ndim - 1))
        got = forward.inject(xs, lo, value, layouts[lo], hi)
        got_hat = sec.b_out.transform(got).reshape(rows.shape[0], *new_hat.shape)
        for g in range(rows.shape[0]):
            idx = sec.groups[start + g]
            new_hat[..., idx] = got_hat[g][..., idx]
    d = sec.b_out.dim
    delta = (new_hat - old_hat) @ sec.b_out.C_pinv[:, :d]
    return (clean_hi.to(torch.float64) + delta).to(clean_hi.dtype)


def _evaluate(
    model: nn.Module, data: Any, graph: InteractionGraph, bases: Any, plan: dict[int, list[int]],
    metric: str | MetricFn, mode: Mode, dtype: torch.dtype, device: Any,
    batch_size: int | None, max_rows: int,
) -> tuple[dict[int, list[float]], float, int]:  # fmt: skip
    """Metric for each section ``s`` and each keep in ``plan[s]`` (one pass over the data)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise DataError(f"max_rows must be an int >= 1, got {max_rows!r}")
    names = [layer.name for layer in graph.layers]
    table = check_bases(bases, names)
    model, dev = prepare_model(model, dtype, device)
    forward = Forward(model, [n for n in names if n != OUTPUT])
    secs = {s: [_Section(table[names[s]], table[names[s + 1]], edge_mask(graph, s, k), mode, dev)
                for k in keeps] for s, keeps in plan.items()}  # fmt: skip
    base = make_accumulator(metric)
    accs = {s: [make_accumulator(metric) for _ in keeps] for s, keeps in plan.items()}
    n = 0
    for b, (x, y) in enumerate(labelled_batches(data, batch_size, dev, dtype)):
        acts, layouts, out = forward.clean(x)
        acts[OUTPUT] = out
        if b == 0:
            for name in names:
                forward.width(name, acts, table[name])
        n += x.shape[0]
        base.update(out, y, out)
        for s, sec_list in secs.items():
            lo, hi = names[s], names[s + 1]
            for k, sec in enumerate(sec_list):
                new_hi = _section_output(forward, sec, x, acts, layouts, lo, hi, max_rows)
                result = (
                    new_hi if hi == OUTPUT else forward.inject(x, hi, new_hi, layouts[hi], OUTPUT)
                )
                accs[s][k].update(result, y, out)
    return {s: [a.value() for a in v] for s, v in accs.items()}, base.value(), n


def edge_ablation(
    model: nn.Module,
    data: Any,
    graph: InteractionGraph,
    keep: int | Sequence[int],
    *,
    bases: Sequence[Basis] | Mapping[str, Basis],
    section: int | str | None = None,
    metric: str | MetricFn = "accuracy",
    mode: Mode = "zero",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> EdgeAblation:
    """Metric with only the ``keep`` strongest edges of a section, equations (2)–(3).

    Parameters
    ----------
    graph : the interaction graph whose edges rank the pairs (from :func:`interbasis.build_graph`).
    keep : number(s) of edges kept (``>= 0``; more than a section has keeps all of them).
    bases : the bases the graph was built in (the graph does not store them).
    section : one section (index, or the name of its input layer); ``None`` = every
        section, one at a time (the others unablated).
    metric, mode, dtype, device, batch_size : as in :func:`ablation_curve`.
    max_rows : rows (samples × mask rows) per stacked forward pass.
    """
    check_metric(metric)
    check_mode(mode, "keep")
    if isinstance(keep, int | np.integer):
        keeps: tuple[Any, ...] = (keep,)
    elif isinstance(keep, Sequence | np.ndarray) and not isinstance(keep, str):
        keeps = tuple(keep)
    else:
        raise DataError(f"keep must be an int or a sequence of ints, got {keep!r}")
    if not keeps:
        raise DataError("keep is empty: give one or more numbers of edges to keep")
    sections = _sections(graph, section)
    for s in sections:
        for k in keeps:
            edge_mask(graph, s, k)  # validates the range before any forward pass
    values, base, n = _evaluate(
        model, data, graph, bases, {s: list(keeps) for s in sections}, metric, mode, dtype,
        device, batch_size, max_rows,
    )  # fmt: skip
    names = [layer.name for layer in graph.layers]
    return EdgeAblation(
        tuple(int(k) for k in keeps),
        {names[s]: np.array(values[s]) for s in sections},
        {names[s]: int(edge_order(graph, s).size) for s in sections},
        base, dict(mode=mode, dtype=str(dtype), n_samples=n),
    )  # fmt: skip


def log_midpoint(lo: int, hi: int) -> int:
    """Next keep to try between a failing ``lo`` and a passing ``hi`` (``hi - lo >= 2``)."""
    mid = round(math.sqrt((lo + 1) * (hi + 1))) - 1
    return min(max(mid, lo + 1), hi - 1)


def edges_needed(
    model: nn.Module,
    data: Any,
    graph: InteractionGraph,
    tolerance: float,
    *,
    bases: Sequence[Basis] | Mapping[str, Basis],
    section: int | str | None = None,
    metric: str | MetricFn = "accuracy",
    mode: Mode = "zero",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> EdgesNeeded:
    """Smallest number of kept edges per section with ``|metric - baseline| <= tolerance``.

    Log-midpoint bisection (module docstring); each step is one pass over the data. All
    edges kept is exact (distance 0), so the answer exists; it is the linear scan's when the
    distance to the baseline falls monotonically as edges are added.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise DataError(f"tolerance must be a number >= 0, got {tolerance!r}")
    check_metric(metric)
    check_mode(mode, "keep")
    names = [layer.name for layer in graph.layers]
    args = (metric, mode, dtype, device, batch_size, max_rows)
    needed, evaluated, n_edges = {}, {}, {}
    baseline = float("nan")
    for s in _sections(graph, section):
        total = int(edge_order(graph, s).size)
        seen: dict[int, float] = {}

        def value(k: int, s: int = s, seen: dict[int, float] = seen) -> float:
            nonlocal baseline
            if k not in seen:
                vals, baseline, _ = _evaluate(model, data, graph, bases, {s: [k]}, *args)
                seen[k] = vals[s][0]
            return seen[k]

        ok = lambda k: abs(value(k) - baseline) <= tolerance  # noqa: E731
        lo, hi = 0, total
        if ok(0):
            hi = 0
        while hi - lo > 1:
            mid = log_midpoint(lo, hi)
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        needed[names[s]], evaluated[names[s]], n_edges[names[s]] = hi, dict(seen), total
    return EdgesNeeded(
        needed, n_edges, evaluated, baseline, float(tolerance),
        dict(mode=mode, dtype=str(dtype), bisection="log-midpoint"),
    )  # fmt: skip
