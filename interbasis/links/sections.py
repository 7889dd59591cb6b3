"""Sections of the atlas report: plain dictionaries of numbers (the atlas JSON).

Each function takes the objects of one model (its :class:`~interbasis.links.series.
ModelSummary`: bases, graph, modules, Hessian eigenpairs) and returns the part of the report
its view contributes; :mod:`.atlas` assembles them and :mod:`.report` renders them.

The sections that run the model take ``train_mode`` (:mod:`interbasis.train_mode`; default
``"eval"``: a model in train mode is analysed as an eval-mode copy with a warning, ``"error"``
refuses it, ``"keep"`` analyses it as it is). :mod:`.atlas` applies the policy once per model
and may pass the model it analyses with ``train_mode="keep"``.

Distributed: the sections that sum over data take ``process_group`` (``None``: the
initialised default group, if any) — the Hessian of the graph stages is all-reduced, D_LR's
activations are all-gathered; the activation Grams of :func:`.hessian_graph_links` and the
null space's Grams shard over the default group by themselves. Every rank returns the same
section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from interbasis.curvature import ParamLayout, numerical_floor
from interbasis.errors import DataError
from interbasis.links.dlr import graph_dlr
from interbasis.links.edge import EdgeGraphLinks, FourierGrid, edge_graph_links
from interbasis.links.hessian import (
    CATEGORIES,
    HessianGraphLinks,
    hessian_eigenpairs,
    hessian_graph_links,
)
from interbasis.links.jvp import Layout, layout_size
from interbasis.links.nullspace import behavioural_null_space
from interbasis.links.series import ModelSummary
from interbasis.links.stages import GraphStage, find_graph_stages
from interbasis.spectral_edge import ATTENTION_WEIGHTS, random_directions
from interbasis.train_mode import TrainMode, analysed_model

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AtlasData:
    """Data of an atlas.

    Attributes
    ----------
    inputs : inputs for the graph, modules and D_LR (e.g. the train split).
    loss_fn, loss_data : the loss whose Hessian is analysed and its ``(inputs, targets)``.
    grid_inputs, grid : the full ``Z_p^2`` grid of a modular task (Fourier labels); optional.
    description : how the data was chosen (shown with the settings).
    loss_batch_size : cut ``loss_data`` into batches of this many samples for the Hessian, so
        that ranks of a process group split it (``None``: one batch). Only for a loss that
        averages over its batch (cross-entropy and MSE with their default ``mean``): the
        Hessian is then ``sum_b (n_b / N) H_b``, the same as on the whole batch.
    """

    inputs: torch.Tensor
    loss_fn: LossFn
    loss_data: tuple[torch.Tensor, torch.Tensor]
    grid_inputs: torch.Tensor | None = None
    grid: FourierGrid | None = None
    description: dict[str, Any] = field(default_factory=dict)
    loss_batch_size: int | None = None

    def hessian_data(self) -> Any:
        """``loss_data`` as the Hessian takes it: one pair, or pairs of ``loss_batch_size``."""
        if self.loss_batch_size is None:
            return self.loss_data
        x, y = self.loss_data
        size = self.loss_batch_size
        return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


@dataclass(frozen=True)
class AtlasSettings:
    """Every choice the atlas makes (all of it goes into the report)."""

    node_layers: tuple[str, ...]
    k: int = 5  # top Hessian eigenpairs
    seed: int = 0  # Leiden, Lanczos start vector, random directions
    stability_seeds: tuple[int, ...] = (0, 1, 2)
    edge_params: str = ATTENTION_WEIGHTS
    window: int = 10
    n_edge: int = 3
    n_random: int = 8
    top_nodes: int = 5
    max_checkpoints: int = 12
    lanczos_tol: float = 1e-8  # ARPACK relative accuracy (values shown with 4 digits)
    max_dense: int = 2000  # exact (dense) Hessians up to this many parameters

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _mod(m: int) -> str:
    return f"m{m}"


def graph_section(s: ModelSummary, notes: Sequence[str]) -> dict[str, Any]:
    e90, e99 = s.graph.edges_needed(0.9), s.graph.edges_needed(0.99)
    layers = []
    for i, layer in enumerate(s.graph.layers):
        n = int(layer.size) - int(np.asarray(layer.is_constant).sum())  # as graph_size
        row: dict[str, Any] = {"layer": layer.name, "nodes": n}
        row["edges_90_to_next"] = e90[i] if i < len(e90) else None
        row["edges_99_to_next"] = e99[i] if i < len(e99) else None
        layers.append(row)
    num = s.numbers
    keys = ("graph_size", "n_modules", "module_sizes", "unassigned", "stability")
    return {"layers": layers, **{k: num[k] for k in keys}, "stage_notes": list(notes)}


def _share_rows(hl: HessianGraphLinks, index: Sequence[int]) -> list[dict[str, Any]]:
    top, share = hl.top_module()
    rows = []
    for i in index:
        rows.append({
            "eigenvector": int(i) + 1, "lambda": float(hl.eigenvalues[i]),
            "coverage": float(hl.coverage[i]),
            "top_module": _mod(int(top[i])) if top[i] >= 0 else "none",
            "top_share": float(share[i]), "between": float(hl.between[i]),
            "unassigned": float(hl.unassigned[i]), "invisible": float(hl.invisible[i]),
            "outside": float(hl.outside[i]),
        })  # fmt: skip
    return rows


def _top_bottom(n: int, k: int) -> list[int]:
    """The first ``k`` and last ``k`` of ``n`` eigenpairs (all of them when ``n <= 2k``)."""
    return list(range(min(k, n))) + list(range(max(k, n - k), n))


def _links_block(hl: HessianGraphLinks, index: Sequence[int]) -> dict[str, Any]:
    """Rows and shares of the eigenpairs ``index``; masses over *all* eigenpairs given."""
    columns = [_mod(m) for m in hl.modules] + list(CATEGORIES)
    mass = hl.curvature_mass()
    return {
        "rows": _share_rows(hl, index),
        "columns": columns,
        "shares": hl.table()[list(index)].tolist(),
        "mass": [{"category": c, "mass": v} for c, v in zip(columns, mass.values(), strict=True)],
        "sum_lambda": float(np.sum(hl.eigenvalues)),
    }


def hessian_section(
    model: nn.Module,
    s: ModelSummary,
    data: AtlasData,
    settings: AtlasSettings,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> dict[str, Any]:
    """Full-model top eigenpairs, the Hessian block of the graph stages, the null space."""
    model = analysed_model(model, train_mode, "Hessian section")  # "error" raises here
    names = [b.name for b in s.bases]
    stages, notes = find_graph_stages(model, data.inputs, names, train_mode=train_mode)
    member = s.partition.membership
    pairs = s.eigenpairs
    full = hessian_graph_links(
        model,
        data.inputs,
        s.bases,
        stages,
        pairs.values,
        pairs.vectors,
        ParamLayout.from_model(model),
        member,
        train_mode=train_mode,
    )
    out: dict[str, Any] = {
        "method": s.numbers["hessian_method"],
        "stages": [f"{st.input} -> {st.output}" for st in stages],
        "stage_notes": notes,
        "full": _links_block(full, _top_bottom(len(full.eigenvalues), settings.k)),
    }
    out["block"] = (
        _stage_block(model, s, data, settings, stages, train_mode, process_group)
        if stages
        else None
    )
    n_params, max_dense = ParamLayout.from_model(model).size, settings.max_dense
    try:
        if n_params > max_dense:
            raise DataError("too many parameters")
        null = behavioural_null_space(
            model, data.inputs, max_dense=max_dense, train_mode=train_mode
        )
    except DataError as err:
        reason = (
            "too many parameters for the exact behavioural Hessian"
            if n_params > max_dense
            else "the model is not a chain of Linear and ReLU modules"
        )
        out["null_space"] = {"note": f"not computed: {reason}", "n_params": n_params,
                             "max_dense": max_dense, "error": str(err)}  # fmt: skip
    else:
        att = null.attribution
        out["null_space"] = {
            "n_params": null.n_params, "nullity": null.nullity,
            "largest_zero": null.largest_zero, "smallest_nonzero": null.smallest_nonzero,
            "union_dim": att.union_dim, "min_union_share": float(att.union.min(initial=1.0)),
            "mechanisms": [
                {"mechanism": m, "span_dim": d, "dominates": null.counts()[m]}
                for m, d in zip(att.mechanisms, att.dims, strict=True)
            ] + [{"mechanism": "unexplained", "dominates": null.counts()["unexplained"]}],
        }  # fmt: skip
    return out


def _stage_block(
    model: nn.Module,
    s: ModelSummary,
    data: AtlasData,
    settings: AtlasSettings,
    stages: Sequence[GraphStage],
    train_mode: TrainMode,
    process_group: Any = None,
) -> dict[str, Any]:
    """The Hessian restricted to the graph stages' parameters (coverage 1 by construction)."""
    covered = [p for st in stages for p in st.params]
    pairs, method = hessian_eigenpairs(
        model,
        data.loss_fn,
        data.hessian_data(),
        settings.k,
        params=covered,
        seed=settings.seed,
        tol=settings.lanczos_tol,
        train_mode=train_mode,
        process_group=process_group,
    )
    layout = ParamLayout.from_model(model, covered)
    hl = hessian_graph_links(
        model,
        data.inputs,
        s.bases,
        stages,
        pairs.values,
        pairs.vectors,
        layout,
        s.partition.membership,
        train_mode=train_mode,
    )
    index = _top_bottom(len(hl.eigenvalues), settings.k)
    block = {"method": method, "n_params": layout.size, **_links_block(hl, index)}
    if method == "dense":
        floor = numerical_floor(pairs.values, layout.size)
        zero = np.abs(hl.eigenvalues) <= floor
        block.update(
            trace=float(np.sum(hl.eigenvalues)), floor=floor, zero_count=int(zero.sum()),
            zero_invisible=float(hl.invisible[zero].mean()) if zero.any() else None,
        )  # fmt: skip
    return block


def dlr_section(
    model: nn.Module,
    s: ModelSummary,
    data: AtlasData,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> dict[str, Any]:
    dl = graph_dlr(
        model, data.inputs, s.bases, s.partition.membership, train_mode=train_mode,
        process_group=process_group,
    )  # fmt: skip
    nodes = {b.name: b.n_nodes - int(b.has_constant) for b in s.bases}
    return {
        "mode": dl.mode,
        "layers": [
            {"layer": n, "nodes": nodes[n], "d_lr_nodes": v, "d_lr_neurons": dl.neurons[n]}
            for n, v in dl.layers.items()
        ],
        "modules": [
            {"module": _mod(m), "nodes": dl.module_sizes[m], "d_lr": v}
            for m, v in dl.modules.items()
        ],
    }


def _edge_rows(el: EdgeGraphLinks, names: Sequence[str], layer: str) -> list[dict[str, Any]]:
    rows = []
    for r, name in enumerate(names):
        row: dict[str, Any] = {"direction": name}
        if el.modules:
            best = int(np.argmax(el.module_moved[r]))
            row.update(
                top_module=_mod(el.modules[best]), module_moved=float(el.module_moved[r, best])
            )
        row["top_nodes"] = " ".join(n for n, _ in el.top_nodes[r])
        row["top_nodes_moved"] = [v for _, v in el.top_nodes[r]]
        if layer in el.match:
            row.update(
                mode_frequency=int(el.mode_frequency[layer][r]),
                mode_share=float(el.mode_share[layer][r]),
                match=float(el.match[layer][r]),
            )
        rows.append(row)
    return rows


def edge_section(
    model: nn.Module,
    s: ModelSummary,
    data: AtlasData,
    settings: AtlasSettings,
    directions: torch.Tensor,
    layout: Layout,
    source: str,
    train_mode: TrainMode = "eval",
) -> dict[str, Any]:
    controls = random_directions(layout_size(layout), settings.n_random, settings.seed)
    dirs = torch.cat([torch.as_tensor(directions, dtype=torch.float64), controls])
    names = [f"direction {i + 1}" for i in range(len(directions))]
    names += [f"random {i + 1}" for i in range(settings.n_random)]
    edge_data = data.grid_inputs if data.grid is not None else data.inputs
    el = edge_graph_links(
        model, edge_data, s.bases, dirs, layout, s.partition.membership, grid=data.grid,
        top=settings.top_nodes, train_mode=train_mode,
    )  # fmt: skip
    layer = [b.name for b in s.bases if b.name != "output"][-1]
    rows = _edge_rows(el, names, layer)
    out: dict[str, Any] = {"source": source, "fourier_layer": layer, "rows": rows}
    out["modules"] = [_mod(m) for m in el.modules]
    out["module_moved"] = el.module_moved.tolist()
    if layer in el.match:
        ctrl = el.match[layer][len(directions) :]
        out["controls"] = {
            "match_mean": float(np.nanmean(ctrl)),
            "match_std": float(np.nanstd(ctrl)),
        }
        out["labels"] = {n: el.labels[n].tolist() for n in el.labels}
    return out
