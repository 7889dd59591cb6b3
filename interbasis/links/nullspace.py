"""Zero-curvature directions attributed to the degeneracy mechanisms of seed 004 §3.

Each mechanism of :mod:`interbasis.degeneracy` is a set of explicit parameter directions
that leave every output unchanged to first order (so they lie in the null space of the
behavioural-loss Hessian, seed 004 eqs 6, 10). For a chain ``Linear (ReLU Linear)*`` with
stages ``p^{l+1} = W_bar^l [f^l, 1]`` (bias folded, constant last):

- ``"G"`` (eqs 13-14): ``W_bar^l -> W_bar^l + u c^T`` for ``c`` in the null space of the
  uncentred folded activation Gram ``G^l`` (the activations never move along ``c``);
- ``"K"`` (eq. 15): ``W_bar^l -> W_bar^l + v w^T`` for ``v`` in the null space of
  ``K^l = E[J^T J]``, ``J = d f^out / d p^{l+1}`` (the output never reads ``v``);
- ``"sync"`` (eqs 17-19): for a block ``S`` of ReLUs with identical gates and ``a, b in S``,
  ``W_bar^l -> (I + t e_a e_b^T) W_bar^l`` and ``W^{l+1} -> W^{l+1} (I - t e_a e_b^T)``
  (singletons: the per-neuron rescaling); and the bias constant joining the block of
  neurons that are linear on the data (always on): ``b_a += t``, ``b^{l+1} -= t W^{l+1} e_a``;
- ``"co-silent"`` (docs/degeneracy.md): the single weight ``W^{l+1}_{ji}`` between a ReLU
  ``i`` and a ReLU ``j`` of the next layer that never fire together (``f_i r_j = 0``).

:func:`attribute_null_directions` measures how much of each given eigenvector lies in the
span of each mechanism (``||Q_m^T v||^2`` with ``Q_m`` an orthonormal basis of the span) and
in the span of all of them together; the rest is *unexplained* (region-local degeneracy,
docs/degeneracy.md). Nullities use the normalised-Gram rule of :mod:`interbasis.degeneracy`
(``rtol`` relative to the largest eigenvalue, coordinates with a zero diagonal are null).

:func:`mechanism_directions` and :func:`behavioural_null_space` take ``train_mode``
(:mod:`interbasis.train_mode`): a model in train mode is analysed as an eval-mode copy with a
warning (``"eval"``, default), refused with :class:`~interbasis.errors.DataError`
(``"error"``) or run in train mode on a copy (``"keep"``); the model, its mode and its buffers
never change.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from interbasis.build import activation_grams, output_jacobian_gram
from interbasis.capture import OUTPUT, capture, resolve_node_layers
from interbasis.curvature import ParamLayout
from interbasis.data import iter_batches
from interbasis.degeneracy import RTOL, Stage, SyncBlocks, mlp_stages, synchronized_neurons
from interbasis.errors import DataError, ShapeError
from interbasis.train_mode import TrainMode, analysed_model

MECHANISMS = ("G", "K", "sync", "co-silent")


def null_vectors(gram: torch.Tensor, rtol: float = RTOL) -> torch.Tensor:
    """``(d, g)`` null directions of a PSD Gram, scale-free (unit-diagonal normalisation).

    Coordinates whose diagonal is at most ``rtol`` times the largest are null on their own
    (a dead neuron); among the others, eigenvectors of the normalised Gram with eigenvalue
    at most ``rtol`` times the largest, mapped back by ``D^{-1/2}``.
    """
    g = gram.to(torch.float64)
    diag = g.diagonal()
    top = float(diag.max()) if diag.numel() else 0.0
    live = diag > rtol * top
    idx = torch.nonzero(live).reshape(-1)
    out = [torch.eye(g.shape[0], dtype=torch.float64)[:, ~live]]
    if idx.numel():
        s = diag[idx].rsqrt()
        vals, vecs = torch.linalg.eigh(g[idx][:, idx] * s[:, None] * s[None, :])
        null = vecs[:, vals <= rtol * float(vals.max())] * s[:, None]
        full = torch.zeros(g.shape[0], null.shape[1], dtype=torch.float64)
        full[idx] = null
        out.append(full)
    return torch.cat(out, dim=1)


@dataclass(frozen=True)
class MechanismDirections:
    """Parameter directions of each mechanism: ``name -> (P, m)`` (columns not orthonormal)."""

    layout: ParamLayout
    directions: dict[str, torch.Tensor]

    def span(self, names: Sequence[str] | None = None, rtol: float = 1e-9) -> torch.Tensor:
        """Orthonormal basis ``(P, r)`` of the span of the mechanisms ``names`` (default all)."""
        cols = [self.directions[n] for n in (names or list(self.directions))]
        D = torch.cat(cols, dim=1) if cols else torch.zeros(self.layout.size, 0)
        if D.shape[1] == 0:
            return D.to(torch.float64)
        D = D / D.norm(dim=0).clamp_min(1e-300)
        U, S, _ = torch.linalg.svd(D, full_matrices=False)
        return U[:, S > rtol * float(S.max())]


def _weight_slices(layout: ParamLayout, stage: Stage) -> tuple[slice, slice | None, int, int]:
    sl = layout.slices
    w = stage.params[0]
    if w not in sl:
        raise DataError(
            f"parameter {w!r} of stage {stage.input} is not in the layout "
            f"{list(layout.names)[:6]}: pass a layout that holds the weights of every stage "
            "(default: all trainable parameters)"
        )
    out_dim, in_dim = layout.shapes[layout.names.index(w)]
    b = sl[stage.params[1]] if stage.bias and len(stage.params) > 1 else None
    return sl[w], b, int(out_dim), int(in_dim)


def _put(P: int, layout: ParamLayout, stage: Stage, dW: torch.Tensor) -> torch.Tensor:
    """Flat ``(P, m)`` vectors of ``m`` changes ``dW`` ``(m, out, in[+1])`` of one stage."""
    w, b, _, in_dim = _weight_slices(layout, stage)
    flat = torch.zeros(P, dW.shape[0], dtype=torch.float64)
    flat[w] = dW[:, :, :in_dim].reshape(dW.shape[0], -1).T
    if b is not None:
        flat[b] = dW[:, :, in_dim].T
    return flat


def mechanism_directions(
    model: nn.Module,
    data: Any,
    layout: ParamLayout | None = None,
    *,
    rtol: float = RTOL,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
) -> MechanismDirections:
    """The directions of every mechanism (module docstring) of a Linear/ReLU chain.

    Parameters
    ----------
    model : an MLP accepted by :func:`interbasis.degeneracy.mlp_stages`.
    data : model inputs (tensor or re-iterable of batches).
    layout : the parameter layout of the eigenvectors (default: all trainable parameters).
    train_mode : the policy for a model in train mode (module docstring).

    Raises
    ------
    DataError
        For a model that is not a Linear/ReLU chain (from ``mlp_stages``), a layout without
        the weights of every stage, an unknown ``train_mode`` or a train-mode model with
        ``train_mode="error"``.
    """
    analysed = analysed_model(model, train_mode, "mechanism directions")
    # "keep" on a train-mode model: run a copy, so the caller's buffers cannot change
    model = copy.deepcopy(model) if analysed is model and model.training else analysed
    dtype = next(model.parameters()).dtype
    stages = mlp_stages(model, next(iter_batches(data, batch_size, torch.device("cpu"), dtype)))
    layout = layout or ParamLayout.from_model(model)
    P = layout.size
    grams = activation_grams(
        model, data, [s.input for s in stages], batch_size=batch_size, train_mode=train_mode
    )
    params = dict(model.named_parameters())
    out: dict[str, list[torch.Tensor]] = {m: [] for m in MECHANISMS}
    for s in stages:
        _, _, out_dim, in_dim = _weight_slices(layout, s)
        width = in_dim + int(s.bias)
        for c in null_vectors(grams[s.input].gram(fold_bias=s.bias), rtol).T:
            dW = torch.zeros(out_dim, out_dim, width, dtype=torch.float64)
            dW[torch.arange(out_dim), torch.arange(out_dim)] = c
            out["G"].append(_put(P, layout, s, dW))
        if s.output != OUTPUT:
            K = output_jacobian_gram(
                model, data, s.output, batch_size=batch_size, train_mode=train_mode
            )
            for v in null_vectors(K, rtol).T:
                dW = torch.zeros(width, out_dim, width, dtype=torch.float64)
                dW[torch.arange(width), :, torch.arange(width)] = v
                out["K"].append(_put(P, layout, s, dW))
    for s, nxt in itertools.pairwise(stages):
        sync = synchronized_neurons(
            model, data, s.output, batch_size=batch_size, train_mode=train_mode
        )
        Wbar = _folded(params, s)
        W_next = params[nxt.params[0]].detach().to(torch.float64)
        pairs = [(a, b) for block in sync.blocks for a in block for b in block]
        if pairs:
            ai, bi = (torch.tensor(t) for t in zip(*pairs, strict=True))
            dW = torch.zeros(len(pairs), *Wbar.shape, dtype=torch.float64)
            dW[torch.arange(len(pairs)), ai] = Wbar[bi]
            dN = torch.zeros(len(pairs), *W_next.shape, dtype=torch.float64)
            dN[torch.arange(len(pairs)), :, bi] = -W_next[:, ai].T
            pad = torch.zeros(len(pairs), W_next.shape[0], int(nxt.bias), dtype=torch.float64)
            out["sync"].append(
                _put(P, layout, s, dW) + _put(P, layout, nxt, torch.cat([dN, pad], dim=2))
            )
        if s.bias and nxt.bias:
            out["sync"].append(_bias_shifts(P, layout, s, nxt, sync, W_next))
    out["co-silent"] = _co_silent(model, data, stages, layout, batch_size)
    return MechanismDirections(
        layout,
        {
            m: torch.cat(v, dim=1) if v else torch.zeros(P, 0, dtype=torch.float64)
            for m, v in out.items()
        },
    )


def _bias_shifts(
    P: int, layout: ParamLayout, s: Stage, nxt: Stage, sync: SyncBlocks, W_next: torch.Tensor
) -> torch.Tensor:
    """The bias constant joins the block of linear neurons (docs/degeneracy.md).

    A neuron ``a`` whose gate is constant on the data is linear there with slope ``r_a``
    (1 if always on; the negative slope if never on): ``b_a += t`` is undone by
    ``b^{l+1} -= t r_a W^{l+1}[:, a]``.
    """
    linear = [(a, 1.0) for a in sync.always_on]
    if sync.slope != 0.0:
        linear += [(a, sync.slope) for a in sync.dead]
    flat = torch.zeros(P, len(linear), dtype=torch.float64)
    b_s = layout.slices[s.params[1]]
    b_next = layout.slices[nxt.params[1]]
    for c, (a, slope) in enumerate(linear):
        flat[b_s.start + a, c] = 1.0
        flat[b_next, c] = -slope * W_next[:, a]
    return flat


def _folded(params: Mapping[str, torch.Tensor], stage: Stage) -> torch.Tensor:
    W = params[stage.params[0]].detach().to(torch.float64)
    if not stage.bias:
        return W
    return torch.cat([W, params[stage.params[1]].detach().to(torch.float64)[:, None]], dim=1)


def _co_silent(
    model: nn.Module,
    data: Any,
    stages: Sequence[Stage],
    layout: ParamLayout,
    batch_size: int | None,
) -> list[torch.Tensor]:
    """Single weights between consecutive ReLU layers that never fire together."""
    relus = [s.output for s in stages[:-1]]
    plain = [isinstance(model.get_submodule(r), nn.ReLU) for r in relus]
    if len(relus) < 2:
        return []
    modules = resolve_node_layers(model, relus)
    dtype = next(model.parameters()).dtype
    cross = [torch.zeros(0)] * (len(relus) - 1)
    with torch.no_grad():
        for x in iter_batches(data, batch_size, torch.device("cpu"), dtype):
            acts, _ = capture(model, x, modules)
            p = [acts[r].reshape(-1, acts[r].shape[-1]).to(torch.float64) for r in relus]
            for h in range(len(relus) - 1):
                term = (p[h + 1] > 0).to(torch.float64).T @ (p[h].clamp_min(0) ** 2)
                cross[h] = term if cross[h].numel() == 0 else cross[h] + term
    out = []
    for h in range(len(relus) - 1):
        if not (plain[h] and plain[h + 1]):
            continue
        nxt = stages[h + 1]
        _, _, out_dim, in_dim = _weight_slices(layout, nxt)
        j, i = torch.nonzero(cross[h] == 0, as_tuple=True)
        if j.numel():
            dW = torch.zeros(j.numel(), out_dim, in_dim + int(nxt.bias), dtype=torch.float64)
            dW[torch.arange(j.numel()), j, i] = 1.0
            out.append(_put(layout.size, layout, nxt, dW))
    return out


@dataclass(frozen=True)
class NullAttribution:
    """Shares of ``k`` eigenvectors in the mechanisms' spans.

    Attributes
    ----------
    mechanisms : names, in column order of ``shares``.
    dims : dimension of each mechanism's span; union_dim : of all together.
    shares : ``(k, n_mechanisms)`` ``||Q_m^T v||^2 / ||v||^2`` (spans may overlap, so rows
        can add up to more than 1).
    union : ``(k,)`` share in the span of all mechanisms; ``1 - union`` is unexplained.
    """

    mechanisms: tuple[str, ...]
    dims: tuple[int, ...]
    union_dim: int
    shares: np.ndarray
    union: np.ndarray

    def dominant(self, threshold: float = 0.5) -> list[str]:
        """Per eigenvector the mechanism with the largest share, or ``"unexplained"``."""
        names = []
        for row, u in zip(self.shares, self.union, strict=True):
            best = int(np.argmax(row)) if row.size else -1
            ok = best >= 0 and row[best] >= threshold and u >= threshold
            names.append(self.mechanisms[best] if ok else "unexplained")
        return names


def attribute_null_directions(
    vectors: torch.Tensor, mechanisms: MechanismDirections, rtol: float = 1e-9
) -> NullAttribution:
    """Shares of the columns of ``vectors`` ``(P, k)`` in each mechanism's span."""
    V = torch.as_tensor(vectors, dtype=torch.float64)
    if V.ndim == 1:
        V = V[:, None]
    if V.shape[0] != mechanisms.layout.size:
        raise ShapeError(
            f"vectors have length {V.shape[0]}, the mechanisms' layout has "
            f"{mechanisms.layout.size} parameters"
        )
    norms = (V**2).sum(dim=0).clamp_min(1e-300)
    names = tuple(mechanisms.directions)
    spans = [mechanisms.span([n], rtol) for n in names]
    union = mechanisms.span(None, rtol)
    shares = np.stack([((Q.T @ V) ** 2).sum(dim=0).div(norms).numpy() for Q in spans], axis=1)
    return NullAttribution(
        mechanisms=names,
        dims=tuple(int(Q.shape[1]) for Q in spans),
        union_dim=int(union.shape[1]),
        shares=shares,
        union=((union.T @ V) ** 2).sum(dim=0).div(norms).numpy(),
    )


@dataclass(frozen=True)
class BehaviouralNullSpace:
    """The null space of the behavioural-loss Hessian and its attribution.

    Attributes
    ----------
    n_params, nullity : ``P`` and the number of eigenvalues ``|λ| <= rtol λ_max``.
    largest_zero, smallest_nonzero : the gap around the threshold.
    attribution : of the null eigenvectors (:func:`attribute_null_directions`).
    """

    n_params: int
    nullity: int
    largest_zero: float
    smallest_nonzero: float
    attribution: NullAttribution

    def counts(self, threshold: float = 0.5) -> dict[str, int]:
        """How many null eigenvectors each mechanism dominates (and ``"unexplained"``)."""
        names = self.attribution.dominant(threshold)
        return {m: names.count(m) for m in (*self.attribution.mechanisms, "unexplained")}


def behavioural_null_space(
    model: nn.Module,
    data: Any,
    *,
    rtol: float = RTOL,
    max_dense: int = 2000,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
) -> BehaviouralNullSpace:
    """Null eigenvectors of the exact behavioural-loss Hessian, attributed to mechanisms.

    The Hessian of ``L_B(theta) = E_x ½||f_theta(x) - f_theta*(x)||^2`` at ``theta*``
    (:func:`interbasis.degeneracy.behavioural_mse`) is formed densely (float64, ``P <=
    max_dense``) and diagonalised; eigenvectors with ``|λ| <= rtol λ_max`` are the free
    directions that :func:`mechanism_directions` should span. ``train_mode``: the policy
    for a model in train mode (module docstring).
    """
    from interbasis.curvature import eigh_descending, hessian_matrix
    from interbasis.degeneracy import behavioural_mse
    from interbasis.links.jvp import float64_copy

    net = float64_copy(model, train_mode, "behavioural null space")
    layout = ParamLayout.from_model(net)
    if layout.size > max_dense:
        raise DataError(
            f"the exact behavioural Hessian needs P <= max_dense={max_dense}, the model has "
            f"P = {layout.size}"
        )
    with torch.no_grad():
        pairs = [
            (x, net(x)) for x in iter_batches(data, batch_size, torch.device("cpu"), torch.float64)
        ]
    eig = eigh_descending(hessian_matrix(net, behavioural_mse, pairs, train_mode=train_mode))
    mag = eig.values.abs()
    zero = mag <= rtol * float(mag.max())
    att = attribute_null_directions(
        eig.vectors[:, zero],
        mechanism_directions(
            net, data, layout, rtol=rtol, batch_size=batch_size, train_mode=train_mode
        ),
    )
    return BehaviouralNullSpace(
        layout.size,
        int(zero.sum()),
        float(mag[zero].max()) if bool(zero.any()) else float("nan"),
        float(mag[~zero].min()) if bool((~zero).any()) else float("nan"),
        att,
    )
