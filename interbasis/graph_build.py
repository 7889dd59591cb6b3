"""build_graph: model + data -> bases -> edges -> :class:`graphs.InteractionGraph`."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from graphs import InteractionGraph, NodeLayer
from interbasis.basis import Basis, Truncation, interaction_basis
from interbasis.build import (
    BasisKind,
    FeatureDim,
    KeepPositions,
    Run,
    TrainMode,
    accumulate_activation_grams,
    bases_for_run,
    basis_parts,
    check_basis_options,
    check_int,
    final_basis_of,
    node_map,
    prepare,
    section_gram,
)
from interbasis.capture import OutputSelector, capture
from interbasis.distributed import SplitOver
from interbasis.edges import (
    EDGE_KINDS,
    EdgeKind,
    SquaredEdges,
    functional_edges,
    squared_edges,
    weight_edges,
)
from interbasis.errors import DataError, ShapeError
from interbasis.jacobian_store import JacobianStore
from interbasis.jacobians import DEFAULT_MEMORY_BUDGET, affine_jacobian, is_affine_on
from interbasis.passes import Mode
from interbasis.sources import Sources, check_sources
from interbasis.stage_cache import CacheDir, basis_stage, stage


def edges_stage(
    run: Run, b_in: Basis, b_out: Basis, options: dict[str, Any], compute: Any
) -> tuple[np.ndarray, float | None]:
    """Edges from ``b_in`` to ``b_out`` as ``compute() -> (E, relative standard error)``, from the
    stage cache when there (keyed by both bases and the edge options)."""

    def value(_: Any) -> dict[str, Any]:
        E, err = compute()
        return {"E": torch.from_numpy(E), "rse": err}

    parts = {"C_in": b_in.C, "C_out": b_out.C, **options}
    v, _ = stage(run.cache, f"edges {b_in.name}", parts, value)
    return v["E"].numpy(), v["rse"]


def edge_options(
    run: Run, edges: str, n_points: int, edge_sources: Sources | None
) -> dict[str, Any]:
    """The options an edge matrix depends on: one stage-cache key, whichever pass made it."""
    return {
        "edges": edges,
        "n_points": n_points if edges == "functional" else None,
        "sources": edge_sources.as_dict() if edge_sources is not None else None,
        "mode": run.mode,
    }


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


def check_affine_sections(run: Run) -> None:
    """``edges="weight"`` needs affine sections: refuse one that is not affine on the first
    batch before any pass over the data (:func:`interbasis.edges.weight_edges` checks every
    batch again). The check projects each section's output on a few random directions."""
    x = next(iter(run.batches()))
    with torch.no_grad():
        acts, layouts = capture(
            run.model, x, run.modules, run.output, run.feature_dims, batch_index=0
        )
    g = torch.Generator().manual_seed(0)
    for lo, hi in itertools.pairwise(run.names):
        f, width = acts[lo].detach(), acts[hi].shape[-1]
        out_map = torch.randn(width, min(width, 4), generator=g, dtype=torch.float64)
        out_map = out_map.to(f.device, f.dtype)
        section = run.section(lo, hi)
        with torch.no_grad():
            J = affine_jacobian(section, x, f, layouts[lo], out_map)
            affine = is_affine_on(section, x, f, layouts[lo], out_map, J)
        if not affine:
            raise DataError(
                f'edges="weight" needs an affine section, but {lo!r} -> {hi!r} is not affine '
                'on the first batch of the data; use edges="squared" (checked before any '
                "pass over the data)"
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


#: bytes of Jacobians kept in memory per section before they spill to disk: the scale
#: benchmark's builds ran as fast with 256 MiB as with 1 GiB, 0.5-1.3 GiB lighter
DEFAULT_JACOBIAN_CACHE = 256 * 2**20


def _exact(edges: Any, *args: Any, **kwargs: Any) -> tuple[np.ndarray, float]:
    return edges(*args, **kwargs), 0.0


def _value_and_error(acc: SquaredEdges, name: str) -> tuple[np.ndarray, float | None]:
    return acc.value(name), acc.relative_standard_error


def _local_section(
    run: Run,
    i: int,
    bases: dict[str, Basis],
    matrices: dict[int, np.ndarray],
    edge_errors: dict[str, float | None],
    cache: JacobianStore,
    reuse: bool,
    options: dict[str, Any],
    *,
    center: bool,
    fold_bias: bool,
    truncation: Truncation,
) -> None:
    """Node layer ``i``'s M and local basis (output side already in ``bases``), and its
    section's squared edges from the kept Jacobians where ``cache`` holds them all."""
    name, nxt = run.names[i], run.names[i + 1]
    g = run.grams[name]
    section = run.section(name, nxt)
    result, fresh = section_gram(
        run, name, nxt, node_map(bases[nxt]), consumers=[cache] if reuse else []
    )
    # every rank must take the same branch below (the edges' all-reduce)
    cache.overflow = run.shard.any(cache.overflow or not fresh)
    run.estimator_error[name] = result.relative_standard_error
    gram = g.covariance if center else g.second_moment
    bases[name] = basis_stage(
        run.cache, basis_parts(run, name, result.M, center=center, fold_bias=fold_bias,
                               truncation=truncation),
        partial(interaction_basis, name, g.mean, gram, result.M, center=center,
                fold_bias=fold_bias, truncation=truncation),
        run.device,
    )  # fmt: skip
    if result.affine is not None:  # one Jacobian serves every sample
        matrices[i], edge_errors[name] = edges_stage(
            run, bases[name], bases[nxt], options,
            partial(_exact, weight_edges, section, run.batches(f"edges {name}"),
                    bases[name], bases[nxt], jacobian=result.affine),
        )  # fmt: skip
    elif reuse and not cache.overflow:
        acc = SquaredEdges(bases[name], bases[nxt])
        for batch, acts_in, chunk in cache.replay(run.device):
            acc.add(batch, acts_in, chunk)
        run.shard.reduce_squared_edges(acc)
        matrices[i], edge_errors[name] = edges_stage(
            run, bases[name], bases[nxt], options, partial(_value_and_error, acc, name)
        )


def _local_bases_and_squared_edges(
    run: Run,
    matrices: dict[int, np.ndarray],
    center: bool,
    fold_bias: bool,
    truncation: Truncation,
    final_basis: str,
    cache_limit: int,
    edge_sources: Sources | None,
    edge_errors: dict[str, float | None],
) -> list[Basis]:
    """Local interaction bases, output first, with each section's squared edges computed
    from the same Jacobians as its M when they fit in the cache (one pass per section) and
    the M's output units suit the edges (the same sources, none over hidden directions)."""
    names = run.names
    bases = {names[-1]: basis_stage(
        run.cache, basis_parts(run, names[-1], None, final=final_basis, center=center,
                               truncation=truncation),
        lambda: final_basis_of(run, names[-1], final_basis, center, truncation), run.device,
    )}  # fmt: skip
    reuse = edge_sources == run.sources and (run.sources is None or run.sources.hidden is None)
    options = edge_options(run, "squared", 16, edge_sources)
    for i in range(len(names) - 2, -1, -1):
        with JacobianStore(cache_limit if reuse else 0) as cache:  # closes the spill file
            _local_section(run, i, bases, matrices, edge_errors, cache, reuse, options,
                           center=center, fold_bias=fold_bias, truncation=truncation)  # fmt: skip
    return [bases[n] for n in names]


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
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    scope: Literal["local", "global"] = "local",
    final_basis: Literal["neuron", "pca"] = "neuron",
    n_points: int = 16,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    jacobian_cache: int = DEFAULT_JACOBIAN_CACHE,
    sources: Sources | None = None,
    edge_sources: Sources | None = None,
    mode: Mode = "auto",
    output: OutputSelector | None = None,
    keep_positions: KeepPositions = None,
    train_mode: TrainMode = "eval",
    feature_dim: FeatureDim = None,
    process_group: Any = None,
    split_over: SplitOver = "data",
    cache_dir: str | os.PathLike[str] | CacheDir | None = None,
) -> InteractionGraph:
    """The interaction graph of a model on data (DESIGN §3 and §5).

    Parameters are those of :func:`interbasis.build_bases`, plus:

    edges : ``"squared"`` (default), ``"functional"`` (``n_points`` Gauss–Legendre points;
        absolute values stored) or ``"weight"`` (affine sections only: a section that is not
        affine on the first batch is refused before any pass over the data); see
        :mod:`interbasis.edges`.
    bases : precomputed bases for these node layers (e.g. from :func:`build_bases` or
        :func:`interbasis.load_bases`); then no basis is recomputed and ``basis`` and the
        basis options only describe them in the metadata.
    jacobian_cache : bytes of section Jacobians kept in memory between computing a layer's M
        and its squared edges (local interaction basis), which then need no second pass over
        the data (default 256 MiB). Beyond it they spill to a temporary file (``TMPDIR``; at
        most half the free disk space) and are read back chunk by chunk, so memory stays
        bounded and time linear whatever the dataset size (:mod:`interbasis.jacobian_store`);
        only past that are they recomputed. ``0`` keeps nothing and always recomputes.
    sources, edge_sources : :class:`interbasis.Sources` for unbiased stochastic estimates of
        M and of the squared edges (``edge_sources``: output positions only); ``None`` =
        exact. The relative standard error of each estimate (of ``tr M`` and of the total
        edge weight, from the spread of the source samples) is stored in
        ``metadata["estimator"]``.
    process_group, split_over, cache_dir : distributed builds and the stage cache, as in
        :func:`interbasis.build_bases`; every rank returns the same graph.

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
    >>> [e.shape for e in g.edges]  # "2" keeps the constant and the 2 directions the output sees
    [(3, 4), (2, 3)]
    """
    from interbasis import __version__

    check_basis_options(basis, scope, center, fold_bias, truncation, final_basis)
    if edges not in EDGE_KINDS:
        raise DataError(f"edges must be one of {EDGE_KINDS}, got {edges!r}")
    if not isinstance(node_layers, str) and len(node_layers) < 2:
        raise ShapeError(f"a graph needs at least two node layers, got {list(node_layers)}")
    check_int("n_points", n_points)
    check_int("jacobian_cache", jacobian_cache, minimum=0, allow_none=False)
    edge_sources = check_sources(edge_sources, "edge_sources", edges=True)
    if edge_sources is not None and edges != "squared":
        raise DataError(f'edge_sources applies to edges="squared", not edges={edges!r}')
    if edges == "weight" and split_over == "shards":
        raise DataError(
            'edges="weight" reads every batch on every rank, but with split_over="shards" each '
            'rank holds only its own; use edges="squared" (equal on affine sections)'
        )
    started = time.time()
    run = prepare(
        model, data, node_layers, dtype=dtype, device=device, batch_size=batch_size,
        progress=progress, memory_budget=memory_budget, output=output,
        keep_positions=keep_positions, sources=sources, mode=mode, train_mode=train_mode,
        feature_dim=feature_dim, process_group=process_group, split_over=split_over,
        cache_dir=cache_dir,
    )  # fmt: skip
    if edges == "weight":
        check_affine_sections(run)
    accumulate_activation_grams(run, check_cuts=True)
    names = run.names
    given = bases is not None
    matrices: dict[int, np.ndarray] = {}
    edge_errors: dict[str, float | None] = {}
    if bases is None and basis == "interaction" and scope == "local" and edges == "squared":
        bases = _local_bases_and_squared_edges(
            run, matrices, center, fold_bias, truncation, final_basis, jacobian_cache,
            edge_sources, edge_errors,
        )  # fmt: skip
    elif bases is None:
        bases = bases_for_run(run, basis, center, fold_bias, truncation, scope, final_basis)
    else:
        _check_bases(run, bases)
        bases = [b.to(run.device) for b in bases]
    options = edge_options(run, edges, n_points, edge_sources)
    for i, (lo, hi) in enumerate(itertools.pairwise(names)):
        if i in matrices:
            continue
        b_in, b_out = bases[i], bases[i + 1]
        section, batches = run.section(lo, hi), run.batches(f"edges {lo}")

        def compute(
            section: Any = section, batches: Any = batches, b_in: Basis = b_in,
            b_out: Basis = b_out,
        ) -> tuple[np.ndarray, float | None]:  # fmt: skip
            if edges == "squared":
                acc = SquaredEdges(b_in, b_out)
                E = squared_edges(section, batches, b_in, b_out, run.memory_budget,
                                  edge_sources, run.mode, acc, shard=run.shard)  # fmt: skip
                return E, acc.relative_standard_error
            if edges == "functional":
                return np.abs(
                    functional_edges(
                        section, batches, b_in, b_out, n_points, run.memory_budget, shard=run.shard
                    )
                ), None
            return weight_edges(section, batches, b_in, b_out), None

        matrices[i], err = edges_stage(run, b_in, b_out, options, compute)
        if edges == "squared":
            edge_errors[lo] = err
    layers = [node_layer(b, run.grams[b.name].covariance) for b in bases]
    metadata = {
        "interbasis_version": __version__,
        "model": _model_description(model),
        "node_layers": names,
        "basis": [b.kind for b in bases] if given else basis,
        "bases_given": given,
        "edges": edges,
        # options that made the bases (unknown when they were passed in)
        "center": None if given else center,
        "fold_bias": None if given else fold_bias,
        "truncation": None if given else truncation,
        "scope": None if given else scope,
        "final_basis": None if given else final_basis,
        "n_points": n_points if edges == "functional" else None,
        "dtype": str(dtype),
        "device": str(run.device),
        "batch_size": batch_size,
        "n_samples": run.n_samples,
        "mode": mode,
        "keep_positions": run.keep_positions or None,
        "distributed": {"world_size": run.shard.world, "split_over": run.shard.split_over},
        "estimator": {
            "sources": run.sources.as_dict() if run.sources is not None else None,
            "edge_sources": edge_sources.as_dict() if edge_sources is not None else None,
            # relative standard error of tr M per node layer and of the total edge weight
            # per section (named by its input layer), from the spread of the source samples
            "relative_standard_error": {"M": dict(run.estimator_error), "edges": edge_errors},
        },
        "seconds": round(time.time() - started, 3),
    }
    return InteractionGraph(layers, [matrices[i] for i in range(len(names) - 1)], metadata)
