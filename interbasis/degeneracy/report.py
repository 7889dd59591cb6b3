"""Degeneracy report: every mechanism of seed 004 §3 counted per layer, next to the Hessian.

For each stage ``p^{l+1} = W^l f^l + b^l`` (input width ``d̄_l`` after bias folding, output
width ``d_{l+1}``) and each ReLU-like layer between stages, the predicted number of free
directions of the behavioural loss at ``theta*`` is

.. math::
    N = \\sum_l \\big[g_l d_{l+1} + \\kappa_l \\bar d_l - g_l \\kappa_l + z_l\\big]
        + \\sum_h \\sum_a s_a t_a ,

- ``g_l``: nullity of the uncentred, bias-folded activation Gram ``G^l`` (eqs 13-14): each
  null vector ``c`` gives the ``d_{l+1}`` directions ``u c^T`` of ``W^l`` (a dead neuron of
  ``f^l`` is one such ``c``: its out-weights);
- ``kappa_l``: nullity of ``K`` of the stage's output pre-activations (eq. 15; 0 at the model
  output): each null vector ``v`` gives the ``d̄_l`` directions ``v w^T`` (a dead neuron's
  in-weights and bias);
- ``- g_l kappa_l``: **overlap removed**, the directions ``v c^T`` counted by both;
- ``z_l``: *co-silent weights* (not in the seed): a weight from neuron ``i`` of one ReLU layer
  to neuron ``j`` of the next whose gradient vanishes on every sample because ``f_i(x) = 0``
  wherever ``j``'s gate is on (``i`` and ``j`` never fire together), excluding dead ``i``
  (already in ``g_l``) and ``j`` with ``K_jj = 0`` (already in ``kappa_l``);
- ``s_a t_a``: synchronisation (eqs 18-22). Block ``S_a`` can be re-mixed by any ``E = u v^T``
  on ``S_a x S_a``. If ``v`` is a null vector of the block's pre-activation Gram, ``E`` lies in
  G-directions; if ``u`` is a null vector of ``K`` restricted to the block, in K-directions.
  **Removing those overlaps** leaves ``s_a t_a`` new directions, with ``s_a`` of eq. 21 and
  ``t_a`` the rank of ``K`` on the block. Eq. 22's ``sum s_a^2`` assumes ``t_a = s_a``; when a
  block's pre-activations are dependent but its Jacobians are not, ``s_a t_a > s_a^2`` and the
  Hessian agrees with ``s_a t_a`` (tests). The bias constant, always 1, behaves as an
  always-on neuron and joins the block of always-on (linear) neurons in ``s_a``: shifting
  their biases is absorbed by the next stage's bias. For a leaky ReLU the never-on neurons
  are linear too (slope ``a``) and join the same block.
- **self-synchronisation vs rescaling**: the per-neuron rescaling symmetry is the diagonal of
  ``C``; it is one of the ``s_a t_a`` (1 for a live singleton) and not added again. A dead
  neuron has ``t_a = 0``: its rescaling lies in its K (in-weights) and G (out-weights)
  directions, so its self-synchronisation term is removed.

Measured: the nullity of the behavioural-loss Hessian (:mod:`.hessian`). The prediction is
exact for one-hidden-layer ReLU networks in general position (and for the hand-built cases of
the tests); in deeper networks gating creates further, region-local dependencies that no
mechanism here counts, so measured >= predicted is typical (docs/degeneracy.md).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from interbasis.build import activation_grams, prepare
from interbasis.capture import OUTPUT
from interbasis.data import iter_batches
from interbasis.degeneracy.gates import GateStats, Where, accumulate
from interbasis.degeneracy.hessian import HessianNullity, LossFn, Method, check_behavioural_loss
from interbasis.degeneracy.hessian import behavioural_hessian_nullity as _hessian_nullity
from interbasis.degeneracy.ranks import RTOL, check_rtol, gram_nullity, gram_rank
from interbasis.degeneracy.stages import Stage, check_stages, mlp_stages
from interbasis.degeneracy.sync import (
    Measure,
    SyncBlocks,
    blocks_from_stats,
    check_measure,
    check_tol,
    warn_small,
)
from interbasis.errors import DataError
from interbasis.jacobians import jacobian_gram
from interbasis.section import Section


@dataclass(frozen=True)
class StageCounts:
    """Counts of one stage (see the module docstring for the formula)."""

    stage: Stage
    n_params: int
    in_width: int
    out_width: int
    g: int
    kappa: int
    co_silent: int

    @property
    def g_dirs(self) -> int:
        """Free directions from the activation Gram's nullity: ``g * out_width``."""
        return self.g * self.out_width

    @property
    def k_dirs(self) -> int:
        """Free directions from the Jacobian Gram's nullity: ``kappa * in_width``."""
        return self.kappa * self.in_width

    @property
    def overlap(self) -> int:
        """Directions counted by both: ``g * kappa``."""
        return self.g * self.kappa

    @property
    def total(self) -> int:
        """Free directions of the stage: ``g_dirs + k_dirs - overlap + co_silent``."""
        return self.g_dirs + self.k_dirs - self.overlap + self.co_silent


@dataclass(frozen=True)
class LayerCounts:
    """Synchronisation counts of one ReLU-like layer.

    ``blocks`` are ``sync.blocks``, except that for a leaky ReLU the always-on and never-on
    blocks merge (both are linear on the data); ``s`` (with the bias constant joined to that
    linear block) and ``t`` are aligned with ``blocks``.
    """

    sync: SyncBlocks
    blocks: tuple[tuple[int, ...], ...]
    s: tuple[int, ...]
    t: tuple[int, ...]
    rescalings: int

    @property
    def counted(self) -> int:
        """``sum_a s_a t_a``: what enters the predicted total."""
        return sum(s * t for s, t in zip(self.s, self.t, strict=True))

    @property
    def removed(self) -> int:
        """``sum_a |S_a|^2 - sum_a s_a t_a``: block mixings already counted by G or K."""
        return self.sync.naive - self.counted


@dataclass(frozen=True)
class DegeneracyReport:
    """Result of :func:`degeneracy_report`; ``str(report)`` is the table."""

    stages: tuple[StageCounts, ...]
    layers: tuple[LayerCounts, ...]
    measured: HessianNullity | None
    rtol: float
    tol: float
    n_params: int
    whole_model: bool

    @property
    def predicted(self) -> int:
        """Predicted nullity (module docstring formula)."""
        return sum(s.total for s in self.stages) + sum(h.counted for h in self.layers)

    def table(self) -> str:
        """The report as a fixed-width text table."""
        head = (
            f"degeneracy report (seed 004 §3): {len(self.stages)} stages, {len(self.layers)} "
            f"ReLU layers, P = {self.n_params} parameters"
            + ("" if self.whole_model else " (a subset of the model's)")
        )
        names = [f"{s.stage.input} -> {s.stage.output}" for s in self.stages]
        w = max([24, *map(len, names), *(len(h.sync.layer) for h in self.layers)]) + 2
        rows = [
            head,
            f"zero: eigenvalues <= {self.rtol:g} x the largest (normalised Grams G, K, block "
            f"Grams; Hessian); synchrony tol = {self.tol:g}",
            "",
            f"{'stage (input -> output)':<{w}}{'P':>6}{'in':>5}{'out':>5}{'nullG':>6}"
            f"{'nullK':>6}{'G dirs':>7}{'K dirs':>7}{'-G∩K':>6}{'cosil':>6}{'total':>6}",
        ]
        for s, name in zip(self.stages, names, strict=True):
            rows.append(
                f"{name:<{w}}{s.n_params:>6}{s.in_width:>5}{s.out_width:>5}{s.g:>6}"
                f"{s.kappa:>6}{s.g_dirs:>7}{s.k_dirs:>7}{-s.overlap:>6}{s.co_silent:>6}"
                f"{s.total:>6}"
            )
        rows += [
            "",
            f"{'ReLU layer':<{w}}{'d':>6}{'dead':>5}{'on':>5}{'>1':>6}{'Σ|S|²':>7}"
            f"{'Σs²':>7}{'Σs·t':>6}{'-ovl':>6}{'resc':>6}",
        ]
        for h in self.layers:
            b = h.sync
            multi = sum(len(x) > 1 for x in b.blocks)
            rows.append(
                f"{b.layer:<{w}}{b.width:>6}{len(b.dead):>5}{len(b.always_on):>5}"
                f"{multi:>6}{b.naive:>7}{b.predicted:>7}{h.counted:>6}{-h.removed:>6}"
                f"{h.rescalings:>6}"
            )
        stage_sum = sum(s.total for s in self.stages)
        sync_sum = sum(h.counted for h in self.layers)
        rows += [
            "",
            f"predicted nullity: {self.predicted} (stages {stage_sum} + synchronisation "
            f"{sync_sum}; rescalings are inside Σs·t)",
        ]
        m = self.measured
        if m is None:
            rows.append("measured nullity:  not computed (hessian=None)")
        else:
            bound = "" if m.complete else " (upper bound: Lanczos stopped above the threshold)"
            rows.append(
                f"measured nullity:  {m.nullity}{bound} ({m.method} Hessian of the behavioural "
                f"loss, P = {m.n_params}, |λ| <= {m.rtol:g} λmax = {m.threshold:.3g}; zero "
                f"eigenvalues up to {m.largest_zero:.2g}, non-zero from {m.smallest_nonzero:.2g})"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _numel(model: nn.Module, names: Sequence[str]) -> int:
    named = dict(model.named_parameters())
    return sum(int(named[n].numel()) for n in names)


def degeneracy_report(
    model: nn.Module,
    data: Any,
    stages: Sequence[Stage] | None = None,
    *,
    tol: float = 0.0,
    measure: Measure = "scale_invariant",
    rtol: float = RTOL,
    hessian: Method | None = "auto",
    loss: LossFn | None = None,
    batch_size: int | None = None,
) -> DegeneracyReport:
    """Count the degeneracy mechanisms of seed 004 §3 per layer and measure the Hessian nullity.

    Parameters
    ----------
    model : the trained network (not modified).
    data : model inputs (tensor or iterable of batches; the reference outputs are the model's).
    stages : the affine maps to count over; default :func:`mlp_stages` (an MLP of
        ``nn.Linear`` and ReLU/LeakyReLU modules). For a transformer MLP block use
        :func:`mlp_block_stages`; the Hessian is then restricted to the stages' parameters.
    tol, measure : synchrony rule of :func:`synchronized_neurons` (0: identical gates).
    rtol : relative zero threshold for every rank and for the Hessian eigenvalues.
    hessian : ``"auto"``, ``"exact"``, ``"ggn"`` (see :func:`behavioural_hessian_nullity`) or
        ``None`` to skip the measurement.
    loss : behavioural loss ``l(outputs, reference)``; a task loss raises :class:`DataError`.
    batch_size : batches for the streamed statistics.

    Returns
    -------
    DegeneracyReport
        ``print(report)`` shows the table; ``report.predicted`` and ``report.measured``.
    """
    tol, rtol = check_tol(tol), check_rtol(rtol)
    check_measure(measure)  # fail before the expensive part
    model64 = copy.deepcopy(model).to(torch.float64).eval()
    device = next((p.device for p in model64.parameters()), torch.device("cpu"))

    def batches() -> Iterator[torch.Tensor]:
        return iter_batches(data, batch_size, device, torch.float64)

    with torch.no_grad():
        reference = model64(next(batches()))
    out_width = int(reference.shape[-1])
    if loss is not None:  # fail before the expensive part
        check_behavioural_loss(loss, reference)
    if stages is None:
        stages = mlp_stages(model64, next(batches()))
    stages = list(stages)
    check_stages(model, stages)
    names = [s.input for s in stages]
    grams = activation_grams(model, data, names, batch_size=batch_size, device=device)
    K = {s.output: partial_k(model, data, s.output, out_width, batch_size, device) for s in stages}
    K.pop(OUTPUT, None)
    hidden: list[tuple[str, str, Where]] = [
        (stages[i].output, stages[i + 1].input, "input") for i in range(len(stages) - 1)
    ]
    cross: dict[int, torch.Tensor] = {}

    def co_fire(masks: list[torch.Tensor]) -> None:  # masks = [on_0, nz_0, on_1, nz_1, ...]
        for h in range(1, len(hidden)):
            term = masks[2 * h].T @ masks[2 * h - 1]  # sum_x on_h(x)_j [f_{h-1}(x)_i != 0]
            cross[h] = cross[h] + term if h in cross else term

    widths = [K[s.output].shape[0] if s.output in K else out_width for s in stages]
    n_params = [_checked_numel(model, i, s, grams[s.input].gram(s.bias).shape[0], widths[i])
                for i, s in enumerate(stages)]  # fmt: skip
    gate_stats = accumulate(model64, batches(), hidden, co_fire) if hidden else []
    layers = []
    for h, st in enumerate(gate_stats):
        warn_small(st.name, st.count, st.width, "pre-activations")
        sync = blocks_from_stats(st, f"{hidden[h][1]}:input", tol, measure, rtol)
        layers.append(_layer_counts(st, sync, K[st.name], rtol))
        _warn_sparse_regions(st, grams[stages[h].input].dim + stages[h].bias)
    counts = []
    for i, s in enumerate(stages):
        acc = grams[s.input]
        G = acc.gram(fold_bias=s.bias)
        warn_small(s.input, acc.count, G.shape[0], "the activation Gram")
        kappa = gram_nullity(K[s.output], rtol) if s.output in K else 0
        co_silent = 0
        if 0 < i < len(stages) - 1:  # input and output are both ReLU layers
            co_silent = _co_silent(cross[i], gate_stats[i - 1].nonzero, K[s.output], rtol)
        g = gram_nullity(G, rtol)
        counts.append(StageCounts(s, n_params[i], G.shape[0], widths[i], g, kappa, co_silent))
    params = [p for s in stages for p in s.params]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    whole = sorted(params) == sorted(trainable)
    measured = None
    if hessian is not None:
        measured = _hessian_nullity(
            model, data, None if whole else params, loss=loss, rtol=rtol, method=hessian,
            batch_size=batch_size,
        )  # fmt: skip
    total = sum(n_params)
    return DegeneracyReport(tuple(counts), tuple(layers), measured, rtol, tol, total, whole)


def _checked_numel(model: nn.Module, i: int, stage: Stage, in_width: int, out_width: int) -> int:
    """Number of entries of the stage's parameters; :class:`DataError` unless ``out * in``."""
    n = _numel(model, stage.params)
    if n != out_width * in_width:
        raise DataError(
            f"stage {i} ({stage.input!r} -> {stage.output!r}): its parameters "
            f"{list(stage.params)} have {n} entries, but input width {in_width} (bias folded: "
            f"{stage.bias}) and output width {out_width} imply {out_width * in_width}"
        )
    return n


def _layer_counts(st: GateStats, sync: SyncBlocks, k: torch.Tensor, rtol: float) -> LayerCounts:
    """``s_a`` (bias constant joined to the linear block) and ``t_a`` of the counted blocks."""
    blocks = _count_blocks(sync)
    pre = st.pre_gram / max(st.count, 1)
    linear = set(sync.always_on) | (set(sync.dead) if sync.slope > 0 else set())
    s = []
    for b in map(list, blocks):
        idx = [*b, st.width] if b[0] in linear else b  # index d: the constant
        s.append(gram_rank(pre[idx][:, idx], rtol))
    t = tuple(gram_rank(k[list(b)][:, list(b)], rtol) for b in blocks)
    rescalings = int(((st.nonzero > 0) & _relevant(k, rtol)).sum())
    return LayerCounts(sync, blocks, tuple(s), t, rescalings)


def partial_k(
    model: nn.Module,
    data: Any,
    wrt: str,
    out_width: int,
    batch_size: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``K = E[J^T J]``, ``J = d f^out / d p`` at the input ``p`` of ``wrt`` (seed 004 eq. 15).

    ``J`` is the *partial* derivative with every other path (e.g. a residual stream around a
    transformer MLP block) held at its value: the factor of the weight gradient in eq. 11.
    So unlike :func:`interbasis.output_jacobian_gram` the section need not be a cut.
    Returns ``(d, d)`` float64; ``wrt="output"`` gives the identity.
    """
    if wrt == OUTPUT:
        return torch.eye(out_width, dtype=torch.float64, device=device)
    run = prepare(model, data, [wrt, OUTPUT], dtype=torch.float64, device=device,
                  batch_size=batch_size, progress=False)  # fmt: skip
    eye = torch.eye(out_width, dtype=torch.float64, device=run.device)
    section = Section(run.model, run.injectable(wrt), run.module(OUTPUT))
    return jacobian_gram(section, run.batches(), eye, run.memory_budget)


def _warn_sparse_regions(st: GateStats, in_width: int) -> None:
    """Warn when a neuron is on (or off) on fewer samples than its input dimensions."""
    on = st.on_count
    few = torch.minimum(on, st.count - on)
    sparse = ((few > 0) & (few < in_width)).nonzero().flatten().tolist()
    if sparse:
        k = int(few[sparse].min())
        warnings.warn(
            f"{st.name!r}: neurons {sparse} are on (or off) on as few as {k} of {st.count} "
            f"samples, fewer than their {in_width} input dimensions (bias folded): their "
            "weights are pinned down only partly on that region, which adds free directions "
            "no mechanism here counts (measured nullity may exceed the prediction)",
            UserWarning,
            stacklevel=3,
        )


def _count_blocks(sync: SyncBlocks) -> tuple[tuple[int, ...], ...]:
    """``sync.blocks``, with a leaky ReLU's always-on and never-on blocks merged (linear)."""
    if not (sync.slope > 0 and sync.always_on and sync.dead):
        return sync.blocks
    on, off = int(sync.labels[sync.always_on[0]]), int(sync.labels[sync.dead[0]])
    rest = [b for a, b in enumerate(sync.blocks) if a not in (on, off)]
    return tuple(sorted([*rest, tuple(sorted(sync.blocks[on] + sync.blocks[off]))]))


def _relevant(k: torch.Tensor, rtol: float) -> torch.Tensor:
    """Neurons whose output Jacobian is not (numerically) zero: ``K_jj > rtol max K``."""
    d = k.diagonal()
    return d > rtol * float(d.max())


def _co_silent(cross: torch.Tensor, nonzero_in: torch.Tensor, k: torch.Tensor, rtol: float) -> int:
    """Weights ``(j, i)`` with ``sum_x on_j(x) [f_i(x) != 0] = 0``, ``f_i`` live, ``K_jj > 0``."""
    live = nonzero_in > 0
    return int(((cross == 0) & _relevant(k, rtol)[:, None] & live[None, :]).sum())
