"""Synchronized neurons: blocks of ReLUs with identical gate patterns (seed 004 §3.2).

Two neurons are *synchronized* when their firing patterns agree on every data point,
``r_i(x) = r_j(x)`` (eq. 17); synchronized neurons form blocks ``S_a``. Within a block the
weights can be re-mixed, ``W^l -> C W^l``, ``W^{l+1} -> W^{l+1} C^{-1}`` with ``C``
block-diagonal (eqs 18-19), which gives the degeneracy ``N^{l+1} = sum_a s_a^2`` (eq. 22),
``s_a = dim span{p_k : k in S_a}`` over the data (eq. 21); the naive count is
``sum_a |S_a|^2``.

Near-synchronisation. Eq. 20 as printed, ``|r_a|^2 = (1/|D|) sum_x sum_{i,i' in S_a}
(r_i p_i - r_i' p_i')^2``, compares the activations ``f_i = r_i p_i`` themselves: it is zero
only for *identical* neurons and changes when one neuron's in- and out-weights are rescaled
(``f_i -> c f_i``), which leaves the network unchanged. We report it per block and pairwise,
and also the scale-invariant pairwise measure

.. math::
    \\sigma_{ij} = \\tfrac12\\Big(\\frac{E[m_{ij} p_i^2]}{E[p_i^2]}
                  + \\frac{E[m_{ij} p_j^2]}{E[p_j^2]}\\Big) \\in [0, 1],
    \\qquad m_{ij}(x) = [\\mathrm{gate}_i(x) \\ne \\mathrm{gate}_j(x)],

the share of each neuron's pre-activation energy on the points where the gates disagree —
the points where mixing the two neurons (``C`` above) changes the output, in proportion to
``p^2`` there. It is invariant to permutations and to positive rescaling of either neuron, and
zero for exactly synchronized pairs.

Approximate synchrony is not transitive, so blocks are the **connected components** of the
pairwise relation ``distance_ij <= tol`` (single linkage): a chain i~j~k puts i and k into one
block even when ``distance_ik > tol``; ``block_spread`` reports the largest pairwise distance
inside each block so such chains are visible. With ``tol = 0`` blocks are exact: identical
gate patterns, found from the co-firing counts (a matrix product), whatever the measure.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse.csgraph import connected_components
from torch import nn

from interbasis.build import prepare
from interbasis.degeneracy.gates import GateStats, accumulate, resolve_post
from interbasis.degeneracy.ranks import RTOL, check_rtol, gram_rank
from interbasis.errors import DataError
from interbasis.train_mode import TrainMode

Measure = Literal["scale_invariant", "eq20"]
MEASURES = ("scale_invariant", "eq20")


@dataclass(frozen=True)
class SyncBlocks:
    """Synchronized blocks of one ReLU-like layer (result of :func:`synchronized_neurons`).

    Attributes
    ----------
    layer : module receiving the pre-activations ``p``.
    post : where the activations ``f`` were read (``"<module>:input"`` or ``":output"``).
    n_samples : samples (positions pooled) the statistics are over.
    width : number of neurons ``d``.
    tol, measure : the rule that formed the blocks (``tol = 0``: identical gate patterns).
    slope : negative-side slope of the activation (0 for ReLU).
    blocks : the blocks ``S_a`` (sorted neuron indices), ordered by their smallest neuron;
        every neuron is in exactly one block (singletons included).
    ranks : ``s_a`` of eq. 21, the rank of the block's pre-activations on the data.
    ranks_with_constant : ``s_a`` with the bias constant ``1`` joined to a block whose gate
        is constant on the data (always on; for a leaky ReLU also never on, slope ``a``):
        such neurons are linear there, like the constant, so their biases can absorb it.
        Other blocks (and a ReLU's dead block) unchanged.
    dead, always_on : neurons whose gate is never / always on ("dead" for a leaky ReLU means
        always on the slope-``a`` side).
    block_eq20 : ``|r_a|^2`` of eq. 20 as printed, per block.
    block_spread : largest pairwise ``distance`` inside each block (0 for singletons).
    hamming : (d, d) fraction of samples on which two gates differ.
    distance : (d, d) the scale-invariant measure ``sigma_ij`` (module docstring).
    eq20_pairs : (d, d) ``E[(f_i - f_j)^2]``, eq. 20's pairwise term.
    """

    layer: str
    post: str
    n_samples: int
    width: int
    tol: float
    measure: str
    slope: float
    blocks: tuple[tuple[int, ...], ...]
    ranks: tuple[int, ...]
    ranks_with_constant: tuple[int, ...]
    dead: tuple[int, ...]
    always_on: tuple[int, ...]
    block_eq20: tuple[float, ...]
    block_spread: tuple[float, ...]
    hamming: torch.Tensor
    distance: torch.Tensor
    eq20_pairs: torch.Tensor

    @property
    def labels(self) -> np.ndarray:
        """(d,) block index of every neuron."""
        out = np.empty(self.width, dtype=np.int64)
        for a, block in enumerate(self.blocks):
            out[list(block)] = a
        return out

    @property
    def naive(self) -> int:
        """``sum_a |S_a|^2``: the count when every block were full rank."""
        return sum(len(b) ** 2 for b in self.blocks)

    @property
    def predicted(self) -> int:
        """``N = sum_a s_a^2`` (seed 004 eq. 22)."""
        return sum(s * s for s in self.ranks)

    def summary(self) -> str:
        """One line per block of size > 1, plus totals."""
        lines = [
            f"{self.layer}: {self.width} neurons, {len(self.blocks)} blocks "
            f"({sum(len(b) > 1 for b in self.blocks)} of size > 1), dead {len(self.dead)}, "
            f"always on {len(self.always_on)}; naive sum|S|^2 = {self.naive}, "
            f"eq. 22 sum s^2 = {self.predicted}"
        ]
        for b, s, e in zip(self.blocks, self.ranks, self.block_eq20, strict=True):
            if len(b) > 1:
                lines.append(f"  S = {list(b)}: s = {s}, eq. 20 |r|^2 = {e:.3g}")
        return "\n".join(lines)


def check_tol(tol: float) -> float:
    """Return ``tol`` as a float; :class:`DataError` unless finite and ``>= 0``."""
    value = float(tol)
    if not math.isfinite(value) or value < 0:
        raise DataError(f"tol must be a finite number >= 0, got {tol!r}")
    return value


def check_measure(measure: object) -> None:
    """:class:`DataError` unless ``measure`` is one of :data:`MEASURES`."""
    if measure not in MEASURES:
        raise DataError(f"measure must be one of {MEASURES}, got {measure!r}")


def pair_measures(stats: GateStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hamming, distance, eq20_pairs)``, each ``(d, d)``, from the streamed statistics."""
    n = max(stats.count, 1)
    c = stats.on_count
    hamming = (c[:, None] + c[None, :] - 2 * stats.co_on) / n
    energy = stats.pre_gram.diagonal()[:-1]  # sum_x p_i^2
    own = stats.p2_on_on.diagonal()  # sum_x p_i^2 on_i
    mismatch = own[:, None] + stats.p2_on - 2 * stats.p2_on_on  # sum_x p_i^2 m_ij
    share = torch.where(energy[:, None] > 0, mismatch / energy.clamp_min(1e-300)[:, None], 0.0)
    distance = (0.5 * (share + share.T)).clamp(0.0, 1.0)
    distance.fill_diagonal_(0.0)
    sq = stats.post_gram.diagonal()
    eq20 = ((sq[:, None] + sq[None, :] - 2 * stats.post_gram) / n).clamp_min(0.0)
    eq20.fill_diagonal_(0.0)
    return hamming, distance, eq20


def blocks_from_stats(
    stats: GateStats, post: str, tol: float = 0.0, measure: Measure = "scale_invariant",
    rtol: float = RTOL,
) -> SyncBlocks:  # fmt: skip
    """Form the blocks and their ranks from :class:`GateStats` (see module docstring)."""
    tol, rtol = check_tol(tol), check_rtol(rtol)
    check_measure(measure)
    d, n = stats.width, max(stats.count, 1)
    hamming, distance, eq20 = pair_measures(stats)
    if tol == 0.0:
        c = stats.on_count
        linked = (c[:, None] + c[None, :] - 2 * stats.co_on) == 0
    else:
        linked = (distance if measure == "scale_invariant" else eq20) <= tol
    _, comp = connected_components(linked.cpu().numpy(), directed=False)
    order: dict[int, list[int]] = {}
    for i, k in enumerate(comp.tolist()):
        order.setdefault(k, []).append(i)
    blocks = tuple(tuple(b) for b in sorted(order.values()))
    gram = stats.pre_gram / n
    always = tuple(int(i) for i in (stats.on_count == stats.count).nonzero().flatten())
    dead = tuple(int(i) for i in (stats.on_count == 0).nonzero().flatten())
    slope = 0.0 if stats.slope != stats.slope else stats.slope
    linear = set(always) | (set(dead) if slope > 0 else set())  # ReLU's never-on are dead
    ranks, ranks_c, b_eq20, spread = [], [], [], []
    for b in blocks:
        idx = list(b)
        s = gram_rank(gram[idx][:, idx], rtol)
        ranks.append(s)
        joins = idx[0] in linear  # constant gate: the bias constant joins (see ranks_with_constant)
        ranks_c.append(gram_rank(gram[[*idx, d]][:, [*idx, d]], rtol) if joins else s)
        b_eq20.append(float(eq20[idx][:, idx].sum()))
        spread.append(float(distance[idx][:, idx].max()))
    return SyncBlocks(
        layer=stats.name, post=post, n_samples=stats.count, width=d, tol=tol, measure=measure,
        slope=slope, blocks=blocks,
        ranks=tuple(ranks), ranks_with_constant=tuple(ranks_c),
        dead=dead,
        always_on=always, block_eq20=tuple(b_eq20), block_spread=tuple(spread),
        hamming=hamming.cpu(), distance=distance.cpu(), eq20_pairs=eq20.cpu(),
    )  # fmt: skip


def warn_small(name: str, n: int, width: int, what: str) -> None:
    """Warn (with the numbers) when ``n`` samples cannot show ``width`` independent directions."""
    if n < width:
        warnings.warn(
            f"{name!r}: {n} samples (positions pooled) for {what} of width {width}: ranks are "
            f"capped at {n}, so nullities (degeneracy counts) are inflated by up to "
            f"{width - n}; use at least {width} samples",
            UserWarning,
            stacklevel=3,
        )


def synchronized_neurons(
    model: nn.Module,
    data: Any,
    layer: str,
    tol: float = 0.0,
    *,
    post: str | None = None,
    measure: Measure = "scale_invariant",
    rtol: float = RTOL,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    train_mode: TrainMode = "eval",
) -> SyncBlocks:
    """Blocks of synchronized ReLUs of one layer on ``data`` (seed 004 eqs 17, 20-22).

    Parameters
    ----------
    model : the network.
    data : a tensor or an iterable of batches (DESIGN §5).
    layer : module receiving the layer's pre-activations ``p`` (``"acts.0"`` of an MLP,
        ``"blocks.0.mlp.hook_pre"`` of a transformer).
    tol : 0 for exact synchronisation (identical gate patterns); ``> 0`` links pairs whose
        ``measure`` is at most ``tol`` and takes connected components.
    post : module whose *input* is the activations ``f``; default: the output of ``layer``
        (an activation module), or ``...hook_post`` for a ``...hook_pre`` layer.
    measure : ``"scale_invariant"`` (``sigma_ij`` in [0, 1]) or ``"eq20"`` (eq. 20 as printed,
        ``E[(f_i - f_j)^2]``, in squared activation units); only used when ``tol > 0``.
    rtol : eigenvalues below ``rtol`` times the largest (of the block's normalised Gram)
        count as zero when computing ``s_a``.
    batch_size, dtype, device, train_mode : as in :func:`interbasis.build_bases`.

    Returns
    -------
    SyncBlocks

    Raises
    ------
    DataError
        ``tol < 0``, an unknown ``measure``, or a layer that is not ReLU-like (``f`` is not
        ``max(p, 0)`` or a leaky ReLU of ``p``; leaky ReLUs are supported, their gate is the
        sign of ``p`` as for ReLU).
    NodeLayerError
        Unknown module names.

    Warns
    -----
    UserWarning
        When there are fewer samples than neurons (ranks and blocks are then unreliable).
    """
    tol, rtol = check_tol(tol), check_rtol(rtol)
    check_measure(measure)
    post_name, where = resolve_post(model, layer, post)
    run = prepare(
        model, data, [layer], dtype=dtype, device=device, batch_size=batch_size, progress=False,
        train_mode=train_mode,
    )  # fmt: skip
    (stats,) = accumulate(run.model, run.batches(), [(layer, post_name, where)])
    warn_small(layer, stats.count, stats.width, "pre-activations")
    return blocks_from_stats(stats, f"{post_name}:{where}", tol, measure, rtol)
