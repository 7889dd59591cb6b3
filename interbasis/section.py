"""A section of the forward pass: the map from one node layer to the next.

``Section(model, inject, read)`` is ``f^{read}(f^{inject})``: the model run with the input of
module ``inject`` substituted (:func:`interbasis.capture.run_section`) and the input of
``read`` (or the model output) returned. It is the one place where capture, Jacobians and
edges meet: its forward, its Jacobians by VJPs (reverse mode, one pass per output unit) or by
JVPs (forward mode, one pass per input unit), its output units (exact or stochastic,
:mod:`interbasis.sources`), kept positions, and its cut check.

Jacobians come in chunks (:class:`JacobianChunk`) of gradients ``(units, batch, P_in, d_in)``
of the section's output units with respect to its input at the kept input positions, whatever
the mode, so that every reduction (M, squared edges) is written once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interbasis.capture import (
    InputLayout,
    OutputSelector,
    as_positions,
    batch_size_of,
    capture,
    run_section,
)
from interbasis.distributed import unit_range
from interbasis.errors import DataError, NodeLayerError
from interbasis.passes import (
    DEFAULT_MEMORY_BUDGET,
    JVP_PASS_COST,
    MODES,
    Mode,
    forward_mode_unavailable,
    jvp_pass_cost,
    one_note_per_missing_batching_rule,
    samples_per_chunk,
    units_per_chunk,
)
from interbasis.performance import SMALL_WORK, single_thread
from interbasis.sources import STREAM_M, OutputUnits, Sources, check_keep, output_units

log = logging.getLogger(__name__)


@dataclass
class JacobianChunk:
    """Gradients of a chunk of output units for a slice of the batch's samples.

    Attributes
    ----------
    samples : the samples of the batch this chunk covers.
    units : the output units (indices into ``out_units``).
    grads : ``(len(units), len(samples), P_in, d_in)`` at the kept input positions.
    out_units : the batch's output units (factors, node and source-sample of each unit).
    in_mask : ``(len(samples), P_in)`` bool, the real (non-padding) input positions, or None.
    """

    samples: slice
    units: slice
    grads: torch.Tensor
    out_units: OutputUnits
    in_mask: torch.Tensor | None = None


@dataclass
class Section:
    """The map from node layer ``inject`` to node layer ``read`` (module docstring).

    Parameters
    ----------
    model : the network (already on its device and dtype).
    inject : ``(name, module)`` whose input is substituted.
    read : ``(name, module)`` whose input is read; module ``None`` = the model output.
    output : selector of the model output (:func:`interbasis.capture.select_output`).
    keep_in, keep_out : positions of the two node layers that count (``None``: all;
        negative indices count from the end), e.g. ``[-1]`` for the last position.
    feature_dims : feature axis per node layer, where not the default
        (:func:`interbasis.capture.feature_dim_of`).
    rank : the rank in the seeds of stochastic sources (:mod:`interbasis.distributed`).
    """

    model: nn.Module
    inject: tuple[str, nn.Module]
    read: tuple[str, nn.Module | None]
    output: OutputSelector | None = None
    keep_in: Sequence[int] | None = None
    keep_out: Sequence[int] | None = None
    feature_dims: Mapping[str, int] | None = None
    rank: int = 0
    _jvp_failed: bool = field(default=False, repr=False)
    _jvp_cost: float | None = field(default=None, repr=False)
    _out_shapes: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.inject[0]!r} -> {self.read[0]!r}"

    # --- forward ---------------------------------------------------------------------------
    def capture_input(self, x: Any) -> tuple[torch.Tensor, InputLayout]:
        """The (detached) input activations of ``inject`` for model input ``x``, and layout.

        Runs without autograd: a forward pass with grad kept every intermediate of the whole
        model until its end (MiniLM, 256 sequences: +770 MiB)."""
        with torch.no_grad():
            acts, layouts = capture(
                self.model, x, {self.inject[0]: self.inject[1]}, feature_dims=self.feature_dims
            )
        return acts[self.inject[0]].detach(), layouts[self.inject[0]]

    def run(self, x: Any, value: torch.Tensor, layout: InputLayout) -> torch.Tensor:
        """``read``'s input with ``value`` substituted at ``inject``, shape as read."""
        fd = (self.feature_dims or {}).get(self.read[0])
        return run_section(self.model, x, self.inject, value, layout, self.read, self.output, fd)

    def fn(self, x: Any, layout: InputLayout) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> f^{read}`` as ``(batch, P_out, d_out)``; pure in ``v`` (for ``torch.func``)."""

        def section(v: torch.Tensor) -> torch.Tensor:
            return as_positions(self.run(x, v, layout))

        return section

    # --- positions -------------------------------------------------------------------------
    def kept_in(self, p_in: int) -> torch.Tensor | None:
        if self.keep_in is None:
            return None
        return check_keep(torch.as_tensor(list(self.keep_in)), p_in, self.inject[0])

    def kept_out(self, p_out: int) -> torch.Tensor | None:
        if self.keep_out is None:
            return None
        return check_keep(torch.as_tensor(list(self.keep_out)), p_out, self.read[0])

    def input_mask(self, x: Any, acts: torch.Tensor) -> torch.Tensor | None:
        """``(batch, P_kept)`` bool real positions of ``inject`` (``attention_mask``), or None."""
        a = as_positions(acts)
        mask = position_mask(x, a.shape[1])
        kept = self.kept_in(a.shape[1])
        return mask if mask is None or kept is None else mask[:, kept.to(mask.device)]

    def input_positions(self, acts: torch.Tensor) -> torch.Tensor:
        """``(batch, P_kept, d)``: activations of ``inject`` at its kept positions."""
        a = as_positions(acts)
        kept = self.kept_in(a.shape[1])
        return a if kept is None else a[:, kept.to(a.device)]

    # --- cut check -------------------------------------------------------------------------
    def check_cut(
        self,
        x: Any,
        acts_in: torch.Tensor,
        layout: InputLayout,
        acts_out: torch.Tensor,
        rtol: float = 1e-6,
    ) -> bool:
        """Check that ``read``'s input depends on the model input only through ``inject``'s.

        Substitutes the activations of the batch rolled by one sample into the forward pass of
        the unrolled batch; for a cut the result is the rolled ``acts_out``. A residual
        connection that bypasses ``inject`` breaks this. Needs a batch of at least two
        distinct samples: returns whether the check could be made.

        Raises
        ------
        NodeLayerError
            Naming both node layers, when the section is not a cut.
        """
        mask = position_mask(x, as_positions(acts_in).shape[1])
        if mask is not None and not bool((mask == mask[:1]).all()):
            # padding: the attention mask is an input of the section too, so only samples
            # with the same mask may swap activations
            same = (mask == mask[:1]).all(1).nonzero().flatten()
            x, acts_in, acts_out = _slice_inputs(x, same), acts_in[same], acts_out[same]
        if batch_size_of(x) < 2:
            return False
        rolled = torch.roll(acts_in, 1, dims=0)
        if torch.equal(rolled, acts_in):
            return False
        got = self.run(x, rolled, layout)
        want = torch.roll(acts_out, 1, dims=0)
        scale = want.abs().max().clamp_min(torch.finfo(want.dtype).tiny)
        err = (got - want).abs().max()
        if not err <= rtol * scale:
            raise NodeLayerError(
                f"node layers {self.inject[0]!r} -> {self.read[0]!r} are not consecutive "
                f"sections of the forward pass: with the input of {self.inject[0]!r} "
                f"substituted, the input of {self.read[0]!r} still depends on the model input "
                f"by another path (max deviation {float(err):.3g} relative to "
                f"{float(scale):.3g}). A residual connection around {self.inject[0]!r} does "
                "this, and so does randomness in the forward pass (dropout in train mode); "
                "choose node layers whose input carries the whole state (e.g. residual-stream "
                "hook points) and call model.eval()."
            )
        return True

    # --- Jacobians -------------------------------------------------------------------------
    def output_units(
        self,
        out_map: torch.Tensor,
        p_out: int,
        sources: Sources | None = None,
        batch: int = 0,
        stream: int = STREAM_M,
        n_samples: int = 1,
    ) -> OutputUnits:
        """Output units for one batch of ``n_samples`` (exact or stochastic,
        :func:`sources.output_units`)."""
        return output_units(
            out_map, p_out, sources, batch=batch, rank=self.rank, stream=stream,
            keep=self.kept_out(p_out), n_samples=n_samples,
        )  # fmt: skip

    def jacobians(
        self,
        x: Any,
        value: torch.Tensor,
        layout: InputLayout,
        out_map: torch.Tensor,
        *,
        sources: Sources | None = None,
        batch: int = 0,
        stream: int = STREAM_M,
        mode: Mode = "auto",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        unit_split: tuple[int, int] | None = None,
    ) -> Iterator[JacobianChunk]:
        """Gradients of the output units with respect to the kept input positions, in chunks.

        Parameters
        ----------
        value : ``(batch, [pos], d_in)`` the activations at ``inject`` for ``x``.
        out_map : ``(d_out, k)`` output basis directions (e.g. ``C^{l+1}`` without its
            constant row and node); output unit ``(t, i)`` is ``f^{read}_t @ out_map[:, i]``.
        sources : stochastic output units (:class:`interbasis.sources.Sources`) or ``None``.
        mode : ``"vjp"`` (one backward pass per output unit), ``"jvp"`` (one forward-mode
            pass per input unit) or ``"auto"`` (JVPs only when enough fewer:
            :func:`interbasis.passes.jvp_pass_cost`; falls back to VJPs where an operation
            has no forward-mode derivative).
        unit_split : ``(rank, world)``: only this rank's slice of the output units
            (:func:`interbasis.distributed.unit_range`), by VJPs.
        """
        if mode not in MODES:
            raise DataError(f"mode must be one of {MODES}, got {mode!r}")
        p_out = self._output_positions(x, value, layout)
        if out_map.shape[0] != p_out[1]:
            raise DataError(
                f"out_map has {out_map.shape[0]} rows but {self.read[0]!r} has width {p_out[1]}"
            )
        units = self.output_units(out_map, p_out[0], sources, batch, stream, value.shape[0])
        v = as_positions(value)
        kept = self.kept_in(v.shape[1])
        in_mask, out_mask = position_mask(x, v.shape[1]), position_mask(x, p_out[0])
        if in_mask is not None and kept is not None:
            in_mask = in_mask[:, kept.to(in_mask.device)]
        masks = (in_mask, out_mask)
        n_in = (v.shape[1] if kept is None else len(kept)) * v.shape[-1]
        if mode == "auto" and self._jvp_cost is None:
            self._jvp_cost = jvp_pass_cost(self.model)
        use_jvp = mode == "jvp" or (
            mode == "auto" and n_in * (self._jvp_cost or JVP_PASS_COST) < units.n_units
        )
        use_jvp = use_jvp and unit_split is None  # a slice of the units: by VJPs
        # small passes run on one thread (performance.single_thread)
        small = value.device.type == "cpu" and value.numel() * min(n_in, units.n_units) < SMALL_WORK
        with single_thread(small), one_note_per_missing_batching_rule():
            if use_jvp and not (mode == "auto" and self._jvp_failed):
                try:
                    yield from self._jvp_chunks(x, value, layout, units, kept, memory_budget, masks)
                    return
                except (NotImplementedError, RuntimeError) as err:
                    if not forward_mode_unavailable(err):
                        raise
                    if mode == "jvp":
                        raise DataError(
                            f'mode="jvp" failed on section {self.name}: an operation has no '
                            f"forward-mode derivative ({str(err).splitlines()[0]}); use "
                            'mode="vjp"'
                        ) from err
                    log.info("forward mode failed on section %s (%s); using VJPs", self.name, err)
                    self._jvp_failed = True
            span = range(units.n_units) if unit_split is None else unit_range(
                units.n_units, *unit_split)  # fmt: skip
            yield from self._vjp_chunks(x, value, layout, units, kept, memory_budget, span, masks)

    def _output_positions(
        self, x: Any, value: torch.Tensor, layout: InputLayout
    ) -> tuple[int, int]:
        """``(P_out, d_out)``, from one forward pass per input shape."""
        key = tuple(value.shape[1:])
        if key not in self._out_shapes:
            with torch.no_grad():
                out = self.fn(x, layout)(value)
            self._out_shapes[key] = (out.shape[1], out.shape[2])
        return self._out_shapes[key]

    def _vjp_chunks(
        self,
        x: Any,
        value: torch.Tensor,
        layout: InputLayout,
        units: OutputUnits,
        kept: torch.Tensor | None,
        memory_budget: int,
        span: range,
        masks: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> Iterator[JacobianChunk]:
        in_mask, out_mask = masks
        b = value.shape[0]
        # one unit over the whole batch must fit the budget: split the samples where it does
        # not, so memory stays bounded for any batch size and sequence length
        p_out, d_out = self._output_positions(x, value, layout)
        b_sub = samples_per_chunk(b, value[0].numel(), p_out * d_out, memory_budget)
        for lo in range(0, b, b_sub):
            sl = slice(lo, min(lo + b_sub, b))
            xs, vs = (x, value) if b_sub == b else (_slice_inputs(x, sl), value[sl])
            out, vjp_fn = torch.func.vjp(self.fn(xs, layout), vs)[:2]
            nb = vs.shape[0]
            chunk = units_per_chunk(nb, vs[0].numel(), out[0].numel(), len(span), memory_budget)
            batched_vjp = torch.func.vmap(vjp_fn)
            m_in = in_mask[sl] if in_mask is not None else None
            for start in range(span.start, span.stop, chunk):
                idx = torch.arange(start, min(start + chunk, span.stop), device=out.device)
                cot = units.cotangents(idx, out, sl)
                if out_mask is not None:  # padding outputs are no units
                    cot = cot * out_mask[sl][None, :, :, None].to(cot)
                (grads,) = batched_vjp(cot)
                grads = grads.reshape(len(idx), nb, -1, value.shape[-1])
                if kept is not None:
                    grads = grads[:, :, kept.to(grads.device)]
                if m_in is not None:  # nor are padding inputs samples
                    grads = grads * m_in[None, :, :, None].to(grads)
                yield JacobianChunk(sl, slice(start, start + len(idx)), grads, units, m_in)

    def _jvp_chunks(
        self,
        x: Any,
        value: torch.Tensor,
        layout: InputLayout,
        units: OutputUnits,
        kept: torch.Tensor | None,
        memory_budget: int,
        masks: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> Iterator[JacobianChunk]:
        """Columns of the Jacobian by forward mode, over sub-batches sized to the budget."""
        in_mask, out_mask = masks
        b, d = value.shape[0], value.shape[-1]
        p_in = as_positions(value).shape[1]
        positions = torch.arange(p_in) if kept is None else kept.cpu()
        n_in, n_units = len(positions) * d, units.n_units
        # the full Jacobian of a sub-batch is kept: (n_units, b_sub, P_kept, d) float64
        b_sub = int(max(1, min(b, memory_budget // max(8 * n_units * n_in, 1))))
        for lo in range(0, b, b_sub):
            sl = slice(lo, min(lo + b_sub, b))
            xs = _slice_inputs(x, sl)
            vs = value[sl]
            fn = self.fn(xs, layout)

            def jvp_of(tangent: torch.Tensor, fn: Callable = fn, vs: torch.Tensor = vs) -> Any:
                return torch.func.jvp(fn, (vs,), (tangent,))[1]

            batched_jvp = torch.func.vmap(jvp_of)
            nb = vs.shape[0]
            numel_out = 0
            cols = torch.empty(n_in, nb, n_units, dtype=value.dtype, device=value.device)
            chunk = 1
            start = 0
            while start < n_in:
                idx = torch.arange(start, min(start + chunk, n_in))
                s, j = positions[idx // d], idx % d
                tangents = torch.zeros(len(idx), nb, p_in, d, dtype=value.dtype)
                tangents[torch.arange(len(idx)), :, s, j] = 1.0
                tangents = tangents.to(value.device).reshape(len(idx), *vs.shape)
                jv = batched_jvp(tangents)  # (c, nb, P_out, d_out)
                if out_mask is not None:
                    jv = jv * out_mask[sl][None, :, :, None].to(jv)
                cols[start : start + len(idx)] = units.project(jv, sl)
                start += len(idx)
                if numel_out == 0:  # size the chunks once the output size is known
                    numel_out = jv[0, 0].numel()
                    chunk = units_per_chunk(nb, vs[0].numel(), numel_out, n_in, memory_budget)
            grads = cols.reshape(len(positions), d, nb, n_units).permute(3, 2, 0, 1)
            m = in_mask[sl] if in_mask is not None else None
            if m is not None:
                grads = grads * m[None, :, :, None].to(grads)
            yield JacobianChunk(sl, slice(0, n_units), grads, units, m)


def position_mask(x: Any, p: int) -> torch.Tensor | None:
    """``(batch, p)`` bool: the real positions of a batch given with an ``attention_mask``
    (zeros mark padding, "not a sample"), when the layer's positions are the tokens'."""
    if not isinstance(x, Mapping):
        return None
    mask = x.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[1] != p:
        return None
    return mask != 0


def _slice_inputs(x: Any, sl: slice | torch.Tensor) -> Any:
    if isinstance(x, Mapping):
        return {k: v[sl] if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x[sl]
