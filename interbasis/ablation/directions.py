"""Removing basis directions from a node layer's input: the one substitution every ablation uses.

For a basis with coordinates ``f_hat = [f, 1] @ C`` and reconstruction ``C_pinv``
(:class:`interbasis.Basis`, DESIGN §4), ablating the set ``S`` of directions replaces
``f_hat_i`` by a target ``t_i`` for ``i in S``::

    f' = f + sum_{i in S} (t_i - f_hat_i) C_pinv[i, :d]                         (1)

``t_i = 0`` (``mode="zero"``) or ``t_i = E[f_hat_i] = ([mu, 1] @ C)_i`` (``mode="mean"``;
``f_hat`` is affine in ``f`` so this is the exact mean). In a centred basis (interaction or
PCA with ``center=True``) both are the same, since ``E[f_hat_i] = 0`` for non-constant
``i``; the neuron basis is not centred (``f_hat_i = f_i``), so there ``"zero"`` sets neurons
to 0 and ``"mean"`` to their mean.

Equation (1) changes only the ablated coordinates and leaves the part of ``f`` outside the
basis span untouched (``truncated="keep"``): with ``S`` empty it is the identity, bit for
bit. rib instead rotates to the truncated basis and back, ``f' = f_hat' @ C_pinv``
(``truncated="drop"``), which also removes the directions dropped by the truncation (those
with Λ ≈ 0, on which the next node layer does not depend on the data).

**The constant direction** (node 0 when ``basis.has_constant``) carries the mean and is never
ablated; *directions kept* counts the non-constant directions only (rib's "vectors remaining"
also counts the constant direction, so rib's ``n`` is ours plus one).

**Order of importance**: non-constant directions by ``basis.eigenvalues`` descending (Λ for
the interaction basis, the variance for PCA and for neurons), ties by index; the *n least
important* are the last ``n`` of that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from interbasis.basis import Basis
from interbasis.errors import DataError

Mode = Literal["zero", "mean"]
Truncated = Literal["keep", "drop"]


def check_mode(mode: str, truncated: str) -> None:
    """Raise :class:`~interbasis.DataError` for unknown options."""
    if mode not in ("zero", "mean"):
        raise DataError(f'mode must be "zero" or "mean", got {mode!r}')
    if truncated not in ("keep", "drop"):
        raise DataError(f'truncated must be "keep" or "drop", got {truncated!r}')


def nonconstant(basis: Basis) -> torch.Tensor:
    """Indices of the non-constant directions ``(k,)``."""
    start = 1 if basis.has_constant else 0
    return torch.arange(start, basis.n_nodes)


def importance_order(basis: Basis) -> torch.Tensor:
    """Non-constant direction indices, most important first (eigenvalue descending)."""
    idx = nonconstant(basis)
    vals = basis.eigenvalues[idx].to(torch.float64).nan_to_num(nan=-torch.inf)
    order = torch.sort(-vals, stable=True).indices
    return idx[order]


def least_important(basis: Basis, n: int) -> torch.Tensor:
    """Indices of the ``n`` least important non-constant directions."""
    order = importance_order(basis)
    if not 0 <= n <= order.numel():
        raise DataError(
            f"node layer {basis.name!r}: cannot ablate {n} directions; it has {order.numel()} "
            "non-constant directions (the constant direction is never ablated)"
        )
    return order[order.numel() - n :]


def targets(basis: Basis, mode: Mode) -> torch.Tensor:
    """Target coordinates ``t`` ``(n,)``: zeros or the mean coordinates ``[mu, 1] @ C``."""
    if mode == "zero":
        return torch.zeros(basis.n_nodes, dtype=torch.float64)
    return basis.transform(basis.mean[None, :])[0]


class DirectionAblation:
    """The substitution ``f -> f'`` of equation (1) for one basis and one set ``S``.

    Precomputes the ``(d, |S|)`` and ``(|S|, d)`` factors once; applying it costs two small
    matrix products per batch. ``__call__`` maps ``(batch, [pos...], d)`` to the same shape
    (float64 inside, the input dtype returned).
    """

    def __init__(
        self,
        basis: Basis,
        ablated: Sequence[int] | torch.Tensor,
        mode: Mode = "zero",
        truncated: Truncated = "keep",
        device: torch.device | str = "cpu",
    ) -> None:
        check_mode(mode, truncated)
        S = torch.as_tensor(ablated, dtype=torch.long)
        if basis.has_constant and (S == 0).any():
            raise DataError(
                f"node layer {basis.name!r}: the constant direction 0 cannot be ablated "
                f"(ablated={S.tolist()}); it carries the mean"
            )
        d = basis.dim
        self.basis = basis.to(device)
        self.empty = S.numel() == 0
        self.truncated = truncated
        C = self.basis.C
        self.A = C[:d, S]  # f_hat_S = f @ A + c
        self.c = C[d, S] if basis.has_constant else torch.zeros(S.numel(), dtype=C.dtype)
        self.c = self.c.to(C.device)
        self.t = targets(basis, mode).to(C.device)[S]
        self.P = self.basis.C_pinv[S, :d]
        self.S = S.to(C.device)
        self.t_all = targets(basis, mode).to(C.device)

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        if self.truncated == "drop":
            f_hat = self.basis.transform(acts)
            f_hat[..., self.S] = self.t_all[self.S]
            return self.basis.inverse_transform(f_hat).to(acts.dtype)
        if self.empty:
            return acts
        x = acts.to(torch.float64)
        delta = (self.t - (x @ self.A + self.c)) @ self.P
        return (x + delta).to(acts.dtype)
