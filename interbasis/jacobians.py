"""Jacobian Grams ``M = E[J^T J]`` of sections of the forward pass (DESIGN §4).

A :class:`interbasis.section.Section` gives the Jacobians of its output units in chunks (VJPs
or JVPs under ``vmap``, one forward pass per batch, sized to a memory budget); the reductions
here consume each chunk at once, so memory does not grow with the dataset. With stochastic
sources (:mod:`interbasis.sources`) the output units are random combinations and ``M`` is an
unbiased estimate, reported with its relative standard error.

Affine sections (e.g. an unembedding) have the same Jacobian at every sample. They are
detected on the data — a Jacobian taken at one sample must reproduce a forward-mode JVP
along a random direction at every sample (relative deviation ``<= 1e-10``; for a
non-affine section such a coincidence has probability zero) — and then ``M`` follows exactly
from that one Jacobian instead of one per sample (also when sources were asked for).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from interbasis.capture import InputLayout, as_positions
from interbasis.distributed import Shard
from interbasis.errors import DataError
from interbasis.grams import JacobianGramAccumulator, check_finite
from interbasis.passes import (
    DEFAULT_MEMORY_BUDGET,
    Mode,
    forward_mode_unavailable,
    units_per_chunk,
)
from interbasis.section import JacobianChunk, Section, position_mask
from interbasis.sources import STREAM_M, OutputUnits, Sources, SourceSpread
from interbasis.stage_cache import (
    NO_PARTIAL_SUMS,
    PartialSums,
    jacobian_gram_state,
    restore_jacobian_gram,
)

log = logging.getLogger(__name__)
AFFINE_RTOL = 1e-10

__all__ = [
    "AFFINE_RTOL",
    "DEFAULT_MEMORY_BUDGET",
    "Consumer",
    "SectionGram",
    "affine_jacobian",
    "batched_vjps",
    "is_affine_on",
    "jacobian_gram",
    "section_jacobian_gram",
    "units_per_chunk",
]

Cotangents = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(batch_index, acts_in, chunk)``: ``acts_in`` ``(len(chunk.samples), P_kept, d)``
Consumer = Callable[[int, torch.Tensor, JacobianChunk], None]
Batches = Iterable[Any] | Callable[[], Iterable[Any]]


def batched_vjps(
    fn: Callable[[torch.Tensor], torch.Tensor],
    value: torch.Tensor,
    n_units: int,
    cotangents: Cotangents,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """One forward pass of ``fn`` at ``value``, then VJPs for ``n_units`` cotangents in chunks.

    ``cotangents(units, out)`` returns the cotangents of the given units, shape
    ``(len(units), *out.shape)``. Yields ``(units, grads)`` with ``grads`` of shape
    ``(len(units), *value.shape)``. (Used for path-dependent cotangents, e.g. the functional
    edges; section Jacobians use :meth:`Section.jacobians`.)
    """
    out, vjp_fn = torch.func.vjp(fn, value)[:2]
    chunk = units_per_chunk(
        value.shape[0], value[0].numel(), out[0].numel(), n_units, memory_budget
    )
    batched_vjp = torch.func.vmap(vjp_fn)
    for start in range(0, n_units, chunk):
        units = torch.arange(start, min(start + chunk, n_units), device=out.device)
        (grads,) = batched_vjp(cotangents(units, out))
        yield slice(start, start + len(units)), grads


def affine_jacobian(
    section: Section, x: Any, value: torch.Tensor, layout: InputLayout, out_map: torch.Tensor
) -> torch.Tensor:
    """Exact Jacobian of the output units at one sample ``(units, P_kept, d_in)``: the first,
    or with padding (``attention_mask``) the first with the most real positions."""
    mask = section.input_mask(x, value)
    i = 0 if mask is None else int(mask.sum(1).argmax())
    pick = slice(i, i + 1)
    x1 = x[pick] if isinstance(x, torch.Tensor) else {k: v[pick] for k, v in x.items()}
    grads = [c.grads for c in section.jacobians(x1, value[pick], layout, out_map, mode="vjp")]
    return torch.cat(grads)[:, 0]


def is_affine_on(
    section: Section,
    x: Any,
    value: torch.Tensor,
    layout: InputLayout,
    out_map: torch.Tensor,
    jacobian: torch.Tensor,
    seed: int = 0,
) -> bool:
    """Whether every sample's Jacobian equals ``jacobian``, by a JVP along a random direction.

    ``False`` also when the positions differ from the Jacobian's or when the model has an
    operation without forward-mode AD (e.g. fused attention kernels): then the general path
    is taken. The tolerance is relative to the largest entry of each output unit, and
    ``max(AFFINE_RTOL, 1000 eps)`` of the forward dtype.
    """
    v_pos = as_positions(value)
    kept = section.kept_in(v_pos.shape[1])
    n_kept = v_pos.shape[1] if kept is None else len(kept)
    if (n_kept, v_pos.shape[2]) != tuple(jacobian.shape[1:]):
        return False
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(v_pos.shape, generator=g, dtype=value.dtype)
    if kept is not None:  # the direction lives on the kept positions only
        mask = torch.zeros(v_pos.shape[1], dtype=torch.bool)
        mask[kept] = True
        v[:, ~mask] = 0.0
    v = v.to(value.device)
    in_mask = section.input_mask(x, value)
    if in_mask is not None and kept is None:  # padding inputs are no samples: no direction
        v = v * in_mask[..., None].to(v)
    try:
        jv = torch.func.jvp(section.fn(x, layout), (value,), (v.reshape(value.shape),))[1]
    except (NotImplementedError, RuntimeError) as err:
        if not forward_mode_unavailable(err):
            raise
        log.info("affine check of section %s needs forward mode (%s): general path", section.name,
                 str(err).splitlines()[0])  # fmt: skip
        return False
    units = section.output_units(out_map, jv.shape[1])
    got = units.project(jv[None])[0]  # (b, units)
    v_kept = section.input_positions(v.reshape(value.shape))
    want = torch.einsum("usd,bsd->bu", jacobian, v_kept)
    out_mask = position_mask(x, jv.shape[1])
    if out_mask is not None:  # padding outputs are no units (unit a * k + i reads pos[a])
        real_pos = (out_mask.to(got) @ units.pos[0].to(got).abs().T) > 0  # (b, n_pos)
        real = real_pos.repeat_interleave(units.n_dir, dim=1).to(got)
        got, want = got * real, want * real
    scale = want.abs().amax(0).clamp_min(torch.finfo(want.dtype).tiny)  # per output unit
    rtol = max(AFFINE_RTOL, 1000 * torch.finfo(value.dtype).eps)
    return bool(((got - want).abs() <= rtol * scale).all())


@dataclass
class SectionGram:
    """Result of :func:`section_jacobian_gram`.

    Attributes
    ----------
    M : ``(d_in, d_in)`` float64, normalised by ``N * P_in`` (kept input positions).
    affine : the constant Jacobian ``(units, P_in, d_in)`` of an affine section, else None.
    relative_standard_error : of ``tr M`` from the spread of the source samples (0 for
        exact or affine sections; ``None`` when one source sample per batch cannot show it).
    """

    M: torch.Tensor
    affine: torch.Tensor | None
    relative_standard_error: float | None = 0.0


def unit_spread(spread: SourceSpread, units: OutputUnits, rows: slice, per_unit: torch.Tensor):
    """Add per-unit contributions ``(c,)`` of a chunk to ``spread`` by source sample."""
    if units.sample_of_unit is None:
        return
    sample = units.sample_of_unit[rows].to(per_unit.device)
    z = torch.zeros(units.n_samples, dtype=torch.float64, device=per_unit.device)
    spread.add(z.index_add_(0, sample, per_unit.to(torch.float64)))


def section_jacobian_gram(
    section: Section,
    batches: Batches,
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    consumers: list[Consumer] | None = None,
    detect_affine: bool = True,
    sources: Sources | None = None,
    mode: Mode = "auto",
    shard: Shard | None = None,
    partial_sums: PartialSums = NO_PARTIAL_SUMS,
) -> SectionGram:
    """``E[J^T J]`` of the section's output units with respect to its input (DESIGN §4).

    Parameters
    ----------
    batches : model inputs (already on the model's device and dtype), or a function returning
        a fresh iterator over them; only then can the affine fast path make its extra pass.
    out_map : ``(d_read, k)`` applied to the read activations.
    consumers : callbacks ``(batch_index, acts_in, chunk)`` that reuse the same Jacobians
        (edges, diagnostics). They are not called for an affine section.
    detect_affine : use the affine fast path (module docstring) when it applies.
    sources : stochastic output units (:class:`interbasis.Sources`); ``None`` = exact.
    mode : ``"vjp"``, ``"jvp"`` or ``"auto"`` (:meth:`Section.jacobians`).
    shard : this rank's part (:mod:`interbasis.distributed`): its batches or output units;
        the sums are all-reduced at the end, so every rank returns the same M. The affine
        check reads every batch on every rank (identical on all ranks, no collective).
    partial_sums : saves the sums every few batches and resumes from them
        (:class:`interbasis.stage_cache.PartialSums`).

    Returns
    -------
    :class:`SectionGram`.

    Raises
    ------
    NonFiniteError
        If a Jacobian has NaN/Inf (the node layer and batch are named).
    """
    inject, read = section.inject[0], section.read[0]
    shard = shard if shard is not None else Shard()
    if detect_affine and callable(batches):
        J = _affine_on_all(section, batches(), out_map, shard)
        if J is not None:
            Jd = J.to(torch.float64).reshape(-1, J.shape[-1])
            _warn_unreached(section, J.to(torch.float64).pow(2).sum((0, 2)), J.shape[1])
            return SectionGram(Jd.T @ Jd / J.shape[1], J)
    acc: JacobianGramAccumulator | None = None
    spread = SourceSpread()
    reach: torch.Tensor | None = None  # squared Jacobian norm per kept input position
    ever_real: torch.Tensor | None = None  # kept positions that are not padding in some sample
    start, state = partial_sums.resume()
    if state is not None:
        acc, spread = restore_jacobian_gram(state, out_map.device)
    with shard.stage(f"M {inject}"):
        own = shard.batches(batches() if callable(batches) else batches)
        for b, x in enumerate(own):
            if b < start:  # summed before a restart
                continue
            value, layout = section.capture_input(x)
            acts_in = section.input_positions(value)
            if acc is None:
                acc = JacobianGramAccumulator(value.shape[-1], device=value.device)
            mask = section.input_mask(x, value)  # padding positions are no samples
            n = int(mask.sum()) if mask is not None else acts_in.shape[0] * acts_in.shape[1]
            real = torch.ones(acts_in.shape[1], dtype=torch.bool) if mask is None else mask.any(0)
            ever_real = _combine(ever_real, real.cpu(), torch.logical_or)
            acc.add_samples(n)
            with torch.no_grad():
                for chunk in section.jacobians(
                    x, value, layout, out_map, sources=sources, batch=b, stream=STREAM_M,
                    mode=mode, memory_budget=memory_budget, unit_split=shard.unit_split,
                ):  # fmt: skip
                    acc.update(chunk.grads)
                    r = chunk.grads.to(torch.float64).pow(2).sum((0, 1, 3))
                    reach = _combine(reach, r, torch.add)
                    per_unit = chunk.grads.pow(2).sum((1, 2, 3))
                    unit_spread(spread, chunk.out_units, chunk.units, per_unit)
                    for consume in consumers or []:
                        consume(b, acts_in[chunk.samples], chunk)
            spread.end_batch()
            # NaN/Inf in any Jacobian entry propagates into the running sum of J^T J
            check_finite(acc.running_sum, f"Jacobians (towards {read!r})", inject, b)
            partial_sums.step(b + 1, partial(jacobian_gram_state, acc, spread))
        if acc is None and not shard.active:
            raise DataError("data holds no batches")
    acc = shard.reduce_jacobian_gram(acc, out_map.device)
    shard.reduce_spread(spread)
    if reach is not None and not shard.active and start == 0:  # one process saw every unit
        _warn_unreached(section, reach, int(reach.numel()), ever_real)
    rse = spread.relative_standard_error if spread.total else 0.0
    return SectionGram(acc.value, None, rse)


def _combine(
    acc: torch.Tensor | None, new: torch.Tensor, op: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """``op(acc, new)`` over positions, for batches of different lengths (zero-extended)."""
    if acc is None:
        return new
    n = max(len(acc), len(new))
    acc = torch.nn.functional.pad(acc, (0, n - len(acc)))
    return op(acc, torch.nn.functional.pad(new.to(acc.device), (0, n - len(new))))


def _warn_unreached(
    section: Section, reach: torch.Tensor, p_in: int, real: torch.Tensor | None = None
) -> None:
    """Warn, naming them, about input positions whose Jacobian is exactly zero on the data:
    they never reach the next node layer, yet their activations count in the Gram.
    ``real`` ``(p_in,)`` bool: positions that are not padding in some sample (padding
    everywhere is not counted anyway)."""
    unreached = reach.cpu() == 0
    if real is not None:
        unreached &= real
    dead = unreached.nonzero().flatten().tolist()
    if not dead or len(dead) == p_in:
        return
    live = [i for i in range(p_in) if i not in dead]
    if section.keep_in is not None:  # indices into the kept positions, as the user gave them
        given = list(section.keep_in)
        dead, live = [given[i] for i in dead], [given[i] for i in live]
    hint = f"keep_positions={{{section.inject[0]!r}: {live}}}"
    warnings.warn(
        f"positions {dead} of node layer {section.inject[0]!r} never reach "
        f"{section.read[0]!r} (their Jacobian is exactly zero on the data) but are pooled in its "
        f"Gram; keep only the positions that do, e.g. {hint}",
        UserWarning,
        stacklevel=4,
    )


def _affine_on_all(
    section: Section, batches: Iterable[Any], out_map: torch.Tensor, shard: Shard | None = None
) -> torch.Tensor | None:
    """The section's constant Jacobian if it is affine on every batch, else ``None``.

    The first batch decides cheaply for non-affine sections (one single-sample Jacobian and
    one JVP); affine sections are then checked on every batch. Ranks that split the data
    (every rank holds all batches) check the first batch and their own shard of the others,
    and agree (all-reduce) that every batch passed.
    """
    shard = shard if shard is not None else Shard()
    J = _affine_on_batches(section, batches, out_map, shard)
    if shard.active and not shard.all(J is not None):
        return None
    return J


def _affine_on_batches(
    section: Section, batches: Iterable[Any], out_map: torch.Tensor, shard: Shard
) -> torch.Tensor | None:
    J: torch.Tensor | None = None
    mine = shard.split_over == "data" and shard.active
    for b, x in enumerate(batches):
        if mine and b > 0 and b % shard.world != shard.rank:
            continue  # another rank checks it
        value, layout = section.capture_input(x)
        mask = section.input_mask(x, value)
        if mask is not None and not bool(mask.all()):
            return None  # padding: per-sample position sets (the general path handles them)
        with torch.no_grad():
            if J is None and not _same_jvp_at_every_sample(section, x, value, layout):
                return None  # nonlinear: decided by one JVP, before any Jacobian
            if J is None:
                J = affine_jacobian(section, x, value, layout, out_map)
                check_finite(J, f"Jacobians (towards {section.read[0]!r})", section.inject[0], b)
            if not is_affine_on(section, x, value, layout, out_map, J, seed=b):
                return None
    return J


def _same_jvp_at_every_sample(
    section: Section, x: Any, value: torch.Tensor, layout: InputLayout
) -> bool:
    """Whether one random direction, the same at every sample, has the same JVP everywhere
    (necessary for an affine section; with several distinct samples, a nonlinear section
    fails it with probability one). ``True`` when forward mode is not available."""
    if value.shape[0] < 2:
        return True
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn((1, *value.shape[1:]), generator=g, dtype=value.dtype).to(value.device)
    try:
        jv = torch.func.jvp(section.fn(x, layout), (value,), (v.expand_as(value),))[1]
    except (NotImplementedError, RuntimeError) as err:
        if not forward_mode_unavailable(err):
            raise
        log.info("no forward mode on section %s (%s): the affine check uses VJPs", section.name,
                 str(err).splitlines()[0])  # fmt: skip
        return True
    scale = jv.abs().amax().clamp_min(torch.finfo(jv.dtype).tiny)
    rtol = max(AFFINE_RTOL, 1000 * torch.finfo(value.dtype).eps)
    return bool(((jv - jv[:1]).abs() <= rtol * scale).all())


def jacobian_gram(
    section: Section,
    batches: Batches,
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    sources: Sources | None = None,
    mode: Mode = "auto",
) -> torch.Tensor:
    """``M = E[J^T J]`` ``(d_in, d_in)``; see :func:`section_jacobian_gram`."""
    return section_jacobian_gram(
        section, batches, out_map, memory_budget, sources=sources, mode=mode
    ).M
