"""The pipeline: model + data -> Grams -> bases, from the output layer backwards (DESIGN §3)."""

from __future__ import annotations

import copy
import itertools
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from interbasis.basis import Basis, Truncation, interaction_basis, neuron_basis, pca_basis
from interbasis.capture import (
    OUTPUT,
    OutputSelector,
    as_positions,
    batch_size_of,
    capture,
    resolve_node_layers,
)
from interbasis.data import check_data, iter_batches
from interbasis.distributed import Shard, SplitOver, get_shard
from interbasis.errors import DataError, NodeLayerError
from interbasis.grams import GramAccumulator, check_finite
from interbasis.jacobians import (
    DEFAULT_MEMORY_BUDGET,
    Consumer,
    SectionGram,
    section_jacobian_gram,
)
from interbasis.passes import MODES, Mode
from interbasis.section import Section, position_mask
from interbasis.sources import Sources, check_keep, check_sources
from interbasis.stage_cache import (
    CacheDir,
    StageCache,
    basis_stage,
    gram_state,
    open_cache,
    restore_gram,
    stage,
)
from interbasis.train_mode import TrainMode, check_train_mode, needs_eval_copy

BasisKind = Literal["interaction", "pca", "neuron"]
KeepPositions = dict[str, Sequence[int]] | None
FeatureDim = int | dict[str, int] | None


@dataclass
class Run:
    """A model prepared for analysis: the right dtype/device, node layers resolved."""

    model: nn.Module
    data: Any
    modules: dict[str, nn.Module | None]
    dtype: torch.dtype
    device: torch.device
    batch_size: int | None
    progress: bool
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    output: OutputSelector | None = None
    keep_positions: dict[str, list[int]] = field(default_factory=dict)
    sources: Sources | None = None
    mode: Mode = "auto"
    feature_dims: dict[str, int] = field(default_factory=dict)
    grams: dict[str, GramAccumulator] = field(default_factory=dict)
    n_samples: int = 0
    #: relative standard error of tr M per node layer (stochastic sources)
    estimator_error: dict[str, float | None] = field(default_factory=dict)
    #: this process's part of a distributed build, and the stage cache (or None)
    shard: Shard = field(default_factory=Shard)
    cache: StageCache | None = None

    @property
    def names(self) -> list[str]:
        return list(self.modules)

    def batches(self, desc: str | None = None) -> Iterator[torch.Tensor]:
        """Model inputs on the run's device, with a progress bar when asked for."""
        it = iter_batches(self.data, self.batch_size, self.device, self.dtype,
                          allow_empty=self.shard.split_over == "shards")  # fmt: skip
        if self.progress and desc:
            return iter(tqdm(it, desc=desc, leave=False))
        return it

    def module(self, name: str) -> tuple[str, nn.Module | None]:
        return name, self.modules[name]

    def injectable(self, name: str) -> tuple[str, nn.Module]:
        module = self.modules[name]
        if module is None:
            raise NodeLayerError(f"{name!r} is the model output; nothing comes after it")
        return name, module

    def section(self, lo: str, hi: str) -> Section:
        """The :class:`Section` from node layer ``lo`` to node layer ``hi``."""
        return Section(
            self.model, self.injectable(lo), self.module(hi), self.output,
            self.keep_positions.get(lo), self.keep_positions.get(hi), self.feature_dims,
            rank=self.shard.seed_rank,
        )  # fmt: skip

    def kept(self, name: str, acts: torch.Tensor) -> torch.Tensor:
        """Activations of node layer ``name`` at its kept positions ``(b, P_kept, d)``."""
        a = as_positions(acts)
        if name not in self.keep_positions:
            return a
        keep = check_keep(torch.as_tensor(self.keep_positions[name]), a.shape[1], name)
        return a[:, keep.to(a.device)]


def _model_device(model: nn.Module) -> torch.device | None:
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    if len(devices) > 1:
        raise DataError(
            f"the model's parameters lie on several devices {sorted(map(str, devices))}; "
            "interbasis runs the model on one device"
        )
    return next(iter(devices)) if devices else None


def check_int(name: str, value: Any, minimum: int = 1, allow_none: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= minimum`` (bools refused)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _keep_positions(keep: Any, names: Sequence[str]) -> dict[str, list[int]]:
    if keep is None:
        return {}
    if not isinstance(keep, dict):
        raise TypeError(
            "keep_positions must be a dict {node_layer: [positions]}, e.g. "
            f'{{"blocks.0.hook_resid_mid": [-1]}}, got {type(keep).__name__}'
        )
    out: dict[str, list[int]] = {}
    for name, positions in keep.items():
        if name not in names:
            raise NodeLayerError(
                f"keep_positions names {name!r}, which is not a node layer {names}"
            )
        if isinstance(positions, int):
            positions = [positions]
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
            raise DataError(f"keep_positions[{name!r}] must be integers, got {positions!r}")
        out[name] = list(positions)
    return out


def _feature_dims(feature_dim: Any, names: Sequence[str]) -> dict[str, int]:
    if feature_dim is None:
        return {}
    if isinstance(feature_dim, int) and not isinstance(feature_dim, bool):
        return {n: feature_dim for n in names if n != OUTPUT}
    if not isinstance(feature_dim, dict):
        raise TypeError(
            f"feature_dim must be an int or a dict {{node_layer: int}}, got {feature_dim!r}"
        )
    for name, dim in feature_dim.items():
        if name not in names:
            raise NodeLayerError(f"feature_dim names {name!r}, which is not a node layer {names}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"feature_dim[{name!r}] must be an int, got {dim!r}")
    return dict(feature_dim)


def _move(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` on ``device`` in ``dtype`` (``.to`` called one argument at a time:
    some models, e.g. TransformerLens', do not take ``device=`` and ``dtype=`` together)."""
    model = copy.deepcopy(model)
    model.to(device)
    model.to(dtype)
    cfg = getattr(model, "cfg", None)  # TransformerLens casts attention patterns to cfg.dtype
    if isinstance(getattr(cfg, "dtype", None), torch.dtype):
        cfg.dtype = dtype  # type: ignore[union-attr]
    return model


def prepare(
    model: nn.Module,
    data: Any,
    node_layers: Sequence[str],
    *,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    output: OutputSelector | None = None,
    keep_positions: KeepPositions = None,
    sources: Sources | None = None,
    mode: Mode = "auto",
    train_mode: TrainMode = "eval",
    feature_dim: FeatureDim = None,
    process_group: Any = None,
    split_over: SplitOver = "data",
    cache_dir: str | os.PathLike[str] | CacheDir | None = None,
) -> Run:
    """Validate inputs and return a :class:`Run` with a private copy of the model if needed.

    ``device=None`` picks CUDA when available, else CPU; ``dtype=None`` keeps the model's
    dtype (accumulation stays float64). The model is copied when its dtype or device must
    change or when it is in train mode; the user's model and its buffers are never modified.

    Train mode (one policy for every entry point): dropout and train-mode batch norm make the
    forward pass random or batch-dependent, so by default (``train_mode="eval"``) the
    eval-mode function of a copy is analysed, with a warning that says so;
    ``train_mode="error"`` refuses such a model; ``"keep"`` analyses it as it is (deterministic
    train-mode models only).

    ``process_group`` / ``split_over`` give the run its :class:`interbasis.distributed.Shard`;
    ``cache_dir`` opens a :class:`interbasis.stage_cache.StageCache` keyed by the prepared
    model, the data and the options that shape every stage.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise DataError(f"dtype must be a floating torch dtype or None, got {dtype}")
    if isinstance(node_layers, str) or not isinstance(node_layers, Sequence):
        raise TypeError(
            f"node_layers must be a list of module names, got {node_layers!r} "
            f'(a single layer is ["{node_layers}"])'
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_int("memory_budget", memory_budget, minimum=1024, allow_none=False)
    if mode not in MODES:
        raise DataError(f"mode must be one of {MODES}, got {mode!r}")
    check_train_mode(train_mode)
    if output is not None and not callable(output):
        raise TypeError(f"output must be a callable (return value -> tensor), got {output!r}")
    sources = check_sources(sources, "sources")
    check_data(data, allow_empty=split_over == "shards")  # a rank's shard may be empty
    target = torch.device(device) if device is not None else None
    if target is None:
        target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device={str(device)!r} but CUDA is not available in this torch build")
    if target.type == "meta":
        raise DataError('device="meta" holds no data; use "cpu" or "cuda"')
    current = _model_device(model)
    float_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtype_ = dtype if dtype is not None else (min(float_dtypes, key=str) if float_dtypes else
                                              torch.float32)  # fmt: skip
    eval_copy = needs_eval_copy(model, train_mode, "interaction basis")
    if current != target or float_dtypes - {dtype_} or eval_copy:
        model = _move(model, target, dtype_)
        if eval_copy:
            model.eval()
    modules = resolve_node_layers(model, node_layers)
    keep = _keep_positions(keep_positions, list(modules))
    run = Run(
        model, data, modules, dtype_, target, batch_size, progress, memory_budget, output,
        keep, sources, mode, _feature_dims(feature_dim, list(modules)),
        shard=get_shard(process_group, split_over),
    )  # fmt: skip
    options = {"node_layers": list(modules), "keep": keep, "dtype": str(dtype_),
               "output": output, "batch_size": batch_size,
               "feature_dims": run.feature_dims}  # fmt: skip
    run.cache = open_cache(cache_dir, model, run.batches, options, run.shard)
    return run


def accumulate_activation_grams(run: Run, check_cuts: bool = True) -> dict[str, GramAccumulator]:
    """One pass over the data: streaming Grams of every node layer (stored on ``run``).

    With ``check_cuts`` the first batch with two distinct samples also verifies that
    consecutive node layers are sections of the forward pass
    (:meth:`interbasis.section.Section.check_cut`); a warning says when no batch could.
    Distributed: each rank reads its shard and the Grams are merged over ranks; with a stage
    cache they are read from it when present.
    """

    def compute(_: Any) -> dict[str, Any]:
        with run.shard.stage("activation Grams"):
            grams, cuts_checked = _activation_grams(run, check_cuts)
        if check_cuts and not run.shard.any(cuts_checked) and len(run.names) > 1:
            warnings.warn(
                "could not check that the node layers are sections of the forward pass: no "
                "batch had two samples with different activations at every node layer (use "
                "batches of at least two samples)",
                UserWarning,
                stacklevel=4,
            )
        run.grams = run.shard.reduce_grams(grams, run.names, run.device)
        run.n_samples = run.shard.count(run.n_samples)
        return {"n": run.n_samples, "grams": {k: gram_state(g) for k, g in run.grams.items()}}

    value, fresh = stage(run.cache, "grams", {"check_cuts": check_cuts}, compute)
    if not fresh:
        run.n_samples = int(value["n"])
        run.grams = {k: restore_gram(g, run.device) for k, g in value["grams"].items()}
    return run.grams


def _activation_grams(run: Run, check_cuts: bool) -> tuple[dict[str, GramAccumulator], bool]:
    grams: dict[str, GramAccumulator] = {}
    run.n_samples = 0
    cuts_checked = False
    for b, x in enumerate(run.shard.batches(run.batches("activation Grams"))):
        run.n_samples += batch_size_of(x)
        with torch.no_grad():
            acts, layouts = capture(
                run.model, x, run.modules, run.output, run.feature_dims, batch_index=b
            )
        for name, a in acts.items():
            mask = position_mask(x, as_positions(a).shape[1])
            a = run.kept(name, a)
            if mask is not None:  # attention_mask zeros: padding, not samples
                if name in run.keep_positions:
                    keep = check_keep(
                        torch.as_tensor(run.keep_positions[name]), mask.shape[1], name
                    )
                    mask = mask[:, keep.to(mask.device)]
                a = a[mask]
            check_finite(a, "activations", name, b)
            if name not in grams:
                grams[name] = GramAccumulator(a.shape[-1], device=a.device)
            elif a.shape[-1] != grams[name].dim:
                raise DataError(
                    f"node layer {name!r} has width {a.shape[-1]} in batch {b} but "
                    f"{grams[name].dim} before"
                )
            grams[name].update(a)
        if check_cuts and not cuts_checked:  # on the first batch of >= 2 distinct samples
            with torch.no_grad():
                cuts_checked = all(
                    run.section(lo, hi).check_cut(x, acts[lo], layouts[lo], acts[hi])
                    for lo, hi in itertools.pairwise(run.names)
                )
    return grams, cuts_checked


def node_map(basis: Basis) -> torch.Tensor:
    """The part of ``C`` acting on the activations, non-constant nodes only ``(d, k)``."""
    return basis.C[:-1, 1:] if basis.has_constant else basis.C


def section_gram(
    run: Run, name: str, target: str, out_map: torch.Tensor, consumers: list[Consumer] | None = None
) -> tuple[SectionGram, bool]:
    """M of node layer ``name`` towards ``target`` (all-reduced over ranks; from the stage
    cache when there), and whether it was computed here from the first batch (only then were
    the ``consumers`` called on every Jacobian)."""

    def compute(partial_sums: Any) -> dict[str, Any]:
        r = section_jacobian_gram(
            run.section(name, target), partial(run.batches, f"M {name}"), out_map,
            run.memory_budget, consumers=consumers, sources=run.sources, mode=run.mode,
            shard=run.shard, partial_sums=partial_sums,
            # the affine fast path reads every batch on every rank; ranks holding their own
            # shards (some maybe empty) take the general path, which all-reduces
            detect_affine=run.shard.split_over != "shards",
        )  # fmt: skip
        affine = r.affine.cpu() if r.affine is not None else None
        return {"M": r.M.cpu(), "affine": affine, "rse": r.relative_standard_error}

    sources = run.sources.as_dict() if run.sources is not None else None
    parts = {"name": name, "target": target, "out_map": out_map, "sources": sources,
             "mode": run.mode}  # fmt: skip
    v, fresh = stage(run.cache, f"M {name}", parts, compute)
    affine = v["affine"].to(run.device) if v["affine"] is not None else None
    return SectionGram(v["M"].to(run.device), affine, v["rse"]), fresh


def basis_parts(run: Run, name: str, M: torch.Tensor | None, **options: Any) -> dict[str, Any]:
    """What a node layer's basis depends on: its Gram, its M and the basis options."""
    return {"name": name, "gram": gram_state(run.grams[name]), "M": M, **options}


def final_basis_of(run: Run, name: str, kind: str, center: bool, truncation: Truncation) -> Basis:
    g = run.grams[name]
    if kind == "neuron":
        return neuron_basis(name, g.mean, g.covariance, fold_bias=False)
    if kind == "pca":
        gram = g.covariance if center else g.second_moment
        return pca_basis(name, g.mean, gram, center=center, fold_bias=False, truncation=truncation)
    raise DataError(f'final_basis must be "neuron" or "pca", got {kind!r}')


def build_bases(
    model: nn.Module,
    data: Any,
    node_layers: Sequence[str],
    basis: BasisKind = "interaction",
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
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    sources: Sources | None = None,
    mode: Mode = "auto",
    output: OutputSelector | None = None,
    keep_positions: KeepPositions = None,
    train_mode: TrainMode = "eval",
    feature_dim: FeatureDim = None,
    process_group: Any = None,
    split_over: SplitOver = "data",
    cache_dir: str | os.PathLike[str] | CacheDir | None = None,
) -> list[Basis]:
    """Bases of every node layer, computed from the output layer backwards.

    Parameters
    ----------
    model : any ``nn.Module`` taking one positional input.
    data : a tensor (split into ``batch_size`` batches) or a re-iterable of batches (tensors,
        or tuples whose first element is the model input).
    node_layers : module names from ``model.named_modules()`` in forward order, optionally
        ending with ``"output"``. Activations are read at each module's *input*.
    basis : ``"interaction"`` (seed 004 §6), ``"pca"`` or ``"neuron"`` baselines.
    center : centre activations (the mean is carried by the constant node). ``center`` and
        ``fold_bias`` go together: both True (default) or both False.
    fold_bias : append a constant coordinate 1 (node 0 of each basis, except the final).
    truncation : ``"auto"`` (relative floor ``max * dim * eps``) or an absolute threshold
        (``1e-15`` reproduces rib).
    dtype : dtype of the forward pass; Grams and eigendecompositions are always float64.
    device : where to run; ``None`` = CUDA when available, else CPU.
    scope : ``"local"`` (M from the next node layer, appendix A) or ``"global"`` (M from the
        final node layer's functions, seed 004 eq. 40).
    final_basis : basis of the last node layer (``"neuron"`` default, or ``"pca"``).
    memory_budget : bytes for one chunk of batched VJPs (memory is independent of the
        dataset size; it grows with the batch size and this budget).
    sources : :class:`interbasis.Sources` for an unbiased stochastic estimate of each M
        (fewer backward passes); ``None`` = exact.
    mode : ``"auto"`` (fewer passes of reverse and forward mode per section), ``"vjp"`` or
        ``"jvp"``; all give the same M.
    output : callable selecting the analysed tensor from the model's return value (default:
        the tensor, a ``ModelOutput``'s / dict's ``logits``, or a tuple's first tensor).
    keep_positions : ``{node_layer: positions}`` kept in the Grams, M and edges (e.g.
        ``{"blocks.0.hook_resid_mid": [-1]}``: only the last position reaches the output).
    train_mode : ``"eval"`` (default: analyse the eval-mode function of a copy, with a
        warning), ``"error"`` (refuse a model in train mode) or ``"keep"``.
    feature_dim : the feature axis of the node layers' inputs, an int or
        ``{node_layer: int}`` (default: last; channels for the inputs of convolutions,
        batch norm and pooling, whose spatial axes become positions).
    process_group : ``torch.distributed`` group to split the work over (default: the
        initialised default group, if any); every rank returns the same bases
        (:mod:`interbasis.distributed`, docs/distributed.md).
    split_over : ``"data"`` (each rank a shard of the batches), ``"units"`` (each rank a
        slice of the output units of every section; rib's ``dist_split_over: out_dim``) or
        ``"shards"`` (each rank was given its own part of the data and reads all of it).
    cache_dir : directory (or :class:`interbasis.stage_cache.CacheDir`) where finished stages
        and partial sums are kept; a rerun skips finished stages (:mod:`interbasis.stage_cache`).

    Returns
    -------
    list of :class:`Basis` in the order of ``node_layers``, on the CPU (float64).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> bases = build_bases(net.eval(), torch.randn(64, 3), ["0", "2", "output"], progress=False)
    >>> [b.name for b in bases]
    ['0', '2', 'output']
    """
    check_basis_options(basis, scope, center, fold_bias, truncation, final_basis)
    run = prepare(
        model, data, node_layers, dtype=dtype, device=device, batch_size=batch_size,
        progress=progress, memory_budget=memory_budget, output=output,
        keep_positions=keep_positions, sources=sources, mode=mode, train_mode=train_mode,
        feature_dim=feature_dim, process_group=process_group, split_over=split_over,
        cache_dir=cache_dir,
    )  # fmt: skip
    accumulate_activation_grams(run, check_cuts=basis == "interaction")
    bases = bases_for_run(run, basis, center, fold_bias, truncation, scope, final_basis)
    return [b.to("cpu") for b in bases]  # small; computed on the run's device


def check_basis_options(
    basis: str,
    scope: str,
    center: bool,
    fold_bias: bool,
    truncation: Any = "auto",
    final_basis: str = "neuron",
) -> None:
    """Raise ``ValueError`` for unknown or incompatible basis options (before any work)."""
    if basis not in ("interaction", "pca", "neuron"):
        raise DataError(f'basis must be "interaction", "pca" or "neuron", got {basis!r}')
    if scope not in ("local", "global"):
        raise DataError(f'scope must be "local" or "global", got {scope!r}')
    if scope == "global" and basis != "interaction":
        raise DataError(
            f'scope="global" applies to the interaction basis only; basis={basis!r} has no M'
        )
    if final_basis not in ("neuron", "pca"):
        raise DataError(f'final_basis must be "neuron" or "pca", got {final_basis!r}')
    if truncation != "auto" and (
        isinstance(truncation, bool)
        or not isinstance(truncation, (int, float))
        or not truncation >= 0
    ):
        raise DataError(f'truncation must be "auto" or a threshold >= 0, got {truncation!r}')
    for name, flag in (("center", center), ("fold_bias", fold_bias)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if center and not fold_bias:
        raise DataError("center=True needs fold_bias=True: the mean is carried by the constant")
    if fold_bias and not center:
        raise DataError(
            "fold_bias=True needs center=True: without centring the constant coordinate mixes "
            "with the activations in the whitening (as in seed 004 appendix A), so it cannot be "
            "kept out of the rotation as node 0; use the default center=True, or "
            "center=False with fold_bias=False"
        )


def bases_for_run(
    run: Run,
    basis: str,
    center: bool,
    fold_bias: bool,
    truncation: Truncation,
    scope: str,
    final_basis: str,
) -> list[Basis]:
    """Bases from the Grams already on ``run``, output layer first (see :func:`build_bases`)."""
    names = run.names
    last = basis_stage(
        run.cache, basis_parts(run, names[-1], None, final=final_basis, center=center,
                               truncation=truncation),
        lambda: final_basis_of(run, names[-1], final_basis, center, truncation), run.device,
    )  # fmt: skip
    bases: dict[str, Basis] = {names[-1]: last}
    for i in range(len(names) - 2, -1, -1):
        name = names[i]
        g = run.grams[name]
        gram = g.covariance if center else g.second_moment
        if basis == "neuron":
            bases[name] = neuron_basis(name, g.mean, g.covariance, fold_bias=fold_bias)
        elif basis == "pca":
            bases[name] = pca_basis(
                name, g.mean, gram, center=center, fold_bias=fold_bias, truncation=truncation
            )
        else:
            target = names[i + 1] if scope == "local" else names[-1]
            section, _ = section_gram(run, name, target, node_map(bases[target]))
            M = section.M
            run.estimator_error[name] = section.relative_standard_error
            bases[name] = basis_stage(
                run.cache, basis_parts(run, name, M, center=center, fold_bias=fold_bias,
                                       truncation=truncation),
                partial(interaction_basis, name, g.mean, gram, M, center=center,
                        fold_bias=fold_bias, truncation=truncation),
                run.device,
            )  # fmt: skip
    return [bases[n] for n in names]


def activation_grams(
    model: nn.Module,
    data: Any,
    node_layers: Sequence[str],
    *,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    train_mode: TrainMode = "eval",
) -> dict[str, GramAccumulator]:
    """Streaming activation Grams (means, centred and uncentred) of the given node layers.

    Node layers need not be sections of each other here (any modules, in forward order).
    ``train_mode``: the train-mode policy (:mod:`interbasis.train_mode`).
    """
    run = prepare(
        model, data, node_layers, dtype=dtype, device=device, batch_size=batch_size,
        progress=progress, train_mode=train_mode,
    )  # fmt: skip
    return accumulate_activation_grams(run, check_cuts=False)


def output_jacobian_gram(
    model: nn.Module,
    data: Any,
    wrt: str,
    of: str = OUTPUT,
    out_map: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    train_mode: TrainMode = "eval",
) -> torch.Tensor:
    """Jacobian Gram ``E[J^T J]``, ``J = d(f^{of} @ out_map) / d f^{wrt}`` ``(d_wrt, d_wrt)``.

    With ``wrt`` = the module receiving a layer's pre-activations (e.g. ``"acts.0"`` of an
    MLP) and ``of="output"`` this is ``K^l`` of seed 004 eqs 15/39. Inside a residual block
    (e.g. ``"blocks.0.mlp.hook_pre"``) the pre-activations are not a cut and this function
    refuses them; :mod:`interbasis.degeneracy` takes the partial Jacobian there (other paths
    held fixed). Positions follow DESIGN §4 (diagonal in input position, normalised by
    ``N * P_in``). The section from ``wrt`` to ``of`` must be a cut of the forward pass
    (checked on the first batch). ``train_mode``: the train-mode policy
    (:mod:`interbasis.train_mode`).
    """
    run = prepare(
        model, data, [wrt, of], dtype=dtype, device=device, batch_size=batch_size,
        progress=progress, memory_budget=memory_budget, train_mode=train_mode,
    )  # fmt: skip
    accumulate_activation_grams(run, check_cuts=True)
    width = run.grams[of].dim
    if out_map is None:
        out_map = torch.eye(width, dtype=torch.float64, device=run.device)
    elif out_map.ndim != 2 or out_map.shape[0] != width:
        raise DataError(f"out_map must have shape ({width}, k), got {tuple(out_map.shape)}")
    return section_jacobian_gram(
        run.section(wrt, of), lambda: run.batches(f"K {wrt}"), out_map.to(run.device),
        memory_budget,
    ).M  # fmt: skip
