"""Singular-vector alignment of Jacobian products (seed 002) and principal angles.

For the cut of ``J_{0:L} = B A`` at layer ``l`` (``A = J_{0:l}``, ``B = J_{l:L}``):

- shared-basis alignment: ``|<v_1(J_{0:l}), v_1(J_{0:L})>|`` and ``|<u_1(J_{l:L}), u_1(J_{0:L})>|``;
  strong separation makes it grow with depth;
- consecutive-factor alignment: ``|<u_1(A), v_1(B)>|`` and the product efficiency
  ``σ_1(BA) / (σ_1(A) σ_1(B)) <= 1``; at initialisation both sit at their random baseline
  (:func:`random_overlap_baseline`, :func:`rotation_baseline`);
- separation ``σ_1(J_{0:l}) / σ_2(J_{0:l})``.

For top-``k`` subspaces the overlaps become the cosines of the principal angles, computed
batched with the Knyazev–Argentati sine/cosine split (what ``scipy.linalg.subspace_angles``
does for one pair; the tests compare with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import gammaln
from torch import Tensor

from interbasis.errors import DataError, RankError, ShapeError
from interbasis.jacobian_spectra.chain import LayerJacobians

__all__ = [
    "AlignmentProfile",
    "alignment_profile",
    "principal_angles",
    "random_overlap_baseline",
    "rotation_baseline",
    "top_singular",
]


def top_singular(jac: Tensor, k: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` singular triplets of ``jac`` ``(..., m, n)`` in float64.

    Returns ``U (..., m, k)``, ``S (..., k)`` (descending), ``V (..., n, k)``
    (``torch.linalg.svd``; signs are arbitrary, so compare with ``|<.,.>|``).
    """
    if not 1 <= k <= min(jac.shape[-2:]):
        raise ShapeError(f"k={k} must lie in [1, min{tuple(jac.shape[-2:])}]")
    u, s, vh = torch.linalg.svd(jac.to(torch.float64), full_matrices=False)
    return u[..., :k], s[..., :k], vh[..., :k, :].mT


def _orthonormal(a: Tensor, what: str) -> Tensor:
    s = torch.linalg.svdvals(a)
    rank_tol = max(a.shape[-2:]) * float(torch.finfo(torch.float64).eps) * s[..., :1]
    if bool((s[..., -1:] <= rank_tol).any()):
        raise RankError(f"{what} {tuple(a.shape)} does not have full column rank")
    return torch.linalg.qr(a)[0]


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between ``span(a)`` and ``span(b)``.

    ``a`` ``(..., d, p)``, ``b`` ``(..., d, q)`` with full column rank; returns
    ``(..., min(p, q))``. Angles with ``cos² >= ½`` come from ``arcsin`` of the residual's
    singular values, the others from ``arccos`` of ``svd(Q_a^T Q_b)`` (Knyazev & Argentati
    2002), so small angles keep full float64 accuracy.
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    if a.shape[-2] != b.shape[-2]:
        raise ShapeError(f"subspaces live in different spaces: {tuple(a.shape)} vs {b.shape}")
    qa, qb = _orthonormal(a, "a"), _orthonormal(b, "b")
    if qa.shape[-1] < qb.shape[-1]:
        qa, qb = qb, qa
    cross = qa.mT @ qb
    cos = torch.linalg.svdvals(cross).flip(-1)  # ascending cos = descending angles
    sin = torch.linalg.svdvals(qb - qa @ cross)  # descending sin = descending angles
    angles = torch.where(
        cos**2 >= 0.5, torch.arcsin(sin.clamp(-1, 1)), torch.arccos(cos.clamp(-1, 1))
    )
    return angles.flip(-1)


def _cosines(a: Tensor, b: Tensor) -> Tensor:
    """Cosines of the principal angles between orthonormal ``a``, ``b`` (descending)."""
    return torch.linalg.svdvals(a.mT @ b).clamp(0, 1)


def random_overlap_baseline(d: int) -> float:
    """``E|<u, e>|`` for ``u`` uniform on the unit sphere of ``R^d``: ``Γ(d/2) / (√π Γ((d+1)/2))``.

    About ``sqrt(2 / (π d))`` for large ``d``; its second moment is ``1/d``.
    """
    if d < 1:
        raise DataError(f"dimension must be positive, got {d}")
    return float(np.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / np.sqrt(np.pi))


@dataclass(frozen=True)
class AlignmentProfile:
    """Alignment measures at every cut ``l = 0..L`` (NaN where a measure is undefined).

    Each overlap array is ``(B, L+1, k)``: cosines of the principal angles between top-``k``
    subspaces (``k = 1``: ``|<.,.>|``). ``efficiency`` and ``separation`` are ``(B, L+1)``.

    Attributes
    ----------
    right_shared : ``V_k(J_{0:l})`` vs ``V_k(J_{0:L})``, defined for ``l >= 1``.
    left_shared : ``U_k(J_{l:L})`` vs ``U_k(J_{0:L})``, defined for ``l <= L-1``.
    consecutive : ``U_k(J_{0:l})`` vs ``V_k(J_{l:L})``, defined for ``1 <= l <= L-1``.
    efficiency : ``σ_1(J_{0:L}) / (σ_1(J_{0:l}) σ_1(J_{l:L}))``, for ``1 <= l <= L-1``.
    separation : ``σ_1(J_{0:l}) / σ_2(J_{0:l})``, for ``l >= 1`` (and ``min(d_0, d_l) >= 2``).
    """

    right_shared: NDArray[np.float64]
    left_shared: NDArray[np.float64]
    consecutive: NDArray[np.float64]
    efficiency: NDArray[np.float64]
    separation: NDArray[np.float64]


def alignment_profile(jac: LayerJacobians, k: int = 1) -> AlignmentProfile:
    """All alignment measures of :class:`AlignmentProfile` for every input and cut.

    Uses the ``L + 1`` prefix and suffix products and one batched SVD per product.
    """
    if not 1 <= k <= min(jac.widths):
        raise ShapeError(f"k={k} must lie in [1, min width] (widths {jac.widths})")
    depth = jac.depth
    batch = jac.factors[0].shape[0]
    nan3 = np.full((batch, depth + 1, k), np.nan)
    right, left, cons = nan3.copy(), nan3.copy(), nan3.copy()
    eff, sep = np.full((batch, depth + 1), np.nan), np.full((batch, depth + 1), np.nan)
    prefix = [top_singular(p, min(max(k, 2), *p.shape[-2:])) for p in jac.prefix_products()]
    suffix = [top_singular(s, k) for s in jac.suffix_products()]
    u_full, s_full, v_full = prefix[depth]
    for cut in range(depth + 1):
        u_a, s_a, v_a = prefix[cut]
        u_b, s_b, v_b = suffix[cut]
        if cut >= 1:
            right[:, cut] = _cosines(v_a[..., :k], v_full[..., :k]).numpy()
            if s_a.shape[-1] >= 2:  # else J_{0:l} has a single singular value: NaN
                sep[:, cut] = (s_a[:, 0] / s_a[:, 1]).numpy()
        if cut <= depth - 1:
            left[:, cut] = _cosines(u_b, u_full[..., :k]).numpy()
        if 1 <= cut <= depth - 1:
            cons[:, cut] = _cosines(u_a[..., :k], v_b).numpy()
            eff[:, cut] = (s_full[:, 0] / (s_a[:, 0] * s_b[:, 0])).numpy()
    return AlignmentProfile(right, left, cons, eff, sep)


def rotation_baseline(
    jac: LayerJacobians, generator: torch.Generator | None = None
) -> AlignmentProfile:
    """Random baseline of the consecutive measures: a Haar rotation ``O`` inserted at each cut.

    ``consecutive`` becomes ``|<u_1(A), O v_1(B)>|`` and ``efficiency``
    ``σ_1(B O A) / (σ_1(A) σ_1(B))``: what the product would give if the two factors were
    independently oriented. Shared-basis fields are NaN.
    """
    depth, batch = jac.depth, jac.factors[0].shape[0]
    cons = np.full((batch, depth + 1, 1), np.nan)
    eff = np.full((batch, depth + 1), np.nan)
    prefix, suffix = jac.prefix_products(), jac.suffix_products()
    for cut in range(1, depth):
        d = prefix[cut].shape[-2]
        g = torch.randn(batch, d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        rot = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        u_a, s_a, _ = top_singular(prefix[cut])
        _, s_b, v_b = top_singular(suffix[cut])
        cons[:, cut, 0] = (u_a.mT @ rot @ v_b).abs()[:, 0, 0].numpy()
        s_rot = torch.linalg.matrix_norm(suffix[cut].to(torch.float64) @ rot @ prefix[cut], 2)
        eff[:, cut] = (s_rot / (s_a[:, 0] * s_b[:, 0])).numpy()
    nan3 = np.full_like(cons, np.nan)
    return AlignmentProfile(nan3, nan3.copy(), cons, eff, np.full_like(eff, np.nan))
