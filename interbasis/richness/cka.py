r"""Centred kernel alignment and the low-rank measure D_LR (seed 001 eqs. 3, 4, 7, 58).

Linear CKA of two kernels (seed 001 eq. 7 / 58)

.. math:: \mathrm{CKA}(A, B) = \frac{\mathrm{Tr}(c(A)\,c(B))}{\|c(A)\|_F\,\|c(B)\|_F},
          \qquad c(A) = H A H,\; H = I - \tfrac1n \mathbf 1 \mathbf 1^T.

With kernels given by their square roots, :math:`A = X X^T`, :math:`B = Y Y^T`
(seed 001 appendix E.1), :math:`c(A) = X_c X_c^T` with :math:`X_c` the column-centred
features, and

.. math:: \mathrm{CKA} = \frac{\|X_c^T Y_c\|_F^2}{\|X_c^T X_c\|_F\,\|Y_c^T Y_c\|_F},

which never forms an n×n matrix. D_LR (eq. 4) is ``1 - CKA(T, T_MP)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from interbasis.errors import DataError, RankError, ShapeError
from interbasis.richness._validate import EPS64, as_samples, centred, rank_floor, same_n


def _clip_unit(value: float) -> float:
    """Clip a CKA value to [0, 1]; only round-off (|excess| ~ 1e-15) is ever removed."""
    return min(1.0, max(0.0, value))


def _cka_features(xc: torch.Tensor, yc: torch.Tensor) -> float:
    """CKA of centred feature matrices ``xc`` (n, p), ``yc`` (n, q); cost O(n(p+q)²)."""
    cross = torch.linalg.matrix_norm(xc.T @ yc) ** 2
    norm_x = torch.linalg.matrix_norm(xc.T @ xc)
    norm_y = torch.linalg.matrix_norm(yc.T @ yc)
    return float(cross / (norm_x * norm_y))


def _as_kernel(k: Any, name: str) -> torch.Tensor:
    """Validate an (n, n) kernel and return it symmetrised in float64."""
    t = as_samples(k, name)
    n, m = t.shape
    if n != m:
        raise ShapeError(f"kernel {name} must be square (n, n), got {tuple(t.shape)}")
    scale = float(t.abs().max())
    asym = float((t - t.T).abs().max())
    # 1e-6 relative: a float32 product X X^T is symmetric to ~1e-7; a real asymmetry is larger.
    if asym > 1e-6 * scale:
        raise DataError(
            f"kernel {name} is not symmetric: max |K - K^T| = {asym:.3g} (max |K| = {scale:.3g})"
        )
    return 0.5 * (t + t.T)


def _centre_kernel(k: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``H k H``; ``RankError`` if it vanishes up to the round-off of the means."""
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    n = k.shape[0]
    if float(torch.linalg.matrix_norm(kc)) <= n * n * EPS64 * float(torch.linalg.matrix_norm(k)):
        raise RankError(
            f"kernel {name} is zero after centring (shape {tuple(k.shape)}): "
            "it only contains a constant and CKA is undefined"
        )
    return kc


def cka(a: Any, b: Any, *, form: Literal["features", "kernel"] = "features") -> float:
    r"""Linear centred kernel alignment (seed 001 eq. 7 / 58).

    Parameters
    ----------
    a, b
        ``form="features"``: feature matrices ``a`` (n, p) and ``b`` (n, q) (rows are
        samples, 1-D means one feature); the kernels are ``a aᵀ`` and ``b bᵀ`` (appendix E.1)
        and are never formed. Cost O(n·(p² + pq + q²)) time, O((p + q)²) extra memory.
        ``form="kernel"``: symmetric kernels (n, n); cost O(n²).
    form
        How ``a`` and ``b`` are given.

    Returns
    -------
    float
        CKA in [0, 1]; 1 when the centred kernels are proportional. Invariant to
        orthogonal maps and isotropic scaling of either feature matrix and to adding a
        constant to it.

    Raises
    ------
    ShapeError
        Different numbers of samples, wrong rank, non-square kernel.
    DataError
        ``n < 2``; a kernel that is not symmetric; an unknown ``form``.
    RankError
        Constant features or kernel (the centred kernel is zero, CKA undefined).
    NonFiniteError
        NaN or Inf in the input.
    """
    if form == "features":
        x = as_samples(a, "a")
        y = as_samples(b, "b")
        same_n(x, y, "a", "b")
        return _clip_unit(_cka_features(centred(x, "a"), centred(y, "b")))
    if form == "kernel":
        ka = _as_kernel(a, "a")
        kb = _as_kernel(b, "b")
        same_n(ka, kb, "a", "b")
        ca = _centre_kernel(ka, "a")
        cb = _centre_kernel(kb, "b")
        value = torch.sum(ca * cb) / (torch.linalg.matrix_norm(ca) * torch.linalg.matrix_norm(cb))
        return _clip_unit(float(value))
    raise DataError(f"form must be 'features' or 'kernel', got {form!r}")


def output_span(outputs: Any) -> torch.Tensor:
    """Orthonormal basis (n, r) of span(centred outputs): the centred T_MP's square root.

    Seed 001 Definition 1 / appendix B.3: ``c(a1 |1><1| + a2 P_span(F,1)) = a2 P_span(F_c)``,
    so the centred MP operator is the projector ``Q Qᵀ`` with ``Q`` from the SVD of the
    centred outputs ``F_c`` (singular values below ``s_max · max(n, C) · eps`` are dropped).
    Cost O(n·C²).
    """
    f = as_samples(outputs, "outputs")
    fc = centred(f, "outputs")
    u, s, _ = torch.linalg.svd(fc, full_matrices=False)
    keep = s > rank_floor(s, tuple(fc.shape))
    return u[:, keep]


def d_lr(features: Any, outputs: Any, *, mode: Literal["gram", "projection"] = "gram") -> float:
    r"""Low-rank measure D_LR = 1 − CKA(T, T_MP) (seed 001 eq. 4).

    Parameters
    ----------
    features
        Penultimate features Φ, shape (n, p) (1-D: one feature).
    outputs
        Network outputs F on the same samples, shape (n, C) (1-D: scalar output).
    mode
        ``"gram"`` (default, appendix E.1): ``1 − CKA(ΦΦᵀ, FFᵀ)``.
        ``"projection"`` (Definition 1, eq. 3): ``1 − CKA(ΦΦᵀ, P)`` with ``P`` the projector
        onto span(F) plus the constant, i.e. F's singular values set to one. The two agree
        when the centred outputs are isotropic (all non-zero singular values of F_c equal).

    Returns
    -------
    float
        D_LR in [0, 1]; 0 when the centred features span exactly the (centred) output space
        with the same kernel ("gram") or isotropically ("projection").

    Notes
    -----
    Cost O(n·(p² + pC + C²)) time and O((p + C)²) extra memory (plus an O(nC²) SVD for
    ``"projection"``); no n×n kernel is formed. The seed quotes O(npC): that is the cross
    term ΦᵀF alone, the normalisation ||ΦᵀΦ||_F adds the O(np²).

    Raises
    ------
    ShapeError, DataError, RankError, NonFiniteError
        As :func:`cka`; RankError also for constant outputs; DataError for an unknown
        ``mode``.
    """
    if mode not in ("gram", "projection"):
        raise DataError(f"mode must be 'gram' or 'projection', got {mode!r}")
    phi = as_samples(features, "features")
    f = as_samples(outputs, "outputs")
    same_n(phi, f, "features", "outputs")
    phic = centred(phi, "features")
    other = centred(f, "outputs") if mode == "gram" else output_span(f)
    return 1.0 - _clip_unit(_cka_features(phic, other))
