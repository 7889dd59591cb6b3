r"""Richness baselines compared with D_LR in seed 001 §4.1 and appendix H.2.

- S_init = CKA(K_init, K_learned): use :func:`interbasis.richness.cka` on the features at
  initialisation and now.
- ||θ||²: :func:`parameter_norm_sq`.
- NC1 = Tr((Σ_b + 10⁻⁴ I)⁻¹ Σ_W) and Tr(Σ_W) (Papyan et al. 2020; seed 001 Prop. 1,
  eqs. 33–34, H.2), with

.. math:: \Sigma_W = \sum_i \mathbf E_{x \in A_i}[(\Phi(x) - \mu_i)(\Phi(x) - \mu_i)^T],
          \qquad \Sigma_b = \frac1C \sum_i (\mu_i - \bar\mu)(\mu_i - \bar\mu)^T,

μ_i the mean of class i, μ̄ the mean of the class means and C the number of classes present.
"""

from __future__ import annotations

from typing import Any

import torch

from interbasis.errors import DataError, ShapeError
from interbasis.richness._validate import as_samples


def parameter_norm_sq(model: torch.nn.Module) -> float:
    """Squared Frobenius norm of all parameters, ||θ||² (seed 001 §4.1), in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        total += p.detach().to(torch.float64).pow(2).sum().cpu()
    return float(total)


def _labels(labels: Any, n: int) -> torch.Tensor:
    """Validate class labels: (n,) integers, or (n, C) scores/one-hot reduced by argmax."""
    t = labels.detach() if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if t.ndim == 2:
        t = t.argmax(dim=1)
    if t.ndim != 1 or t.shape[0] != n:
        raise ShapeError(
            f"labels must have shape ({n},) or ({n}, C) to match the features, got {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices, got dtype {t.dtype}")
    return t


def class_covariances(features: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Within- and between-class covariances Σ_W, Σ_b, each (p, p) float64 (eqs. 33, 34).

    Parameters
    ----------
    features
        Φ on n samples, shape (n, p).
    labels
        Class of each sample, shape (n,) integers (or (n, C) one-hot/scores: argmax).

    Raises
    ------
    DataError
        Fewer than two distinct classes (Σ_b would be zero), non-integer labels.
    ShapeError
        Labels that do not match the features.
    """
    phi = as_samples(features, "features")
    y = _labels(labels, phi.shape[0]).to(phi.device)
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    n_classes = classes.numel()
    if n_classes < 2:
        raise DataError(f"NC1 needs at least two classes, labels contain {n_classes}")
    means = torch.zeros(n_classes, phi.shape[1], dtype=torch.float64, device=phi.device)
    means.index_add_(0, inverse, phi)
    means /= counts[:, None].to(torch.float64)
    within = phi - means[inverse]
    weight = 1.0 / counts.to(torch.float64)[inverse]
    sigma_w = (within * weight[:, None]).T @ within
    between = means - means.mean(dim=0, keepdim=True)
    sigma_b = between.T @ between / n_classes
    return sigma_w, sigma_b


def nc1(features: Any, labels: Any, *, ridge: float = 1e-4) -> float:
    """Neural-collapse measure NC1 = Tr((Σ_b + ridge·I)⁻¹ Σ_W) (seed 001 Prop. 1, H.2).

    The seed replaces the pseudo-inverse Σ_b^† by (Σ_b + 10⁻⁴ I)^† for stability; Σ_b + ridge·I
    is symmetric positive definite, so it is inverted through ``eigh``. Cost O(n·p² + p³).
    """
    if not ridge > 0:
        raise DataError(f"ridge must be positive, got {ridge}")
    sigma_w, sigma_b = class_covariances(features, labels)
    eye = torch.eye(sigma_b.shape[0], dtype=torch.float64, device=sigma_b.device)
    lam, vec = torch.linalg.eigh(sigma_b + ridge * eye)
    return float(torch.sum((vec * (sigma_w @ vec)).sum(dim=0) / lam))


def within_class_trace(features: Any, labels: Any) -> float:
    """Tr(Σ_W), the within-class variability reported beside NC1 (seed 001 appendix H.2)."""
    sigma_w, _ = class_covariances(features, labels)
    return float(torch.trace(sigma_w))
