"""Sparsifying transforms of seed 004 §4 (eqs 23-27): fewer interactions, same function.

1. **Dependent inputs** (eqs 23-24). If the (bias-folded) activations ``f̄`` of a layer are
   linearly dependent on the data, pick a basis of ``rank(G)`` coordinates, write every other
   coordinate as a combination of them, ``f_j = sum_i (c_j)_i f_i`` (eq. 23), and move its
   weights onto the basis, ``W̃_{:, basis} = W_{:, basis} + W_{:, dep} c``, ``W̃_{:, dep} = 0``
   (eq. 24): ``W̃ f̄ = W f̄`` on the data, and each dependency zeroes ``d_out`` weights.
2. **Synchronized blocks** (eqs 25-27). For each synchronized block ``S_a`` of the next layer,
   ``C_[a] = (W̃_[a])^{-1}`` where ``W̃_[a]`` is the square sub-block of ``W̃`` on the rows
   ``S_a`` and ``|S_a|`` input columns (eq. 27 takes consecutive columns ``sigma_{a-1}+1 ..
   sigma_a``); ``C`` is block-diagonal (eq. 25), so ``Ŵ = C W̃`` has ``Ŵ_[a] = I``: at least
   ``sum_a |S_a|^2 - d`` zero weights.

Clarifications of the printed equations. Eq. 27 prints the sub-block transposed; we use the
sub-block itself, the only choice that makes ``Ŵ_[a] = I`` as the text states. Footnote 8
allows a pseudo-inverse; a singular block would change the function, so we raise
:class:`RankError` and ask for other columns instead. Singletons keep ``C_[a] = 1`` (eq. 26
would rescale the neuron and zero nothing). Eq. 28, ``C ReLU(p) = ReLU(C p)``, needs ``C``
with non-negative entries (eq. 18), which an inverse rarely has; what holds for any
block-diagonal ``C`` on synchronized blocks — and what the interaction graph sees — is
``C f(x) = r(x) ∘ (C p(x))`` with the block's shared gate ``r_a(x)``: the transformed
neurons ``f̂ = C f`` are gated linear functions ``r_a(x) Ŵ_[a rows] f̄(x)``. The network's
function is unchanged when the next layer's weights become ``W^{l+1} C^{-1}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interbasis.degeneracy.ranks import RTOL, check_rtol
from interbasis.errors import RankError, ShapeError


@dataclass(frozen=True)
class InputReduction:
    """Result of :func:`reduce_dependent_inputs` (eqs 23-24).

    Attributes
    ----------
    weight : (d_out, d_in) ``W̃`` with zero columns at the dependent neuron coordinates.
    bias : (d_out,) ``b̃`` (None without bias).
    kept : basis coordinates of ``f̄`` (index ``d_in`` is the bias constant, kept first).
    dependent : the other coordinates, in increasing order.
    coefficients : (len(kept), len(dependent)) ``c`` with ``f̄_dep = f̄_kept @ c`` (eq. 23).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    kept: tuple[int, ...]
    dependent: tuple[int, ...]
    coefficients: torch.Tensor


def reduce_dependent_inputs(
    weight: torch.Tensor,
    gram: torch.Tensor,
    bias: torch.Tensor | None = None,
    rtol: float = RTOL,
) -> InputReduction:
    """Disconnect linearly dependent inputs of an affine map (seed 004 eqs 23-24).

    Parameters
    ----------
    weight : (d_out, d_in) ``W`` of ``p = W f + b``.
    gram : uncentred Gram of the inputs on the data: (d_in + 1, d_in + 1) of ``[f, 1]``
        (constant last) when ``bias`` is given, else (d_in, d_in) of ``f``.
    bias : (d_out,) or None.
    rtol : a coordinate is dependent when its squared residual after projecting on the kept
        ones is at most ``rtol`` times its own ``G_jj`` (or ``G_jj <= rtol max G``).

    Returns
    -------
    InputReduction
        ``weight @ f + bias`` is unchanged on the data; ``len(dependent) * d_out`` weights are 0.
    """
    rtol = check_rtol(rtol)
    d_in = weight.shape[1]
    folded = d_in + (bias is not None)
    if gram.shape != (folded, folded):
        raise ShapeError(
            f"gram must be ({folded}, {folded}) for this weight, got {tuple(gram.shape)}"
        )
    G = gram.to(torch.float64)
    W = weight.to(torch.float64)
    if bias is not None:
        W = torch.cat([W, bias.to(torch.float64)[:, None]], dim=1)
    order = ([d_in] if bias is not None else []) + list(range(d_in))  # constant first
    top = float(G.diagonal().max())
    kept: list[int] = []
    for j in order:
        gjj = float(G[j, j])
        if gjj <= rtol * top:
            continue
        if kept:
            gk = G[kept][:, kept]
            resid = gjj - float(G[j, kept] @ torch.linalg.solve(gk, G[kept, j]))
        else:
            resid = gjj
        if resid > rtol * gjj:
            kept.append(j)
    dependent = sorted(set(range(folded)) - set(kept))
    if dependent:
        coef = torch.linalg.solve(G[kept][:, kept], G[kept][:, dependent])
    else:
        coef = torch.zeros(len(kept), 0, dtype=torch.float64)
    Wt = W.clone()
    Wt[:, kept] = W[:, kept] + W[:, dependent] @ coef.T
    Wt[:, dependent] = 0.0
    new_bias = Wt[:, d_in].clone() if bias is not None else None
    return InputReduction(Wt[:, :d_in].clone(), new_bias, tuple(kept), tuple(dependent), coef)


@dataclass(frozen=True)
class SyncTransform:
    """Result of :func:`sync_block_transform` (eqs 25-27).

    Attributes
    ----------
    C, C_inv : (d, d) block-diagonal change of basis of the layer and its inverse.
    weight : (d, d_in) ``Ŵ = C W̃``; ``Ŵ[S_a][:, columns[a]] = I``.
    bias : (d,) ``C b̃`` (None without bias).
    blocks : the blocks transformed (size > 1), and ``columns`` the input columns each used.
    """

    C: torch.Tensor
    C_inv: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    blocks: tuple[tuple[int, ...], ...]
    columns: tuple[tuple[int, ...], ...]


def sync_block_transform(
    weight: torch.Tensor,
    blocks: Sequence[Sequence[int]],
    bias: torch.Tensor | None = None,
    columns: Sequence[Sequence[int]] | None = None,
    rtol: float = RTOL,
) -> SyncTransform:
    """Block-diagonal ``C`` that turns each synchronized block of ``W̃`` into the identity.

    Parameters
    ----------
    weight : (d, d_in) ``W̃`` into the layer whose synchronized blocks are ``blocks``
        (e.g. after :func:`reduce_dependent_inputs`).
    blocks : the blocks ``S_a`` (e.g. ``SyncBlocks.blocks``); disjoint neuron indices.
    bias : (d,) or None.
    columns : input columns per block of size > 1; default eq. 27: consecutive columns,
        skipping all-zero columns of ``W̃`` (those eq. 24 disconnected).
    rtol : a block is singular when its smallest singular value is at most ``rtol`` times
        the largest.

    Raises
    ------
    RankError
        A block's sub-matrix is singular (the transform would change the function).
    ShapeError
        Overlapping blocks, or fewer usable columns than neurons in blocks of size > 1.
    """
    rtol = check_rtol(rtol)
    W = weight.to(torch.float64)
    d, d_in = W.shape
    flat = [i for b in blocks for i in b]
    if len(set(flat)) != len(flat) or any(not 0 <= i < d for i in flat):
        raise ShapeError(f"blocks must be disjoint neuron indices in [0, {d}), got {blocks}")
    multi = [tuple(int(i) for i in b) for b in blocks if len(b) > 1]
    if columns is None:
        usable = [j for j in range(d_in) if bool((W[:, j] != 0).any())]
        need = sum(len(b) for b in multi)
        if need > len(usable):
            raise ShapeError(
                f"eq. 27 needs {need} input columns for blocks {multi}, but W̃ has only "
                f"{len(usable)} non-zero columns; pass columns=..."
            )
        cols, start = [], 0
        for b in multi:
            cols.append(tuple(usable[start : start + len(b)]))
            start += len(b)
    else:
        cols = [tuple(int(j) for j in c) for c in columns]
        if len(cols) != len(multi) or any(
            len(c) != len(b) for c, b in zip(cols, multi, strict=True)
        ):
            raise ShapeError(f"columns {columns} must give |S_a| columns per block {multi}")
    C = torch.eye(d, dtype=torch.float64)
    C_inv = torch.eye(d, dtype=torch.float64)
    for b, c in zip(multi, cols, strict=True):
        sub = W[list(b)][:, list(c)]
        sv = torch.linalg.svdvals(sub)
        if float(sv[-1]) <= rtol * float(sv[0]):
            raise RankError(
                f"block {list(b)} on input columns {list(c)}: the sub-block of W̃ is singular "
                f"(singular values {[round(float(s), 6) for s in sv]}); pass other columns"
            )
        idx = torch.tensor(b)
        C[idx[:, None], idx[None, :]] = torch.linalg.inv(sub)
        C_inv[idx[:, None], idx[None, :]] = sub
    new_bias = C @ bias.to(torch.float64) if bias is not None else None
    return SyncTransform(C, C_inv, C @ W, new_bias, tuple(multi), tuple(cols))
