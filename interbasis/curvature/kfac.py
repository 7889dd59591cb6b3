"""K-FAC picture of the curvature: per-layer blocks ``K ⊗ G`` (seed 004 eqs 10–15, 37).

For an ``nn.Linear`` layer with input ``a(x)`` (bias folded as a trailing 1, seed 004
footnote 6 — the seed puts it first) and pre-activation ``p(x) = W a(x)``, eq. 11 gives the
weight gradient ``d f_k / d W_ij = (d f_k / d p_i) a_j``, so the GGN block of that layer is

.. math::
    B_{(i,j),(i',j')} = \\sum_x [J_x^T \\Lambda_x J_x]_{ii'}\\, a_j(x) a_{j'}(x),
    \\qquad J_x = \\partial f(x) / \\partial p(x),\\;
    \\Lambda_x = \\partial^2 \\mathrm{loss} / \\partial f(x)^2 .

Seed 004 eq. 37 takes the two factors independent:
``B ≈ K ⊗ G`` with ``G = (1/N) sum_x a a^T`` (eq. 14/38) and
``K = sum_x J_x^T Lambda_x J_x`` (eq. 15/39; the ``1/N`` of a mean loss sits in
``Lambda_x``, so for MSE at a minimum ``K`` is eq. 39 up to the loss's factor 2/d_out).
``K ⊗ G`` (``torch.kron(K, G)``) matches torch's row-major flattening of a weight
``(out, in)``: entry ``(i, j)`` sits at ``i * in + j``. It is exact for one sample and for a
linear output layer (``J_x = I``, constant ``Lambda``). The loss must be a sum or mean of
per-sample terms and the model must not mix samples: ``Lambda_x`` and ``J_x`` are read off
``d_out`` batched products, one per output coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.func import grad, vjp, vmap

from interbasis.curvature.ggn import GGNOperator
from interbasis.curvature.hessian import HessianOperator
from interbasis.curvature.objective import Batch, LossFn, Objective
from interbasis.curvature.params import ParamLayout
from interbasis.curvature.spectra import EPS64, eigh_descending
from interbasis.errors import DataError, NodeLayerError, ShapeError
from interbasis.train_mode import TrainMode, analysed_model


@dataclass(frozen=True)
class KroneckerFactors:
    """Factors of one layer: ``G`` (in[+1], in[+1]) and ``K`` (out, out), float64."""

    layer: str
    G: torch.Tensor
    K: torch.Tensor
    has_bias: bool

    def matrix(self) -> torch.Tensor:
        """``K ⊗ G``, shape ``(out*(in+1), out*(in+1))`` (``in`` without a bias).

        The product is ``(K[:, None, :, None] * G[None, :, None, :])`` flattened to
        ``(out*in, out*in)``; it is formed with ``reshape`` rather than ``torch.kron``, which
        fails ("view size is not compatible") on non-contiguous factors such as the result of
        ``torch.einsum`` when ``opt_einsum`` is installed.
        """
        k, g = self.K, self.G
        prod = k[:, None, :, None] * g[None, :, None, :]
        return prod.reshape(k.shape[0] * g.shape[0], k.shape[1] * g.shape[1])

    def top_eigenpairs(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` eigenvalues (k,) and eigenvectors (dim, k) of ``K ⊗ G`` from the factors."""
        gk, uk = torch.linalg.eigh(self.K)
        gg, ug = torch.linalg.eigh(self.G)
        prod = torch.outer(gk, gg).reshape(-1)
        order = torch.argsort(prod, descending=True)[:k]
        i, j = order // gg.shape[0], order % gg.shape[0]
        vecs = (uk[:, i].unsqueeze(1) * ug[:, j].unsqueeze(0)).reshape(-1, len(order))
        return prod[order], vecs


@dataclass(frozen=True)
class KFACReport:
    """How close ``K ⊗ G`` is to the exact block ``B`` of one layer.

    ``relative_error = ||B - K⊗G||_F / ||B||_F``; ``overlap = ||U^T V||_F^2 / k`` for the
    top-``k`` eigenvectors ``U`` of ``B`` and ``V`` of ``K ⊗ G`` (1 = same subspace).
    """

    layer: str
    reference: str
    relative_error: float
    overlap: float
    k: int
    exact_top: torch.Tensor
    kfac_top: torch.Tensor


def _pname(layer: str, leaf: str) -> str:
    """Parameter name of ``leaf`` in module ``layer`` (``""`` is the model itself)."""
    return f"{layer}.{leaf}" if layer else leaf


def _linear_layers(
    model: torch.nn.Module, layout: ParamLayout, layers: Sequence[str] | None
) -> list[str]:
    modules = dict(model.named_modules())
    if layers is None:
        layers = [
            n
            for n, m in modules.items()
            if isinstance(m, torch.nn.Linear) and _pname(n, "weight") in layout.names
        ]
        if not layers:
            raise DataError(
                f"the model ({type(model).__name__}) has no nn.Linear layer whose weight is "
                "differentiated, so K-FAC has no block to factor; pass layers=[...] naming "
                "nn.Linear modules and params that include their weights"
            )
    for name in layers:
        if name not in modules:
            raise NodeLayerError(f"unknown layer {name!r}; named modules: {list(modules)}")
        if not isinstance(modules[name], torch.nn.Linear):
            raise DataError(
                f"layer {name!r} is a {type(modules[name]).__name__}; K-FAC here needs nn.Linear"
            )
        if _pname(name, "weight") not in layout.names:
            raise DataError(
                f"layer {name!r}: its weight {_pname(name, 'weight')!r} is not among the "
                f"differentiated parameters {list(layout.names)}; add it to params or leave "
                "the layer out of layers"
            )
    return list(layers)


def block_indices(layout: ParamLayout, layer: str) -> torch.Tensor:
    """Flat-vector positions of a layer's ``[W | b]`` in ``K ⊗ G`` order (bias last per row)."""
    sl = layout.slices
    w = sl[_pname(layer, "weight")]
    shape = layout.shapes[layout.names.index(_pname(layer, "weight"))]
    if len(shape) != 2:
        raise ShapeError(
            f"layer {layer!r}: weight of shape {tuple(shape)} is not 2-D (out, in); K-FAC "
            "blocks are defined for nn.Linear layers"
        )
    out_dim, in_dim = shape
    idx = torch.arange(w.start, w.stop).reshape(out_dim, in_dim)
    if _pname(layer, "bias") in sl:
        b = sl[_pname(layer, "bias")]
        idx = torch.cat([idx, torch.arange(b.start, b.stop).reshape(out_dim, 1)], dim=1)
    return idx.reshape(-1)


def kfac_factors(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    layers: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> dict[str, KroneckerFactors]:
    """Kronecker factors ``G`` (seed 004 eq. 14) and ``K`` (eq. 15) of each ``nn.Linear``.

    Parameters
    ----------
    model, loss_fn, data, params, dtype
        As in :class:`~interbasis.curvature.objective.Objective`; outputs must be
        ``(batch, d_out)`` and layer inputs ``(batch, d_in)``.
    layers : sequence of str, optional
        Module names; default every ``nn.Linear`` whose weight is differentiated.
    train_mode : {"eval", "error", "keep"}
        A model in train mode: factors of an eval-mode copy (default, with a warning), refused
        (:class:`~interbasis.errors.DataError`) or the model as it is; the hooks go on the
        analysed model, so the caller's model and buffers are never changed.
    process_group : torch.distributed group, optional
        Default: the initialised default group, if any. Each rank sums ``w_b G_b`` and
        ``w_b K_b`` over its shard of the batches; the factors are all-reduced in float64
        (a rank with an empty shard adds zeros), so every rank returns the same factors.
    """
    obj = Objective(
        model, loss_fn, data, params=params, dtype=dtype, train_mode=train_mode,
        process_group=process_group,
    )  # fmt: skip
    model = obj.model  # the analysed model (an eval-mode copy of a train-mode one): its hooks
    names = _linear_layers(model, obj.layout, layers)
    modules = dict(model.named_modules())
    bias = {n: _pname(n, "bias") in obj.layout.names for n in names}
    G: dict[str, torch.Tensor] = {}
    K: dict[str, torch.Tensor] = {}
    with obj.shard.stage("K-FAC factors"):  # a rank that raises stops every rank
        for w, (x, y) in zip(obj.weights, obj.batches, strict=True):
            acts, Jp, Lam = _batch_quantities(obj, modules, names, x, y)
            for n in names:
                a = acts[n]
                if bias[n]:
                    a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
                a = a.to(torch.float64)
                g = a.T @ a / a.shape[0]
                # contiguous: with opt_einsum installed, einsum may return a transposed view
                k = torch.einsum("kxi,kxl,lxj->ij", Jp[n], Lam, Jp[n]).to(torch.float64)
                G[n] = G[n] + w * g if n in G else w * g
                K[n] = K[n] + w * k.contiguous() if n in K else w * k.contiguous()
    if obj.shard.active:  # sum over ranks; an empty shard knows no shape and adds zeros
        G = {n: obj.shard.sum_optional(G.get(n), 2) for n in names}
        K = {n: obj.shard.sum_optional(K.get(n), 2) for n in names}
    return {n: KroneckerFactors(n, G[n], K[n], bias[n]) for n in names}


def _batch_quantities(
    obj: Objective,
    modules: dict[str, torch.nn.Module],
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Layer inputs ``a`` (n, in), Jacobians ``J[k, x, i]`` and ``Lambda[k, x, k']``."""
    acts: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        handles = [modules[n].register_forward_hook(_recorder(n, acts)) for n in names]
        try:
            out0 = obj.outputs(obj.theta, x)
        finally:
            for h in handles:
                h.remove()
    if out0.ndim != 2:
        raise ShapeError(f"K-FAC needs model outputs (batch, d_out), got {tuple(out0.shape)}")
    deltas = []
    for n in names:
        a = acts[n]
        if a.ndim != 2:
            raise ShapeError(
                f"layer {n!r}: input of shape {tuple(a.shape)}; K-FAC needs (batch, d_in) "
                "inputs (no position or channel dimensions): leave the layer out of layers"
            )
        linear = cast(torch.nn.Linear, modules[n])  # checked by _linear_layers
        deltas.append(torch.zeros(a.shape[0], linear.out_features, dtype=obj.dtype))

    def forward(*ds: torch.Tensor) -> torch.Tensor:
        handles = [
            modules[n].register_forward_hook(_adder(d)) for n, d in zip(names, ds, strict=True)
        ]
        try:
            return obj.outputs(obj.theta, x)
        finally:
            for h in handles:
                h.remove()

    def loss_of_outputs(o: torch.Tensor) -> torch.Tensor:
        return obj.loss_fn(o, y)

    out, pullback = vjp(forward, *deltas)[:2]
    d_out = out.shape[1]
    # E[k] has e_k in every row: one batched product per output coordinate k
    E = torch.eye(d_out, dtype=out.dtype)[:, None, :].expand(d_out, *out.shape)
    jac = vmap(pullback)(E)  # per layer (d_out, n, out_l): d f_{x,k} / d p_x
    loss_pullback = vjp(grad(loss_of_outputs), out.detach())[1]
    # Lam[k, x, k'] = Lambda_x[k, k'] (the loss has no cross-sample terms)
    Lam = vmap(lambda e: loss_pullback(e)[0])(E)
    return acts, dict(zip(names, jac, strict=True)), Lam


def _recorder(name: str, store: dict[str, torch.Tensor]) -> Any:
    def hook(
        module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        store[name] = inputs[0].detach()

    return hook


def _adder(delta: torch.Tensor) -> Any:
    def hook(
        module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output + delta

    return hook


def _subspace_size(exact: torch.Tensor, approx: torch.Tensor, k: int) -> int:
    """``k`` clipped to the numerical rank of both spectra and moved past degenerate clusters.

    A subspace that cuts a cluster of (numerically) equal eigenvalues is arbitrary, and so
    is one that reaches below the floor ``max|lambda| * dim * eps64``; both would make the
    overlap meaningless. Equal means within ``1e-8`` relative to the largest eigenvalue
    (round-off of these float64 blocks is ~1e-15; true gaps in tests are far larger).
    """
    dim = exact.shape[0]
    floor = float(exact.abs().max()) * dim * EPS64
    rank = int(min((exact > floor).sum(), (approx > floor).sum()))
    kk = max(1, min(k, rank))
    tol = 1e-8 * float(exact.abs().max())
    while kk < rank and (exact[kk - 1] - exact[kk] <= tol or approx[kk - 1] - approx[kk] <= tol):
        kk += 1
    return kk


def kfac_check(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    layers: Sequence[str] | None = None,
    reference: str = "ggn",
    k: int = 5,
    dtype: torch.dtype = torch.float64,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> dict[str, KFACReport]:
    """Compare ``K ⊗ G`` with the exact per-layer block of the GGN or the Hessian.

    Parameters
    ----------
    reference : {"ggn", "hessian"}
        Block to compare with; the GGN block is what eq. 37 approximates, the Hessian block
        adds the residual term (equal at zero residual and for the output layer).
    k : int
        Size of the top eigenspaces whose overlap is reported; clipped to the numerical
        rank and extended past degenerate eigenvalues (see ``KFACReport.k``).
    train_mode : {"eval", "error", "keep"}
        As in :func:`kfac_factors`; one eval-mode copy (one warning) serves both the factors
        and the exact blocks.
    process_group : torch.distributed group, optional
        As in :func:`kfac_factors`: factors and exact blocks are sums over every rank's
        batches; every rank returns the same reports.
    """
    if reference not in ("ggn", "hessian"):
        raise DataError(f"reference must be 'ggn' or 'hessian', got {reference!r}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise DataError(f"k must be an integer >= 1 (size of the top eigenspaces), got {k!r}")
    model = analysed_model(model, train_mode, "K-FAC check")
    factors = kfac_factors(
        model, loss_fn, data, layers=layers, dtype=dtype, train_mode="keep",
        process_group=process_group,
    )  # fmt: skip
    op_cls = GGNOperator if reference == "ggn" else HessianOperator
    op = op_cls(model, loss_fn, data, dtype=dtype, train_mode="keep", process_group=process_group)
    reports = {}
    for name, fac in factors.items():
        idx = block_indices(op.layout, name)
        params = [p for p in (_pname(name, "weight"), _pname(name, "bias")) if p in op.layout.names]
        sub = op.restrict(params)
        local = torch.searchsorted(sub.idx, idx)  # positions of idx inside the restricted block
        exact = sub.to_dense()[local][:, local]
        approx = fac.matrix()
        rel = float(torch.linalg.norm(exact - approx) / torch.linalg.norm(exact))
        ex = eigh_descending(exact)
        kk = _subspace_size(ex.values, fac.top_eigenpairs(exact.shape[0])[0], k)
        top_vals, top_vecs = fac.top_eigenpairs(kk)
        overlap = float((ex.vectors[:, :kk].T @ top_vecs).pow(2).sum() / kk)
        reports[name] = KFACReport(name, reference, rel, overlap, kk, ex.values[:kk], top_vals)
    return reports
