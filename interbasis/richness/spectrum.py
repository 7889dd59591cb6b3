r"""The spectral view of last-layer features (seed 001 §5, eqs. 5, 6, 9; appendix J.3).

The feature kernel's eigenvalues ρ_k and eigenfunctions e_k are estimated from n training
samples (Nyström, Algorithm 1): with the SVD ``Φ/√n = W S Uᵀ``,

.. math:: \rho_k = s_k^2, \qquad e_k(x) = \Phi(x)^T u_k / \sqrt{\rho_k}

(eq. 6; e_k has unit mean square on the training samples). On held-out data the e_k are
orthogonalised by QR in order of decreasing ρ_k (appendix J.3.1) and the cumulative
projections onto a function space H = span{f_1, …, f_C} are (eqs. 5, 76)

.. math:: \Pi(k) = \frac{1}{\dim H} \sum_{i \le k} \sum_j \langle q_i | h_j \rangle^2,

with q_i the orthonormalised eigenfunctions and h_j an orthonormal basis of H. Π* uses the
targets, Π̂ the learned outputs. (Eq. 5 prints the squared overlap ⟨e|P e⟩²; eq. 76, which
the seed computes, is the sum of squared overlaps above — the form for which Π reaches 1.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interbasis.errors import DataError, NonFiniteError, RankError, ShapeError
from interbasis.richness._validate import as_samples, rank_floor, same_n


@dataclass(frozen=True)
class FeatureSpectrum:
    """Empirical eigenpairs of the (uncentred) feature kernel (seed 001 Algorithm 1).

    Attributes
    ----------
    rho : (r,) float64 tensor
        Eigenvalues ρ_k, descending (ρ_1 is usually the constant eigenfunction's).
    directions : (p, r) float64 tensor
        Orthonormal feature-space directions u_k.
    n_samples : int
        Number of samples the spectrum was estimated from.
    """

    rho: torch.Tensor
    directions: torch.Tensor
    n_samples: int

    def eigenfunctions(self, features: Any) -> torch.Tensor:
        """Evaluate e_k(x) = Φ(x)ᵀ u_k / √ρ_k (eq. 6) on ``features`` (m, p) -> (m, r)."""
        phi = as_samples(features, "features", min_samples=1)
        if phi.shape[1] != self.directions.shape[0]:
            raise ShapeError(
                f"features have {phi.shape[1]} columns but the spectrum was estimated from "
                f"{self.directions.shape[0]} features (shape {tuple(phi.shape)})"
            )
        return (phi @ self.directions.to(phi.device)) / self.rho.to(phi.device).sqrt()


def feature_spectrum(features: Any) -> FeatureSpectrum:
    """Eigenvalues ρ_k and directions u_k of the feature kernel (seed 001 eq. 6).

    Parameters
    ----------
    features
        Φ on n training samples, shape (n, p). Not centred: as in the seed, the constant
        eigenfunction stays in the spectrum (usually as ρ_1).

    Returns
    -------
    FeatureSpectrum
        ``rho`` = squared singular values of Φ/√n, i.e. the eigenvalues of ΦᵀΦ/n, keeping
        those with singular value above ``s_max · max(n, p) · eps`` (round-off).

    Notes
    -----
    One thin SVD of Φ: O(n·p·min(n, p)); ΦᵀΦ is never formed (its condition number would be
    squared).
    """
    phi = as_samples(features, "features", min_samples=1)
    n = phi.shape[0]
    _, s, vh = torch.linalg.svd(phi / n**0.5, full_matrices=False)
    keep = s > rank_floor(s, tuple(phi.shape))
    if not bool(keep.any()):
        raise RankError(f"features of shape {tuple(phi.shape)} are all zero: no spectrum")
    return FeatureSpectrum(rho=s[keep] ** 2, directions=vh[keep].T.contiguous(), n_samples=n)


def _orthonormal_span(functions: torch.Tensor, name: str) -> torch.Tensor:
    """Orthonormal basis (m, r) of the column span of ``functions`` (m, C), via SVD."""
    u, s, _ = torch.linalg.svd(functions, full_matrices=False)
    keep = s > rank_floor(s, tuple(functions.shape))
    if not bool(keep.any()):
        raise RankError(f"{name} of shape {tuple(functions.shape)} is zero: its span is empty")
    return u[:, keep]


def cumulative_projection(eigenfunctions: Any, functions: Any) -> torch.Tensor:
    """Cumulative projection Π(k), k = 1..r, of a function space onto eigenfunctions (eq. 5).

    Parameters
    ----------
    eigenfunctions
        e_k evaluated on m held-out samples, shape (m, r), columns in order of decreasing ρ_k.
    functions
        f_j on the same samples, shape (m, C): targets for Π*, learned outputs for Π̂.

    Returns
    -------
    (r,) float64 tensor
        Π(k) in [0, 1], non-decreasing; Π(r) = 1 exactly when span(f) ⊆ span(e) on the
        held-out samples (always the case once r ≥ m, the finite-size effect of J.3.2).

    Notes
    -----
    The eigenfunctions are orthonormalised by a thin QR (appendix J.3.1), which keeps the span
    of the first k columns for every k. A column whose |R_kk| is below round-off
    (``max|R_jj| · max(m, r) · eps``) adds no new direction and contributes zero.
    Cost O(m·r² + m·C²).
    """
    e = as_samples(eigenfunctions, "eigenfunctions", min_samples=1)
    f = as_samples(functions, "functions", min_samples=1)
    same_n(e, f, "eigenfunctions", "functions")
    m, r = e.shape
    diag = torch.linalg.qr(e, mode="r")[1].diagonal().abs()
    new_direction = torch.zeros(r, dtype=torch.bool, device=e.device)
    new_direction[: diag.shape[0]] = diag > rank_floor(diag, (m, r))
    # QR again on the independent columns only: Householder QR returns some unit q_k for a
    # dependent column too, and later columns have components along it, so zeroing its
    # overlap would lose part of span(e_1..e_k). Without the dependent columns each q spans
    # exactly the new direction of its column (same |R_kk| as before).
    q = torch.linalg.qr(e[:, new_direction], mode="reduced")[0]
    h = _orthonormal_span(f, "functions")
    per_k = torch.zeros(r, dtype=torch.float64, device=e.device)
    per_k[new_direction] = ((q.T @ h) ** 2).sum(dim=1)
    return torch.cumsum(per_k, dim=0) / h.shape[1]


def effective_dimension(values: Any, *, skip_first: bool = True) -> float:
    r"""Exponential of the Shannon entropy of a spectrum (seed 001 eqs. 8, 9).

    Parameters
    ----------
    values
        Non-negative values, shape (r,), e.g. ρ_k from :func:`feature_spectrum` (descending)
        or per-feature utilisations Q̂(k) = Π̂(k) − Π̂(k−1).
    skip_first
        True (default): eq. 9, ``D_eff = 1 + exp(H(ρ_2..ρ_r))``, leaving out the constant
        eigenfunction's ρ_1. False: eq. 8, ``exp(H(ρ_1..ρ_r))``.

    Returns
    -------
    float
        d for d equal non-zero entries (eq. 8); 1 + d for eq. 9 with d equal entries after the
        first, and 1 when nothing after the first is non-zero.
    """
    v = torch.as_tensor(values).detach().to(torch.float64).flatten()
    if not bool(torch.isfinite(v).all()):
        raise NonFiniteError(f"values contain NaN/Inf: shape {tuple(v.shape)}")
    if bool((v < 0).any()):
        raise DataError(f"values must be non-negative, minimum is {float(v.min()):.3g}")
    rest = v[1:] if skip_first else v
    if skip_first and v.numel() >= 1 and (rest.numel() == 0 or float(rest.sum()) == 0.0):
        return 1.0  # only the first (constant) direction carries weight
    if rest.numel() == 0 or float(rest.sum()) <= 0.0:
        raise RankError(
            f"effective dimension undefined: {rest.numel()} value(s) with sum "
            f"{float(rest.sum()) if rest.numel() else 0.0} (skip_first={skip_first}); give at "
            "least one positive value"
        )
    prob = rest / rest.sum()
    entropy = -torch.sum(torch.special.xlogy(prob, prob))
    return float(torch.exp(entropy)) + (1.0 if skip_first else 0.0)


@dataclass(frozen=True)
class FeatureView:
    """The three curves of seed 001 Fig. 3 plus D_eff (eqs. 5, 9).

    Attributes
    ----------
    rho : (r,) tensor
        Eigenvalues ρ_k of the feature kernel (training samples), descending.
    pi_star : (r,) tensor
        Cumulative quality Π*(k): targets projected on the top-k eigenfunctions (held-out).
    pi_hat : (r,) tensor
        Cumulative utilisation Π̂(k): learned outputs on the top-k eigenfunctions (held-out).
    d_eff : float
        D_eff(ρ), eq. 9.
    """

    rho: torch.Tensor
    pi_star: torch.Tensor
    pi_hat: torch.Tensor
    d_eff: float


def feature_view(
    train_features: Any, test_features: Any, test_targets: Any, test_outputs: Any
) -> FeatureView:
    """ρ_k, Π*(k), Π̂(k) and D_eff for one model (seed 001 §5.2 and appendix J.3).

    Parameters
    ----------
    train_features
        Φ on training samples (n, p): gives ρ_k and u_k (Algorithm 1).
    test_features
        Φ on held-out samples (m, p): the eigenfunctions are evaluated here.
    test_targets
        Target functions on the held-out samples (m, C), e.g. one-hot labels.
    test_outputs
        Learned outputs on the held-out samples (m, C).
    """
    spectrum = feature_spectrum(train_features)
    e = spectrum.eigenfunctions(test_features)
    return FeatureView(
        rho=spectrum.rho,
        pi_star=cumulative_projection(e, test_targets),
        pi_hat=cumulative_projection(e, test_outputs),
        d_eff=effective_dimension(spectrum.rho),
    )
