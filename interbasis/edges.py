"""Edge weights between the nodes of two consecutive node layers.

All three kinds return ``E`` of shape ``(n_out, n_in)`` (float64, out x in), with zero rows and
columns for constant nodes (DESIGN §4: the constant is not an input a module reads).

- ``"squared"`` (default; DESIGN §4, integrated gradient at alpha = 1)::

      E_ij = 1/(N P_in) sum_x sum_t [sum_s d f_hat^{l+1}_{t,i}/d f_hat^l_{s,j} f_hat^l_{s,j}]^2

  input positions s are summed inside the square, output positions t outside it.
- ``"functional"`` (after rib's functional edges, whose path starts at zero rather than at the
  mean): integrated gradients of the squared
  change of each output node along the straight path from the layer's mean
  (non-constant nodes scaled by alpha) to the actual activations, with Gauss–Legendre
  quadrature in alpha::

      F_i(alpha) = sum_t (f_hat^{l+1}_{t,i}(1) - f_hat^{l+1}_{t,i}(alpha))^2
      E_ij = -1/(N P_in) sum_x int_0^1 dalpha  sum_s dF_i/d f_hat^l_{s,j}(alpha) f_hat^l_{s,j}

  By completeness ``sum_j E_ij = 1/(N P_in) sum_x F_i(0)``. Individual entries may be
  negative (an attribution); :func:`interbasis.build_graph` stores their absolute values.
- ``"weight"`` (affine sections only): the Jacobian is the same for every sample, so it is
  computed once and combined with the second moments of ``f_hat^l``; equals "squared" there.

The Jacobians are VJPs of chunks of output units under ``vmap`` (one forward pass per batch);
each chunk is reduced at once, so memory does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch

from interbasis.basis import Basis
from interbasis.capture import InputLayout, as_positions
from interbasis.distributed import Shard
from interbasis.errors import DataError, NonFiniteError
from interbasis.jacobians import (
    DEFAULT_MEMORY_BUDGET,
    Cotangents,
    affine_jacobian,
    batched_vjps,
    is_affine_on,
    unit_spread,
)
from interbasis.passes import Mode
from interbasis.section import JacobianChunk, Section, position_mask
from interbasis.sources import STREAM_EDGES, Sources, SourceSpread

EdgeKind = Literal["squared", "functional", "weight"]
EDGE_KINDS = ("squared", "functional", "weight")


def _nonconstant_pinv(basis: Basis) -> torch.Tensor:
    """Rows of ``C_pinv`` acting on the activations ``(n, d)``: ``d f / d f_hat``."""
    return basis.C_pinv[:, :-1] if basis.has_constant else basis.C_pinv


def _out_nodes(basis: Basis) -> tuple[torch.Tensor, int]:
    """``(d_out, k)`` map to the non-constant output nodes, and the index of the first one."""
    if basis.has_constant:
        return basis.C[:-1, 1:], 1
    return basis.C, 0


def _inputs(
    section: Section, x: Any, basis_in: Basis
) -> tuple[torch.Tensor, InputLayout, torch.Tensor]:
    """Activations ``f`` of the section's input, its layout, and ``f_hat`` ``(b, P_kept, n)``."""
    f, layout = section.capture_input(x)
    if f.shape[-1] != basis_in.dim:
        raise DataError(
            f"basis of {basis_in.name!r} has width {basis_in.dim} but the activations of "
            f"{section.inject[0]!r} have width {f.shape[-1]} (bases from another model?)"
        )
    f_hat = section.input_positions(basis_in.transform(f)).to(f.dtype)
    return f, layout, f_hat


def _padding_masks(
    section: Section, x: Any, p_in: int, p_out: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(b, P_in_kept)`` and ``(b, P_out)`` bool masks of the real (non-padding) positions
    of a batch given with an ``attention_mask``, or None (see :func:`position_mask`)."""
    in_mask, out_mask = position_mask(x, p_in), position_mask(x, p_out)
    kept = section.kept_in(p_in)
    if in_mask is not None and kept is not None:
        in_mask = in_mask[:, kept.to(in_mask.device)]
    return in_mask, out_mask


def _finish(
    E: torch.Tensor, count: int, basis_in: Basis, basis_out: Basis, name: str
) -> np.ndarray:
    E = E.detach() / max(count, 1)
    if not torch.isfinite(E).all():
        raise NonFiniteError(f"non-finite edge weights between {name!r} and {basis_out.name!r}")
    if basis_in.has_constant:
        E[:, 0] = 0.0
    if basis_out.has_constant:
        E[0, :] = 0.0
    return E.cpu().numpy()


class SquaredEdges:
    """Streaming accumulator of squared edges from section Jacobians (module docstring).

    Called as a consumer of :func:`interbasis.jacobians.section_jacobian_gram`:
    ``add(batch_index, acts_in, chunk)`` with the input activations at the kept positions of
    the chunk's samples ``(b, P_in, d)`` and a :class:`interbasis.section.JacobianChunk` whose
    output units are the output basis' non-constant nodes, exact or combined over output
    positions by stochastic sources (an unbiased estimate, module
    :mod:`interbasis.sources`). A chunk starting at unit 0 opens a new set of samples.
    """

    def __init__(self, basis_in: Basis, basis_out: Basis) -> None:
        self.basis_in, self.basis_out = basis_in, basis_out
        omap, self.first = _out_nodes(basis_out)
        self.k = omap.shape[1]
        self.E = torch.zeros(basis_out.n_nodes, basis_in.n_nodes, dtype=torch.float64)
        self.count = 0
        self.spread = SourceSpread()
        self._f_hat: torch.Tensor | None = None
        self._batch = -1
        self._samples = slice(0)
        self._pinv = _nonconstant_pinv(basis_in)

    def __call__(self, batch: int, acts_in: torch.Tensor, chunk: JacobianChunk) -> None:
        self.add(batch, acts_in, chunk)

    def add(self, batch: int, acts_in: torch.Tensor, chunk: JacobianChunk) -> None:
        if not chunk.out_units.per_node:
            raise DataError(
                "squared edges need exact output directions: the chunk's output units combine "
                "hidden directions (Sources(hidden=...)); use Sources(positions=S) or None"
            )
        new_batch = batch != self._batch
        if new_batch:
            self.spread.end_batch()
            self._batch = batch
        # new samples (a new batch, or a new slice of it): their coordinates
        if new_batch or chunk.samples != self._samples or self._f_hat is None:
            self._samples = chunk.samples
            self._f_hat = as_positions(self.basis_in.transform(acts_in)).to(chunk.grads.dtype)
            if chunk.in_mask is not None:  # padding positions are no samples
                self._f_hat = self._f_hat * chunk.in_mask[..., None].to(self._f_hat)
                self.count += int(chunk.in_mask.sum())
            else:
                self.count += self._f_hat.shape[0] * self._f_hat.shape[1]
            self._pinv = _nonconstant_pinv(self.basis_in).to(chunk.grads)
            self.E = self.E.to(chunk.grads.device)
        g_hat = chunk.grads @ self._pinv.T  # (c, b, P_in, n_in): d out_unit / d f_hat
        a = (g_hat * self._f_hat).sum(2).to(torch.float64)  # (c, b, n_in): sum over positions
        a2 = a.pow(2).sum(1)  # (c, n_in)
        units = torch.arange(chunk.units.start, chunk.units.stop, device=self.E.device)
        self.E.index_add_(0, self.first + units % self.k, a2)
        unit_spread(self.spread, chunk.out_units, chunk.units, a2.sum(1))

    def value(self, name: str) -> np.ndarray:
        """``(n_out, n_in)`` edges, normalised by ``N * P_in``."""
        return _finish(self.E, self.count, self.basis_in, self.basis_out, name)

    @property
    def relative_standard_error(self) -> float | None:
        """Of the total edge weight, from the spread of the source samples (0 when exact;
        ``None`` when one source sample per batch cannot show it)."""
        self.spread.end_batch()
        return self.spread.relative_standard_error if self.spread.total else 0.0


def squared_edges(
    section: Section,
    batches: Iterable[Any],
    basis_in: Basis,
    basis_out: Basis,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    sources: Sources | None = None,
    mode: Mode = "auto",
    accumulator: SquaredEdges | None = None,
    shard: Shard | None = None,
) -> np.ndarray:
    """Squared integrated-gradient edges at alpha = 1 (DESIGN §4), ``(n_out, n_in)``.

    With ``sources=Sources(positions=S)`` the output positions are combined by ``S``
    Rademacher sources per batch: an unbiased estimate (:mod:`interbasis.sources`).
    ``shard``: this rank's batches or output units; the sums are all-reduced at the end.
    """
    acc = accumulator if accumulator is not None else SquaredEdges(basis_in, basis_out)
    omap = _out_nodes(basis_out)[0]
    shard = shard if shard is not None else Shard()
    with shard.stage(f"edges {section.inject[0]}"):
        for b, x in enumerate(shard.batches(batches)):
            f, layout, _ = _inputs(section, x, basis_in)
            acts_in = section.input_positions(f)
            with torch.no_grad():
                for chunk in section.jacobians(
                    x, f, layout, omap, sources=sources, batch=b, stream=STREAM_EDGES,
                    mode=mode, memory_budget=memory_budget, unit_split=shard.unit_split,
                ):  # fmt: skip
                    acc.add(b, acts_in[chunk.samples], chunk)
    shard.reduce_squared_edges(acc)
    return acc.value(section.inject[0])


def gauss_legendre(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of ``n_points``-point Gauss–Legendre quadrature on [0, 1]."""
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
        raise DataError(f"n_points must be an integer >= 1, got {n_points!r}")
    nodes, weights = np.polynomial.legendre.leggauss(n_points)
    return (nodes + 1) / 2, weights / 2


def _path_cotangents(delta: torch.Tensor, om: torch.Tensor) -> Cotangents:
    """Cotangents of ``F_i`` for output nodes i: ``dF_i/d out = -2 delta_{., ., i} om[:, i]``."""

    def build(units: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        d = -2.0 * delta[..., units].permute(2, 0, 1)  # (c, b, P_out)
        return d[..., None] * om[:, units].T[:, None, None, :]

    return build


def functional_edges(
    section: Section,
    batches: Iterable[Any],
    basis_in: Basis,
    basis_out: Basis,
    n_points: int = 16,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    shard: Shard | None = None,
) -> np.ndarray:
    """Functional (alpha-integrated) edges, signed, ``(n_out, n_in)``; see module docstring.

    The path keeps the constant node at 1 and scales the other nodes by alpha:
    ``f(alpha) = f - (1 - alpha) (f_hat_{1:} @ C_pinv_{1:})``, so alpha = 1 is the actual
    activation and alpha = 0 its mean (plus whatever lies outside the basis).
    ``shard``: this rank's batches (when ranks split output units, every rank computes all).
    """
    alphas, weights = gauss_legendre(n_points)
    omap, first = _out_nodes(basis_out)
    k = omap.shape[1]
    E = torch.zeros(basis_out.n_nodes, basis_in.n_nodes, dtype=torch.float64)
    count = 0
    lo = 1 if basis_in.has_constant else 0
    if section.keep_in is not None or section.keep_out is not None:
        raise DataError(
            f'edges="functional" does not support keep_positions (section {section.name}); '
            'use edges="squared"'
        )
    shard = shard if shard is not None else Shard()
    with shard.stage(f"functional edges {section.inject[0]}"):
        for x in shard.batches(batches):
            f, layout, f_hat = _inputs(section, x, basis_in)
            pinv = _nonconstant_pinv(basis_in).to(f.device, f.dtype)
            E = E.to(f.device)
            om = omap.to(f.device, f.dtype)
            fn = section.fn(x, layout)
            centred = (f_hat[..., lo:] @ pinv[lo:]).reshape(f.shape)  # f - mean, in the basis span
            with torch.no_grad():
                out_1 = fn(f) @ om  # (b, P_out, k)
            in_mask, out_mask = _padding_masks(section, x, f_hat.shape[1], out_1.shape[1])
            if in_mask is not None:  # padding positions are no samples, nor output units
                f_hat = f_hat * in_mask[..., None].to(f_hat)
            count += int(in_mask.sum()) if in_mask is not None else f_hat.shape[0] * f_hat.shape[1]
            for alpha, w in zip(alphas, weights, strict=True):
                f_alpha = f - (1.0 - float(alpha)) * centred
                with torch.no_grad():
                    delta = out_1 - fn(f_alpha) @ om
                if out_mask is not None:
                    delta = delta * out_mask[..., None].to(delta)
                cotangents = _path_cotangents(delta, om)
                with torch.no_grad():
                    for units, grads in batched_vjps(fn, f_alpha, k, cotangents, memory_budget):
                        g = grads.reshape(units.stop - units.start, f.shape[0], -1, f.shape[-1])
                        g_hat = g @ pinv.T
                        a = torch.einsum("cbsj,bsj->cj", g_hat, f_hat)
                        rows = first + torch.arange(units.start, units.stop, device=E.device)
                        E.index_add_(0, rows, -float(w) * a.to(torch.float64))
    if shard.active and shard.split_over != "units":
        E, count = shard.sum(E), shard.count(count)
    return _finish(E, count, basis_in, basis_out, section.inject[0])


def weight_edges(
    section: Section,
    batches: Iterable[Any],
    basis_in: Basis,
    basis_out: Basis,
    jacobian: torch.Tensor | None = None,
) -> np.ndarray:
    """Edges of an affine section from its (sample-independent) Jacobian ``(n_out, n_in)``.

    ``jacobian`` ``(units, P_in, d)`` of the output units (the non-constant nodes of
    ``basis_out``, unit ``u = t * k + i``) with respect to the activations, as returned by
    :func:`interbasis.jacobians.section_jacobian_gram` for an affine section. Without it,
    it is taken at the first sample and the section must pass the same affinity check
    (:func:`interbasis.jacobians.is_affine_on`) on every batch, else a :class:`DataError`
    names it. With ``J_hat = J @ C_pinv^T`` (per node of the input basis)::

        E_ij = 1/(N P_in) sum_t sum_{s,s'} J_hat_{tisj} J_hat_{tis'j} S_{ss'j},
        S_{ss'j} = sum_x f_hat_{xsj} f_hat_{xs'j},

    which equals the squared edges for an affine section.
    """
    omap, first = _out_nodes(basis_out)
    S: dict[tuple[bool, ...] | None, torch.Tensor] = {}  # per padding pattern of the outputs
    count = 0
    J = jacobian
    inject, read = section.inject, section.read
    for b, x in enumerate(batches):
        f, layout, f_hat = _inputs(section, x, basis_in)
        with torch.no_grad():
            if J is None:
                J = affine_jacobian(section, x, f, layout, omap)
            if J.shape[1:-1] != f_hat.shape[1:-1]:
                raise DataError(
                    f'edges="weight": batch {b} of {inject[0]!r} has {f_hat.shape[1]} '
                    f"positions, the Jacobian {J.shape[1]}; positions must not change"
                )
            if jacobian is None and not is_affine_on(section, x, f, layout, omap, J, seed=b):
                raise DataError(
                    f'edges="weight" needs an affine section, but {inject[0]!r} -> '
                    f"{read[0]!r} is not affine on the data (batch {b}); use "
                    'edges="squared"'
                )
        f64 = f_hat.to(torch.float64)
        in_mask, out_mask = _padding_masks(section, x, f_hat.shape[1], J.shape[0] // omap.shape[1])
        if in_mask is not None:  # padding positions are no samples
            f64 = f64 * in_mask[..., None].to(f64)
        count += int(in_mask.sum()) if in_mask is not None else f_hat.shape[0] * f_hat.shape[1]
        if out_mask is None or bool(out_mask.all()):
            groups: list[tuple[tuple[bool, ...] | None, torch.Tensor]] = [(None, f64)]
        else:  # samples grouped by which output positions are real (padding: no units)
            patterns, which = torch.unique(out_mask, dim=0, return_inverse=True)
            groups = [(tuple(p.tolist()), f64[which == i]) for i, p in enumerate(patterns)]
        for key, f_group in groups:
            S_b = torch.einsum("bsj,brj->srj", f_group, f_group)
            S[key] = S[key] + S_b if key in S else S_b
    assert J is not None and S  # iter_batches raises on empty data
    pinv = _nonconstant_pinv(basis_in).to(J.device, torch.float64)
    n_units = omap.shape[1]
    J_hat = (J.to(torch.float64) @ pinv.T).reshape(-1, n_units, *J.shape[1:-1], pinv.shape[0])
    E_nodes = torch.zeros(n_units, pinv.shape[0], dtype=torch.float64, device=J.device)
    for key, S_key in S.items():
        real = torch.ones(J_hat.shape[0], dtype=torch.float64, device=J.device)
        if key is not None:
            real = torch.tensor(key, dtype=torch.float64, device=J.device)
        E_nodes += torch.einsum("tisj,tirj,srj,t->ij", J_hat, J_hat, S_key.to(J.device), real)
    E = torch.zeros(basis_out.n_nodes, basis_in.n_nodes, dtype=torch.float64, device=J.device)
    E[first:] = E_nodes
    return _finish(E, count, basis_in, basis_out, section.inject[0])
