"""build_graph: model + data -> bases -> edges -> :class:`graphs.InteractionGraph`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from graphs import InteractionGraph, NodeLayer
from interbasis.basis import Basis, Truncation
from interbasis.build import (
    BasisKind,
    Run,
    accumulate_activation_grams,
    bases_for_run,
    check_basis_options,
    prepare,
)
from interbasis.edges import EDGE_KINDS, EdgeKind, functional_edges, squared_edges, weight_edges
from interbasis.errors import ShapeError
from interbasis.grams import DEFAULT_MEMORY_BUDGET


def _check_bases(run: Run, bases: Sequence[Basis]) -> None:
    names = run.names
    if len(bases) != len(names):
        raise ShapeError(f"got {len(bases)} bases for {len(names)} node layers {names}")
    for b, name in zip(bases, names, strict=True):
        if b.name != name:
            raise ShapeError(f"bases are for {[x.name for x in bases]}, node layers are {names}")
        width = run.grams[name].dim
        if b.dim != width:
            raise ShapeError(
                f"basis of {name!r} has width {b.dim} but the model's {name!r} has width "
                f"{width} (bases from another model?)"
            )


def node_layer(basis: Basis, covariance: torch.Tensor) -> NodeLayer:
    """Graph-side description of one layer; variance of each basis function on the data."""
    A = basis.C[:-1] if basis.has_constant else basis.C
    var = torch.einsum("dn,de,en->n", A, covariance.to(A.device), A)
    is_constant = np.zeros(basis.n_nodes, dtype=bool)
    if basis.has_constant:
        var[0] = 0.0
        is_constant[0] = True
    return NodeLayer(
        name=basis.name,
        size=basis.n_nodes,
        eigenvalues=basis.eigenvalues.detach().cpu().numpy(),
        is_constant=is_constant,
        activation_variance=var.clamp_min(0).cpu().numpy(),
    )


def _model_description(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "config": repr(cfg) if cfg is not None else None,
    }


def build_graph(
    model: nn.Module,
    data: Any,
    node_layers: Sequence[str],
    basis: BasisKind = "interaction",
    edges: EdgeKind = "squared",
    bases: Sequence[Basis] | None = None,
    *,
    center: bool = True,
    fold_bias: bool = True,
    truncation: Truncation = "auto",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    scope: Literal["local", "global"] = "local",
    final_basis: Literal["neuron", "pca"] = "neuron",
    n_points: int = 16,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> InteractionGraph:
    """The interaction graph of a model on data (DESIGN §3 and §5).

    Parameters are those of :func:`interbasis.build_bases`, plus:

    edges : ``"squared"`` (default), ``"functional"`` (``n_points`` Gauss–Legendre points;
        absolute values stored) or ``"weight"`` (linear sections only); see
        :mod:`interbasis.edges`.
    bases : precomputed bases for these node layers (e.g. from :func:`build_bases` or
        :func:`interbasis.load_bases`); then no basis is recomputed and ``basis`` and the
        basis options only describe them in the metadata.

    Returns
    -------
    graphs.InteractionGraph
        Layers in forward order; ``edges[i]`` of shape ``(n_{i+1}, n_i)``; node ids
        ``"{layer}:{index}"``; constant nodes (index 0) with zero edges; ``metadata`` holds
        the model description, every option and the package version.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> g = build_graph(net.eval(), torch.randn(64, 3), ["0", "2", "output"], progress=False)
    >>> [e.shape for e in g.edges]
    [(5, 4), (2, 5)]
    """
    from interbasis import __version__

    check_basis_options(basis, scope, center, fold_bias)
    if edges not in EDGE_KINDS:
        raise ValueError(f"edges must be one of {EDGE_KINDS}, got {edges!r}")
    if len(node_layers) < 2:
        raise ShapeError(f"a graph needs at least two node layers, got {list(node_layers)}")
    started = time.time()
    run = prepare(
        model, data, node_layers, dtype=dtype, device=device, batch_size=batch_size,
        progress=progress, memory_budget=memory_budget,
    )  # fmt: skip
    accumulate_activation_grams(run, check_cuts=True)
    if bases is None:
        bases = bases_for_run(run, basis, center, fold_bias, truncation, scope, final_basis)
    else:
        _check_bases(run, bases)
    names = run.names
    matrices = []
    for lo, hi in itertools.pairwise(names):
        b_in, b_out = bases[names.index(lo)], bases[names.index(hi)]
        args = (run.model, run.batches(f"edges {lo}"), run.injectable(lo), run.module(hi))
        if edges == "squared":
            E = squared_edges(*args, b_in, b_out, run.memory_budget)
        elif edges == "functional":
            E = np.abs(functional_edges(*args, b_in, b_out, n_points, run.memory_budget))
        else:
            E = weight_edges(*args, b_in, b_out)
        matrices.append(E)
    layers = [node_layer(b, run.grams[b.name].covariance) for b in bases]
    n_samples = sum(int(x.shape[0]) for x in run.batches())
    metadata = {
        "interbasis_version": __version__,
        "model": _model_description(model),
        "node_layers": names,
        "basis": basis if bases is None else [b.kind for b in bases],
        "edges": edges,
        "center": center,
        "fold_bias": fold_bias,
        "truncation": truncation,
        "scope": scope,
        "final_basis": final_basis,
        "n_points": n_points if edges == "functional" else None,
        "dtype": str(dtype),
        "device": str(run.device),
        "batch_size": batch_size,
        "n_samples": n_samples,
        "seconds": round(time.time() - started, 3),
    }
    return InteractionGraph(layers, matrices, metadata)
