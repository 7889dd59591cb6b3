"""Jacobians of sections of the forward pass, and their Gram ``M = E[J^T J]``.

A section ``f^{l+1}(f^l)`` is run with the input of node layer ``l`` substituted
(:func:`interbasis.capture.run_section`). Its Jacobians come from one ``torch.func.vjp`` per
batch (one forward pass) and ``torch.func.vmap`` over chunks of output units (batched backward
passes), sized to a memory budget; reductions (``M``, edges) consume each chunk at once, so
memory does not grow with the dataset.

Affine sections (e.g. an unembedding) have the same Jacobian at every sample. They are
detected on the data — a Jacobian taken at one sample must reproduce a forward-mode JVP
along a random direction at every sample (relative deviation ``<= 1e-10``; for a
non-affine section such a coincidence has probability zero) — and then ``M`` follows from
that one Jacobian instead of one per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from interbasis.capture import InputLayout, as_positions, capture, run_section
from interbasis.errors import DataError
from interbasis.grams import JacobianGramAccumulator, check_finite

# bytes per chunk of batched VJPs; cache-sized chunks measured fastest on CPU
DEFAULT_MEMORY_BUDGET = 32 * 2**20
AFFINE_RTOL = 1e-10


def units_per_chunk(
    batch: int, numel_in: int, numel_out: int, n_units: int, memory_budget: int
) -> int:
    """Output units per vmapped VJP chunk so that one chunk fits ``memory_budget`` bytes.

    The estimate counts, per unit and sample, the cotangent, the gradient and a few buffers
    of the backward pass of the same sizes (8 bytes each, float64).
    """
    per_unit = 8 * batch * (4 * numel_in + 2 * numel_out)
    return int(max(1, min(n_units, memory_budget // max(per_unit, 1))))


Cotangents = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batched_vjps(
    fn: Callable[[torch.Tensor], torch.Tensor],
    value: torch.Tensor,
    n_units: int | Callable[[torch.Tensor], int],
    cotangents: Cotangents,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """One forward pass of ``fn`` at ``value``, then VJPs for ``n_units`` cotangents in chunks.

    ``n_units`` may be a function of the output ``out``. ``cotangents(units, out)`` returns
    the cotangents of the given units, shape ``(len(units), *out.shape)``.
    ``torch.func.vjp`` gives the pullback once; ``vmap`` runs it for a whole chunk of units
    as one batched backward pass. Yields ``(units, grads)``
    with ``grads`` of shape ``(len(units), *value.shape)``.
    """
    out, vjp_fn = torch.func.vjp(fn, value)[:2]
    if callable(n_units):
        n_units = n_units(out)
    batch = value.shape[0]
    chunk = units_per_chunk(batch, value[0].numel(), out[0].numel(), n_units, memory_budget)
    batched_vjp = torch.func.vmap(vjp_fn)
    for start in range(0, n_units, chunk):
        units = torch.arange(start, min(start + chunk, n_units), device=out.device)
        (grads,) = batched_vjp(cotangents(units, out))
        yield slice(start, start + len(units)), grads


def unit_cotangents(out_map: torch.Tensor) -> Cotangents:
    """Cotangents of units ``u = t * k + i``: ``out_map[:, i]`` at output position t.

    For an output ``out`` of shape ``(batch, P_out, d_out)`` this is the gradient of
    ``out[:, t] @ out_map[:, i]`` summed over the batch (each sample's own gradient, since
    samples do not interact).
    """
    k = out_map.shape[1]

    def build(units: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        batch, p_out, d_out = out.shape
        t, i = units // k, units % k
        om = out_map.to(out)
        cot = out.new_zeros(len(units), p_out, d_out)
        cot[torch.arange(len(units), device=out.device), t] = om[:, i].T
        return cot.unsqueeze(1).expand(len(units), batch, p_out, d_out)

    return build


def section_fn(
    model: nn.Module,
    inputs: torch.Tensor,
    inject: tuple[str, nn.Module],
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> f^{read}`` as ``(batch, P_out, d_out)``, with ``v`` substituted at ``inject``."""

    def section(v: torch.Tensor) -> torch.Tensor:
        return as_positions(run_section(model, inputs, inject, v, layout, read))

    return section


def section_vjps(
    model: nn.Module,
    inputs: torch.Tensor,
    inject: tuple[str, nn.Module],
    value: torch.Tensor,
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Gradients of every output unit of a section with respect to its input, in chunks.

    Output units are ``(t, i)``: output position t and column i of ``out_map``, i.e. the
    function ``f^{read}_t @ out_map[:, i]``, unit index ``u = t * k + i``. Yields
    ``(units, grads)`` with ``grads`` of shape ``(len(units), batch, P_in, d_in)``.

    Parameters
    ----------
    value : ``(batch, [pos], d_in)`` the activations at ``inject`` for ``inputs``.
    out_map : ``(d_out, k)`` map applied to the read activations (e.g. ``C^{l+1}`` without
        its constant row and node).
    """
    fn = section_fn(model, inputs, inject, layout, read)

    def n_units(out: torch.Tensor) -> int:
        if out_map.shape[0] != out.shape[-1]:
            raise ValueError(
                f"out_map has {out_map.shape[0]} rows but {read[0]!r} has width {out.shape[-1]}"
            )
        return out.shape[1] * out_map.shape[1]

    for units, grads in batched_vjps(fn, value, n_units, unit_cotangents(out_map), memory_budget):
        yield units, grads.reshape(grads.shape[0], value.shape[0], -1, value.shape[-1])


def affine_jacobian(
    model: nn.Module,
    inputs: torch.Tensor,
    inject: tuple[str, nn.Module],
    value: torch.Tensor,
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
) -> torch.Tensor:
    """Jacobian of the section's output units at the first sample ``(units, P_in, d_in)``."""
    grads = [
        g for _, g in section_vjps(model, inputs[:1], inject, value[:1], layout, read, out_map)
    ]
    return torch.cat(grads)[:, 0]


def is_affine_on(
    model: nn.Module,
    inputs: torch.Tensor,
    inject: tuple[str, nn.Module],
    value: torch.Tensor,
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
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
    if v_pos.shape[1:] != jacobian.shape[1:]:
        return False
    fn = section_fn(model, inputs, inject, layout, read)
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(value.shape, generator=g, dtype=value.dtype).to(value.device)
    try:
        jv = torch.func.jvp(fn, (value,), (v,))[1]
    except (NotImplementedError, RuntimeError):
        return False
    got = (jv @ out_map.to(jv.device, jv.dtype)).reshape(value.shape[0], -1)  # (b, units)
    want = torch.einsum("usd,bsd->bu", jacobian, as_positions(v))
    scale = want.abs().amax(0).clamp_min(torch.finfo(want.dtype).tiny)  # per output unit
    rtol = max(AFFINE_RTOL, 1000 * torch.finfo(value.dtype).eps)
    return bool(((got - want).abs() <= rtol * scale).all())


@dataclass
class SectionGram:
    """Result of :func:`section_jacobian_gram`: ``M`` and, for affine sections, the Jacobian."""

    M: torch.Tensor
    affine: torch.Tensor | None


Batches = Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]]


def section_jacobian_gram(
    model: nn.Module,
    batches: Batches,
    inject: tuple[str, nn.Module],
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    consumers: list[Callable[[int, torch.Tensor, slice, torch.Tensor], None]] | None = None,
    detect_affine: bool = True,
) -> SectionGram:
    """``E[J^T J]`` of ``f^{read} @ out_map`` with respect to the input of ``inject``.

    Parameters
    ----------
    batches : model inputs (already on the model's device and dtype), or a function returning
        a fresh iterator over them; only then can the affine fast path make its extra pass.
    inject, read : ``(name, module)`` of the two node layers; ``read`` module ``None`` is
        the model output. The section between them must be a cut (:func:`check_cut`).
    out_map : ``(d_read, k)`` applied to the read activations.
    consumers : optional callbacks ``(batch_index, acts_in, units, grads)`` that reuse the
        same VJPs (edges, diagnostics). They are not called for an affine section.
    detect_affine : use the affine fast path (module docstring) when it applies.

    Returns
    -------
    :class:`SectionGram` with ``M`` ``(d_in, d_in)`` float64, normalised by ``N * P_in``
    (DESIGN §4), and the constant Jacobian ``(units, P_in, d_in)`` of an affine section.

    Raises
    ------
    NonFiniteError
        If a Jacobian has NaN/Inf (the node layer and batch are named).
    """
    if detect_affine and callable(batches):
        J = _affine_on_all(model, batches(), inject, read, out_map)
        if J is not None:
            Jd = J.to(torch.float64).reshape(-1, J.shape[-1])
            return SectionGram(Jd.T @ Jd / J.shape[1], J)
    acc: JacobianGramAccumulator | None = None
    for b, x in enumerate(batches() if callable(batches) else batches):
        acts, layouts = capture(model, x, {inject[0]: inject[1]})
        acts_in, layout = acts[inject[0]].detach(), layouts[inject[0]]
        if acc is None:
            acc = JacobianGramAccumulator(acts_in.shape[-1], device=acts_in.device)
        acc.add_samples(acts_in.shape[0] * as_positions(acts_in).shape[1])
        with torch.no_grad():
            for units, grads in section_vjps(
                model, x, inject, acts_in, layout, read, out_map, memory_budget
            ):
                acc.update(grads)
                for consume in consumers or []:
                    consume(b, acts_in, units, grads)
        # NaN/Inf in any Jacobian entry propagates into the running sum of J^T J
        check_finite(acc.running_sum, f"Jacobians (towards {read[0]!r})", inject[0], b)
    if acc is None:
        raise DataError("data holds no batches")
    return SectionGram(acc.value, None)


def _affine_on_all(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    inject: tuple[str, nn.Module],
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
) -> torch.Tensor | None:
    """The section's constant Jacobian if it is affine on every batch, else ``None``.

    The first batch decides cheaply for non-affine sections (one single-sample Jacobian and
    one JVP); affine sections are then checked on every batch.
    """
    J: torch.Tensor | None = None
    for b, x in enumerate(batches):
        acts, layouts = capture(model, x, {inject[0]: inject[1]})
        value, layout = acts[inject[0]].detach(), layouts[inject[0]]
        with torch.no_grad():
            if J is None:
                J = affine_jacobian(model, x, inject, value, layout, read, out_map)
                check_finite(J, f"Jacobians (towards {read[0]!r})", inject[0], b)
            if not is_affine_on(model, x, inject, value, layout, read, out_map, J, seed=b):
                return None
    return J


def jacobian_gram(
    model: nn.Module,
    batches: Batches,
    inject: tuple[str, nn.Module],
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """``M = E[J^T J]`` ``(d_in, d_in)``; see :func:`section_jacobian_gram`."""
    return section_jacobian_gram(model, batches, inject, read, out_map, memory_budget).M
