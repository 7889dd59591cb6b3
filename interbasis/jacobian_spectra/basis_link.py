"""Link between Jacobian singular directions and the interaction basis.

At node layer ``l`` both objects give directions in the activation space ``R^{d_l}``:

- the top right-singular vectors of the Jacobian to the output, pooled over inputs: the top
  eigenvectors of ``Σ_x J_{l:L}(x)^T J_{l:L}(x)``, i.e. the right-singular vectors of the
  stacked matrix ``[J(x_1); ...; J(x_B)]`` ``(B·d_L, d_l)``;
- the top interaction-basis directions: rows of ``C_pinv`` (``f ≈ f_hat @ C_pinv``), with the
  constant node (row 0) and the appended constant coordinate (last column) dropped. Columns
  of ``C`` are read-out functionals, not directions, so they are not used.

Their agreement is reported as principal angles (:func:`~.alignment.principal_angles`, the
Knyazev–Argentati algorithm of ``scipy.linalg.subspace_angles``; scipy 1.17 applies its
sine/cosine switch in the wrong order when small and large angles mix, e.g. angles
``(1e-9, π/2)`` come back as ``(0, π/2)`` and ``(0, x)`` as ``(1.5e-8, x)``, so we use ours,
which the tests compare with scipy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from interbasis.errors import NonFiniteError, RankError, ShapeError
from interbasis.jacobian_spectra.alignment import principal_angles
from interbasis.jacobian_spectra.chain import LayerJacobians

__all__ = [
    "BasisLike",
    "basis_directions",
    "direction_angles",
    "interaction_basis_angles",
    "jacobian_input_directions",
]


class BasisLike(Protocol):
    """What the link reads from an ``interbasis.Basis``."""

    name: str
    C_pinv: Any  # (n, d + 1) with a constant, else (n, d)
    has_constant: bool


def jacobian_input_directions(
    jac: Tensor, k: int, gram: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Top-``k`` right-singular directions of stacked Jacobians ``jac`` ``(B, m, d)``: ``(d, k)``.

    Without ``gram``: the top eigenvectors of ``Σ_x J(x)^T J(x)`` (float64 SVD of the
    ``(B·m, d)`` stack, which avoids squaring the condition number).

    With the (centred) activation Gram ``gram`` ``(d, d)``: ``G^{1/2} V_k(J G^{1/2})``, the
    data-weighted version. By DESIGN §4 the rows of ``C_pinv`` are
    ``Λ^{-1/2} V^T D^{1/2} U^T`` with ``V`` the eigenvectors of ``G^{1/2} M G^{1/2}``
    (in ``U`` coordinates), so for ``M = E[J^T J]`` (global scope, neuron output basis)
    this spans exactly the top-``k`` interaction directions; the raw directions agree with
    them only when ``G ∝ I``.
    """
    if jac.ndim != 3 or not 1 <= k <= jac.shape[-1]:
        raise ShapeError(f"jac must be (B, m, d) with 1 <= k <= d; got {tuple(jac.shape)}, {k=}")
    d = jac.shape[-1]
    stacked = jac.detach().to(torch.float64).cpu().reshape(-1, d)
    root = None
    if gram is not None:
        g = torch.as_tensor(np.asarray(gram, dtype=np.float64))
        if g.shape != (d, d) or not torch.isfinite(g).all():
            raise ShapeError(f"gram must be a finite ({d}, {d}) matrix, got {tuple(g.shape)}")
        w, u = torch.linalg.eigh((g + g.T) / 2)
        root = (u * w.clamp_min(0).sqrt()) @ u.T  # G^{1/2}
        stacked = stacked @ root
    _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    if k > int((s > s[0] * max(stacked.shape) * torch.finfo(torch.float64).eps).sum()):
        raise RankError(f"the pooled Jacobian {tuple(jac.shape)} has rank < k={k}")
    v = vh[:k].T
    return (v if root is None else root @ v).numpy()


def basis_directions(basis: BasisLike) -> NDArray[np.float64]:
    """Activation-space directions of a basis: rows of ``C_pinv``, ``(n', d)``.

    With a constant (``has_constant``), node 0 and the last coordinate are dropped. If the basis
    has ``eigenvalues``, rows are ordered by descending eigenvalue (NaN last).
    """
    c_pinv = np.asarray(
        basis.C_pinv.detach().cpu() if isinstance(basis.C_pinv, Tensor) else basis.C_pinv,
        dtype=np.float64,
    )
    if c_pinv.ndim != 2 or (basis.has_constant and min(c_pinv.shape) < 2):
        raise ShapeError(f"basis {basis.name!r}: C_pinv has shape {c_pinv.shape}")
    rows = c_pinv[1:, :-1] if basis.has_constant else c_pinv
    eig = getattr(basis, "eigenvalues", None)
    if eig is not None:
        lam = np.asarray(eig.detach().cpu() if isinstance(eig, Tensor) else eig, np.float64)
        lam = lam[1:] if basis.has_constant else lam
        if lam.shape == (rows.shape[0],):
            rows = rows[np.argsort(-np.nan_to_num(lam, nan=-np.inf), kind="stable")]
    return rows


def direction_angles(
    directions: ArrayLike, rows: ArrayLike, k: int | None = None, *, name: str = "layer"
) -> NDArray[np.float64]:
    """Principal angles between ``span(directions[:, :k])`` and ``span(rows[:k].T)``.

    ``directions`` ``(d, k1)`` (columns, e.g. :func:`jacobian_input_directions`), ``rows``
    ``(n, d)`` (e.g. :func:`basis_directions`, most important first). Returns ``(k,)`` angles
    in radians, ascending.
    """
    v = np.asarray(directions, dtype=np.float64)
    r = np.asarray(rows, dtype=np.float64)
    if v.ndim != 2 or r.ndim != 2 or v.shape[0] != r.shape[1]:
        raise ShapeError(
            f"{name}: Jacobian directions {v.shape} (d, k) and basis rows {r.shape} (n, d) "
            "must share d"
        )
    k = min(v.shape[1], r.shape[0]) if k is None else k
    if not 1 <= k <= min(v.shape[1], r.shape[0]):
        raise ShapeError(f"{name}: k={k} exceeds {v.shape[1]} directions / {r.shape[0]} rows")
    a, b = v[:, :k], r[:k].T
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise NonFiniteError(f"{name}: NaN or Inf in the directions")
    for what, m in (("Jacobian directions", a), ("basis rows", b)):
        if np.linalg.matrix_rank(m) < k:
            raise RankError(f"{name}: the top-{k} {what} are linearly dependent")
    return principal_angles(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def interaction_basis_angles(
    jac: LayerJacobians, bases: Sequence[BasisLike], k: int = 1
) -> dict[str, NDArray[np.float64]]:
    """Principal angles per node layer between ``V_k(J_{l:L})`` (pooled) and the top-``k``
    interaction-basis directions.

    ``bases`` are matched to chain indices by name (``names[l]`` is the module whose input is
    layer ``l``; ``"output"`` is ``L``), e.g. ``build_bases(mlp, x, ["layers.1", ...])``.
    Returns ``{basis.name: angles (k,)}``.
    """
    suffix = jac.suffix_products()
    out = {}
    for basis in bases:
        layer = jac.index(basis.name)
        directions = jacobian_input_directions(suffix[layer], k)
        out[basis.name] = direction_angles(directions, basis_directions(basis), k, name=basis.name)
    return out
