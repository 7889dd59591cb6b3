"""A training run as a series of checkpoints, and one summary per checkpoint.

:func:`load_series` reads the run directory written by the experiments' training harness
(``<run>/checkpoints/step_{step:07d}.pt``, ``<run>/metrics.jsonl``) without building a single
model: each checkpoint's header is memory-mapped to compare architectures (model spec and
tensor shapes), and models are built on demand by a ``loader`` (the library does not import
``experiments``; pass ``experiments.checkpoint_io.load_checkpoint``).

:func:`summarize_model` gives the numbers the atlas puts on one time axis: graph size (nodes
with Λ above the truncation floor), number of Leiden modules and their stability (mean
pairwise ARI over seeds and nearby resolutions, :func:`graphs.stability`), D_LR of the
readout features, the top Hessian eigenvalues. :func:`spectral_gaps` adds the spectral edge
of the window of parameter updates between consecutive checkpoints (seed 003, thesis
convention: uncentred window of the last ``W`` updates, gap ``σ_1/σ_2``, ``k* = argmax_j
σ_j/σ_{j+1}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphs import InteractionGraph, Partition, find_modules, stability
from interbasis.basis import Basis
from interbasis.build import build_bases
from interbasis.curvature import Eigenpairs
from interbasis.errors import DataError, FormatError
from interbasis.graph_build import build_graph
from interbasis.links.dlr import graph_dlr, layer_activations
from interbasis.links.hessian import hessian_eigenpairs
from interbasis.richness import d_lr
from interbasis.spectral_edge import ATTENTION_WEIGHTS, window_spectrum
from interbasis.train_mode import TrainMode, analysed_model

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
Loader = Callable[[Path], nn.Module]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _header(path: Path) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """(model spec or None, name -> shape) of a checkpoint, read memory-mapped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise FormatError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    state = obj.get("model_state", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise FormatError(
            f"{path} holds no state dict of tensors (a {type(obj).__name__}): expected a "
            "checkpoint of the training harness or a model state_dict"
        )
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return (obj.get("model") if "model_state" in obj else None), shapes


def _first_difference(a: Any, b: Any, where: str = "model spec") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{where}: key {key!r} only in {'the second' if key in b else 'the first'}"
            diff = _first_difference(a[key], b[key], f"{where}.{key}")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def _shape_difference(a: dict[str, tuple[int, ...]], b: dict[str, tuple[int, ...]]) -> str | None:
    for key in a:
        if key not in b:
            return f"tensor {key!r} is missing"
        if a[key] != b[key]:
            return f"tensor {key!r} has shape {b[key]} instead of {a[key]}"
    extra = [k for k in b if k not in a]
    return f"extra tensor {extra[0]!r}" if extra else None


@dataclass(frozen=True)
class CheckpointSeries:
    """Checkpoints of one training run, loaded lazily (see :func:`load_series`).

    Attributes
    ----------
    run_dir : the run directory.
    steps, paths : checkpoint steps (ascending) and files.
    metrics : the records of ``metrics.jsonl`` (evaluation steps), possibly empty.
    grokking_step, memorization_step : from the last metrics record (None if never reached).
    loader : ``path -> model``; None = models cannot be built (``state`` still works).
    """

    run_dir: Path
    steps: tuple[int, ...]
    paths: tuple[Path, ...]
    metrics: tuple[dict[str, Any], ...] = ()
    grokking_step: int | None = None
    memorization_step: int | None = None
    loader: Loader | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.steps)

    def model(self, i: int) -> nn.Module:
        """The model of checkpoint ``i`` (built by ``loader`` on every call)."""
        if self.loader is None:
            raise DataError(
                "this series has no loader; pass load_series(run_dir, loader=...) — e.g. "
                "experiments.checkpoint_io.load_checkpoint — to build models"
            )
        return self.loader(self.paths[i])

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """The parameters of checkpoint ``i`` as a state dict (float tensors, CPU)."""
        obj = torch.load(self.paths[i], map_location="cpu", weights_only=True, mmap=True)
        return dict(obj.get("model_state", obj))

    def __iter__(self) -> Iterator[tuple[int, nn.Module]]:
        for i, step in enumerate(self.steps):
            yield step, self.model(i)

    def record(self, step: int) -> dict[str, Any]:
        """The metrics record of ``step`` (``{}`` if it was not an evaluation step)."""
        return next((r for r in self.metrics if r.get("step") == step), {})


def load_series(run_dir: str | Path, loader: Loader | None = None) -> CheckpointSeries:
    """The checkpoints of a training run, in step order, checked for one architecture.

    Raises
    ------
    DataError
        If ``run_dir`` is not a directory or holds no ``checkpoints/step_*.pt``.
    FormatError
        If a checkpoint cannot be read, or two checkpoints have different architectures;
        the message names the first checkpoint that differs from the first one and the
        first difference (a model-config entry, a missing or extra tensor, a shape).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist or is not a directory")
    folder = run / "checkpoints"
    found = sorted(
        (int(m.group(1)), p)
        for p in (folder.iterdir() if folder.is_dir() else [])
        if (m := STEP_FILE.match(p.name))
    )
    if not found:
        raise DataError(
            f"no checkpoints in {run}: expected files {folder}/step_<step>.pt written by the "
            "training harness (experiments.train with checkpoint_every or checkpoint_steps)"
        )
    spec0, shapes0 = _header(found[0][1])
    for step, path in found[1:]:
        spec, shapes = _header(path)
        diff = _first_difference(spec0, spec) or _shape_difference(shapes0, shapes)
        if diff:
            raise FormatError(
                f"checkpoints of different architectures in {run}: {path.name} (step {step}) "
                f"differs from {found[0][1].name} (step {found[0][0]}): {diff}"
            )
    metrics: list[dict[str, Any]] = []
    mpath = run / "metrics.jsonl"
    for line in mpath.read_text().splitlines() if mpath.is_file() else []:
        try:
            metrics.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line (the run was killed mid-write)
    last = metrics[-1] if metrics else {}
    return CheckpointSeries(
        run,
        tuple(s for s, _ in found),
        tuple(p for _, p in found),
        tuple(metrics),
        last.get("grokking_step"),
        last.get("memorization_step"),
        loader,
    )


@dataclass
class ModelSummary:
    """The per-checkpoint numbers and the objects they came from."""

    numbers: dict[str, Any]
    bases: list[Basis]
    graph: InteractionGraph
    partition: Partition
    eigenpairs: Eigenpairs


def summarize_model(
    model: nn.Module,
    inputs: torch.Tensor,
    node_layers: Sequence[str],
    loss_fn: LossFn,
    loss_data: tuple[torch.Tensor, torch.Tensor] | Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    k: int = 5,
    seed: int = 0,
    stability_seeds: Sequence[int] = (0, 1, 2),
    readout: str | None = None,
    tol: float = 0.0,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> ModelSummary:
    """Graph size, modules, stability, D_LR and top Hessian eigenvalues of one model.

    ``graph_size`` counts the non-constant nodes (Λ above the truncation floor);
    ``assigned_nodes`` those with an edge above the module search's ε (in a module) and
    ``edges_90`` the edges carrying 90 % of each layer pair's weight, summed over pairs.

    ``readout`` (default: the last node layer before ``"output"``) gives the D_LR features
    ``Φ`` (its activations, all positions side by side), ``F`` = the model outputs;
    ``d_lr_layers`` holds D_LR with ``Φ`` = the interaction-basis nodes of every layer
    (:func:`interbasis.links.graph_dlr`; before an affine readout it is 0, see docs). ``tol``:
    Lanczos accuracy (:func:`interbasis.links.hessian_eigenpairs`).

    ``train_mode``: a model in train mode is analysed as an eval-mode copy with one warning
    (``"eval"``, default), refused with :class:`DataError` (``"error"``) or analysed as it is
    (``"keep"``) by every view (:mod:`interbasis.train_mode`); the model, its mode and its
    buffers never change.

    ``process_group`` (default: the initialised default group, if any): the bases and the
    graph are built data-parallel, D_LR's activations are all-gathered and the Hessian is
    all-reduced (docs/distributed.md); the modules (seeded Leiden) and every number are then
    the same on every rank.
    """
    model = analysed_model(model, train_mode, "model summary")
    pg = {"process_group": process_group}
    bases = build_bases(model, inputs, node_layers, progress=False, train_mode=train_mode, **pg)
    graph = build_graph(
        model, inputs, node_layers, bases=bases, progress=False, train_mode=train_mode, **pg
    )
    partition = find_modules(graph, seed=seed)
    readout = readout or [n for n in node_layers if n != "output"][-1]
    acts = layer_activations(model, inputs, [readout], train_mode=train_mode, **pg)
    phi = acts[readout].reshape(acts[readout].shape[0], -1)
    out = acts["output"].reshape(acts["output"].shape[0], -1)
    dlr = graph_dlr(model, inputs, bases, train_mode=train_mode, **pg)
    pairs, method = hessian_eigenpairs(
        model, loss_fn, loss_data, k, seed=seed, tol=tol, train_mode=train_mode, **pg
    )
    numbers: dict[str, Any] = {
        "nodes": {b.name: b.n_nodes - int(b.has_constant) for b in bases},
        "graph_size": sum(b.n_nodes - int(b.has_constant) for b in bases),
        "n_modules": partition.n_modules,
        "module_sizes": list(partition.sizes),
        "unassigned": len(partition.unassigned()),
        "assigned_nodes": len(partition.membership) - len(partition.unassigned()),
        "edges_90": int(sum(graph.edges_needed(0.9))),
        "stability": stability(graph, seeds=tuple(stability_seeds)),
        "d_lr": d_lr(phi, out),
        "d_lr_interaction": dlr.layers[readout],
        "d_lr_layers": dlr.layers,
        "hessian_top": [float(v) for v in pairs.values[:k]],
        "hessian_method": method,
    }
    return ModelSummary(numbers, bases, graph, partition, pairs)


def spectral_gaps(
    series: CheckpointSeries,
    params: str | Sequence[str] = ATTENTION_WEIGHTS,
    window: int = 10,
    center: bool = False,
) -> list[dict[str, Any]]:
    """Per checkpoint, the spectrum of the window of the last ``window`` updates ending there.

    Updates are differences of the tracked parameters (``params``: a regular expression or
    names) between consecutive checkpoints. Entries before the second update hold None.
    Returns dicts with ``step``, ``sigma`` (top 5), ``gap`` (σ_1/σ_2), ``k_star``,
    ``energy_top3`` and ``directions`` (the window's top-3 right singular vectors, (3, n)).
    """
    state0 = series.state(0)
    if isinstance(params, str):
        pat = re.compile(params)
        names = [n for n in state0 if pat.search(n)]
    else:
        names = [n for n in params if n in state0]
    if not names:
        raise DataError(f"parameter filter {params!r} selects nothing in {list(state0)[:8]}")
    flat = [
        torch.cat([s[n].detach().to(torch.float64).reshape(-1) for n in names])
        for s in (series.state(i) for i in range(len(series)))
    ]
    out: list[dict[str, Any]] = []
    for i, step in enumerate(series.steps):
        row: dict[str, Any] = {"step": step, "params": names}
        if i >= 2:
            ups = torch.stack([flat[j] - flat[j - 1] for j in range(max(1, i - window + 1), i + 1)])
            spec = window_spectrum(ups, center=center)
            ratios = spec.gap_ratios
            row.update(
                sigma=[float(s) for s in spec.sigma[:5]],
                gap=float(ratios[0]) if ratios.size else None,
                k_star=spec.k_star,
                energy_top3=spec.energy_fraction(3),
                directions=spec.directions[:3],
            )
        out.append(row)
    return out
