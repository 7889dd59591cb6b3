"""Hessian ↔ graph: where each curvature eigenvector lives in the interaction graph.

Seed 004 §6 approximates the Hessian block of a weight layer by ``K ⊗ G`` (eq. 37) and builds
the interaction basis to diagonalise both factors: in the basis of node layer ``l`` the
activation Gram is ``diag(1, Λ^l)`` (constant, then the centred nodes), and in the basis of
layer ``l+1`` the Jacobian Gram of the next functions is the identity. A parameter change of
the stage between them is the transition change ``delta T`` of :mod:`.stages`
(``n_l x n_{l+1}``), and its K-FAC curvature splits into one term per pair of nodes,

.. math::
    E_{ij} = \\mathbb{E}_x\\big[\\hat f^l_j(x)^2\\big]\\, \\delta T_{ji}^2
           \\qquad (= \\Lambda^l_j\\, \\delta T_{ji}^2,\\ \\text{and } \\delta T_{0i}^2
           \\text{ for the constant}),

the energy of the eigenvector on the edge from in-node ``j`` to out-node ``i``. The whole
change of the next layer's node functions is

.. math::
    \\mathbb{E}_x \\|\\delta \\hat f^{l+1}(x)\\|^2
      = \\operatorname{tr}\\big(C^{l+1\\,T}_{:d}\\, \\delta\\bar W\\, G^l\\, \\delta\\bar W^T
        C^{l+1}_{:d}\\big)
      = \\sum_{ij} E_{ij} + \\text{off\\_basis},

``G^l`` the uncentred, bias-folded activation Gram, ``E_ij = E_x[f_hat_j^2] · δT_ji^2`` with
the second moments read from ``G^l`` (:func:`~interbasis.links.stages.second_moments`).
For the default centred interaction and PCA bases ``off_basis >= 0`` is the part read from
activation directions the basis dropped because the *current* next layer ignores them (M-null
directions): a new interaction that no edge of the graph carries yet, arriving at an
out-node. The split into edges assumes decorrelated nodes; otherwise ``off_basis`` also holds
cross terms, which can be negative: between correlated neurons (neuron basis), and between
a bias change and the nodes' non-zero means (uncentred bases, which have no constant node).
Given a partition of the nodes into modules, each edge's energy goes to the module holding
both ends (an edge from the constant node, i.e. the bias, to its out-node's module), to
``between`` when the ends lie in different modules, or to ``unassigned``; off-basis energy
goes to its out-node's module. With ``c_k`` the share of ``||v_k||^2`` on the stages'
parameters (``coverage``) and ``E_k`` eigenvector ``k``'s whole stage energy, its shares are

    share_k(m) = c_k · E_k(m) / E_k,   between, unassigned likewise,
    invisible_k = c_k when E_k = 0 (the change only reads activation directions the data
        never takes: null directions of G^l, seed 004 eqs 13-14),
    outside_k = 1 - c_k,

which add up to 1, so the curvature masses ``mass(m) = sum_k λ_k share_k(m)`` of all
categories add up to ``sum_k λ_k`` (the trace, when every eigenpair is given).

Both functions take ``train_mode`` (:mod:`interbasis.train_mode`): a model in train mode is
analysed as an eval-mode copy with a warning (``"eval"``, default), refused with
:class:`~interbasis.errors.DataError` (``"error"``) or used as it is (``"keep"``); the model,
its mode and its buffers never change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from interbasis.basis import Basis
from interbasis.build import activation_grams
from interbasis.curvature import (
    Eigenpairs,
    HessianOperator,
    ParamLayout,
    eigh_descending,
    hessian_matrix,
    lanczos,
)
from interbasis.errors import DataError, ShapeError
from interbasis.links.jvp import activation_rows, float64_copy, split_directions
from interbasis.links.stages import (
    GraphStage,
    check_stage_bases,
    in_coordinates,
    second_moments,
    stage_weight_changes,
)
from interbasis.train_mode import TrainMode, analysed_model, check_train_mode

#: An eigenvector is "invisible" when its stage energy is below this share of the largest it
#: could have (``λ_max(G) ||C^{l+1}||_2^2 ||delta W_bar||_F^2`` summed over stages): float64
#: round-off of an exactly null change is ~1e-16 of that bound.
INVISIBLE_RTOL = 1e-12
CATEGORIES = ("between", "unassigned", "invisible", "outside")


@dataclass(frozen=True)
class HessianGraphLinks:
    """Shares of ``k`` curvature eigenvectors in the modules of a graph (module docstring).

    Attributes
    ----------
    eigenvalues : ``(k,)``.
    modules : module ids, in column order of ``shares``.
    shares : ``(k, n_modules)``; ``between``, ``unassigned``, ``invisible``, ``outside``:
        ``(k,)``; each row of :meth:`table` sums to 1.
    off_basis : ``(k,)`` the part of the shares (modules, unassigned) that arrives at an
        out-node from activation directions the in-basis dropped (no edge carries it).
    coverage : ``(k,)`` share of ``||v_k||^2`` on the stages' parameters.
    energy : ``(k,)`` whole stage energy ``E_k`` (``sum_ij E_ij + off_basis``, unscaled).
    stage_energy : per stage, ``(k, n_out, n_in)`` (graph orientation ``edges[i]``).
    stages : the stages, in the order of ``stage_energy``.
    """

    eigenvalues: np.ndarray
    modules: tuple[int, ...]
    shares: np.ndarray
    between: np.ndarray
    unassigned: np.ndarray
    off_basis: np.ndarray
    invisible: np.ndarray
    outside: np.ndarray
    coverage: np.ndarray
    energy: np.ndarray
    stage_energy: tuple[np.ndarray, ...]
    stages: tuple[GraphStage, ...]

    def table(self) -> np.ndarray:
        """``(k, n_modules + 4)``: the module shares, then the four other categories."""
        others = (self.between, self.unassigned, self.invisible, self.outside)
        extra = np.stack(others, axis=1)
        return np.concatenate([self.shares, extra], axis=1)

    def curvature_mass(self) -> dict[str, float]:
        """``sum_k λ_k share_k(c)`` for every module ``"module m"`` and other category."""
        mass = self.eigenvalues @ self.table()
        names = [f"module {m}" for m in self.modules] + list(CATEGORIES)
        return {n: float(v) for n, v in zip(names, mass, strict=True)}

    def top_module(self) -> tuple[np.ndarray, np.ndarray]:
        """``(k,)`` module id with the largest share (−1 if none) and that share."""
        if not self.modules:
            return np.full(len(self.eigenvalues), -1), np.zeros(len(self.eigenvalues))
        idx = self.shares.argmax(axis=1)
        return np.asarray(self.modules)[idx], self.shares[np.arange(len(idx)), idx]


def _module_of(membership: Mapping[str, int], layer: str, n: int) -> np.ndarray:
    return np.array([membership.get(f"{layer}:{i}", -1) for i in range(n)], dtype=np.int64)


def hessian_graph_links(
    model: nn.Module,
    data: Any,
    bases: Sequence[Basis],
    stages: Sequence[GraphStage],
    eigenvalues: torch.Tensor,
    vectors: torch.Tensor,
    layout: ParamLayout,
    membership: Mapping[str, int],
    *,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
) -> HessianGraphLinks:
    """Module shares and curvature masses of eigenvectors ``vectors`` (module docstring).

    Parameters
    ----------
    model : the network the eigenvectors belong to.
    data : the inputs the bases were built on (for each stage input's activation Gram).
    bases : the bases of the graph's node layers (those the modules were found on).
    stages : from :func:`interbasis.links.find_graph_stages`.
    eigenvalues : ``(k,)``; vectors : ``(P, k)`` unit columns, in ``layout`` order.
    membership : node id -> module id (``graphs.Partition.membership``; −1 = unassigned).
    train_mode : the policy for a model in train mode (module docstring).
    """
    check_train_mode(train_mode)
    vals = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1)
    V = torch.as_tensor(vectors, dtype=torch.float64)
    if V.ndim != 2 or V.shape[1] != vals.shape[0]:
        raise ShapeError(f"vectors must be (P, k={vals.shape[0]}), got {tuple(V.shape)}")
    by_name = {b.name: b for b in bases}
    net = float64_copy(model, train_mode, "Hessian-graph links")
    tangents = split_directions(layout, V.T)
    covered = [p for s in stages for p in s.params]
    missing = [p for p in covered if p not in tangents]
    if missing:
        raise DataError(f"stage parameters {missing} are not in the eigenvectors' layout")
    k = V.shape[1]
    norms = (V**2).sum(dim=0).clamp_min(1e-300)
    cov = sum(((tangents[p] ** 2).reshape(k, -1).sum(dim=1) for p in covered), torch.zeros(k))
    inputs = [s.input for s in stages]
    grams = (
        activation_grams(net, data, inputs, batch_size=batch_size, train_mode=train_mode)
        if stages
        else {}
    )
    modules = sorted({m for m in membership.values() if m >= 0})
    col = {m: c for c, m in enumerate(modules)}
    parts = np.zeros((k, len(modules) + 2))  # modules, between, unassigned
    off = np.zeros(k)
    bound = np.zeros(k)
    stage_energy = []
    for st in stages:
        b_in, b_out = by_name[st.input], by_name[st.output]
        check_stage_bases(st, b_in, b_out)
        dW = stage_weight_changes(net, st, b_in.dim, tangents)  # (k, d + 1, d_out)
        out_map = activation_rows(b_out).to(torch.float64)
        moved = dW @ out_map  # (k, d + 1, n_out): [f, 1] -> delta f_hat^{l+1}
        T = in_coordinates(b_in) @ moved  # (k, n_in, n_out)
        G = grams[st.input].gram(fold_bias=True)
        E = (T**2 * second_moments(b_in, G)[None, :, None]).transpose(1, 2).numpy()  # (k,out,in)
        stage_energy.append(E)
        # whole change per out-node; what the edges miss arrives at that node: its module
        total = torch.einsum("ab,kao,kbo->ko", G, moved, moved).numpy()
        missed = total - E.sum(axis=2)  # (k, n_out)
        scale = (
            float(torch.linalg.eigvalsh(G).max()) * float(torch.linalg.matrix_norm(out_map, 2)) ** 2
        )
        bound += scale * (dW**2).sum(dim=(1, 2)).numpy()
        m_out = _module_of(membership, st.output, b_out.n_nodes)
        m_in = _module_of(membership, st.input, b_in.n_nodes)
        if b_in.has_constant:
            m_in[0] = -2  # the bias: follows its out-node
        pair_in = np.where(m_in[None, :] == -2, m_out[:, None], m_in[None, :])
        pair_out = np.broadcast_to(m_out[:, None], pair_in.shape)
        same = (pair_in == pair_out) & (pair_out >= 0)
        lost = (pair_in < 0) | (pair_out < 0)
        for m, c in col.items():
            parts[:, c] += E[:, same & (pair_out == m)].sum(axis=1)
            parts[:, c] += missed[:, m_out == m].sum(axis=1)
        parts[:, -2] += E[:, ~same & ~lost].sum(axis=1)
        parts[:, -1] += E[:, lost].sum(axis=1) + missed[:, m_out < 0].sum(axis=1)
        off += missed.sum(axis=1)
    energy = parts.sum(axis=1)
    share_on = (cov / norms).numpy()
    visible = energy > INVISIBLE_RTOL * np.maximum(bound, 1e-300)
    factor = np.where(visible, share_on / np.where(visible, energy, 1.0), 0.0)
    scaled = parts * factor[:, None]
    return HessianGraphLinks(
        eigenvalues=vals.numpy(),
        modules=tuple(modules),
        shares=scaled[:, : len(modules)],
        between=scaled[:, -2],
        unassigned=scaled[:, -1],
        off_basis=off * factor,
        invisible=np.where(visible, 0.0, share_on),
        outside=1.0 - share_on,
        coverage=share_on,
        energy=energy,
        stage_energy=tuple(stage_energy),
        stages=tuple(stages),
    )


def hessian_eigenpairs(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]],
    k: int = 10,
    *,
    bottom: bool = False,
    params: Sequence[str] | None = None,
    max_dense: int = 2000,
    seed: int = 0,
    tol: float = 0.0,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> tuple[Eigenpairs, str]:
    """Top-``k`` (and with ``bottom`` the bottom-``k``) Hessian eigenpairs, float64.

    Dense ``eigh`` of :func:`interbasis.curvature.hessian_matrix` when ``P <= max_dense``
    (every eigenpair is then returned), otherwise Lanczos on
    :class:`interbasis.curvature.HessianOperator`, started from a seeded Gaussian vector so
    that results are reproducible; ``tol`` is ARPACK's relative accuracy of the Ritz values
    (0 = machine precision). ``train_mode``: the policy for a model in train mode (module
    docstring). ``process_group`` (default: the initialised default group, if any): the
    dense Hessian or the Hessian-vector products are sums over every rank's shard of the
    batches, all-reduced in float64, and the seeded Lanczos runs in lockstep, so every rank
    returns the same eigenpairs (:mod:`interbasis.curvature.operator`).

    Returns
    -------
    (Eigenpairs with values descending, ``"dense"`` or ``"lanczos"``)
    """
    check_train_mode(train_mode)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be an int >= 1, got {k!r}")
    model = analysed_model(model, train_mode, "Hessian eigenpairs")
    size = ParamLayout.from_model(model, params).size
    if size <= max_dense:
        H = hessian_matrix(
            model, loss_fn, data, params=params, train_mode=train_mode,
            process_group=process_group,
        )  # fmt: skip
        return eigh_descending(H), "dense"
    op = HessianOperator(
        model, loss_fn, data, params=params, train_mode=train_mode, process_group=process_group
    )
    v0 = torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    top = lanczos(op, min(k, size - 1), which="LA", v0=v0, tol=tol, seed=seed)
    if not bottom:
        return top, "lanczos"
    low = lanczos(op, min(k, size - 1), which="SA", v0=v0, tol=tol, seed=seed)
    values = torch.cat([top.values, low.values])
    vectors = torch.cat([top.vectors, low.vectors], dim=1)
    return Eigenpairs(values, vectors, top.n_products + low.n_products), "lanczos"
