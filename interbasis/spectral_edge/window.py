"""Spectrum of a window of parameter updates: singular values, gaps and the edge.

Seed 003: stack the last W updates Δθ_t ∈ R^n as rows of U (W, n), optionally subtract the
row mean, and take the thin SVD ``U = A diag(σ) V^T`` with σ_1 ≥ σ_2 ≥ …. The right singular
vectors v_k (unit parameter directions) with the largest σ form the *spectral edge*.
Two conventions for its size are in use:

* the functional-modes paper: the edge is {v_1, v_2, v_3} of a centred window, W = 20;
* the thesis paper: k* = argmax_j σ_j / σ_{j+1}, uncentred window, W = 10.

``g_23 = σ_2² − σ_3²`` is the lifecycle paper's gap between the second and third modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interbasis.errors import DataError, NonFiniteError, ShapeError


@dataclass(frozen=True)
class WindowSpectrum:
    """SVD of one window of updates.

    Attributes
    ----------
    sigma : numpy.ndarray, shape (m,)
        Singular values, descending (m = number of updates in the window).
    directions : torch.Tensor, shape (m, n), float64
        Right singular vectors as rows (unit, mutually orthogonal); the sign of each is
        fixed so that its largest-magnitude entry is positive.
    rank : int
        Numerical rank: number of σ above ``σ_1 · max(m, n) · eps_float64``.
    """

    sigma: np.ndarray
    directions: torch.Tensor
    rank: int

    @property
    def gap_ratios(self) -> np.ndarray:
        """σ_j / σ_{j+1} for j = 1 … rank−1, shape (rank−1,)."""
        r = self.rank
        if r < 2:
            return np.empty(0)
        return self.sigma[: r - 1] / self.sigma[1:r]

    @property
    def k_star(self) -> int:
        """Thesis edge size k* = argmax_j σ_j/σ_{j+1} (1-based; 1 if rank < 2).

        Only ratios between numerically non-zero σ count: a centred window of m updates
        has rank ≤ m − 1 and its last σ is round-off, whose ratio means nothing.
        """
        ratios = self.gap_ratios
        return int(np.argmax(ratios)) + 1 if ratios.size else 1

    @property
    def g23(self) -> float:
        """σ_2² − σ_3² (NaN if the window has fewer than 3 singular values)."""
        if self.sigma.size < 3:
            return float("nan")
        return float(self.sigma[1] ** 2 - self.sigma[2] ** 2)

    def energy_fraction(self, k: int) -> float:
        """Σ_{j≤k} σ_j² / Σ_j σ_j²: the share of the window's energy in the top k."""
        total = float(np.sum(self.sigma**2))
        return float(np.sum(self.sigma[:k] ** 2) / total) if total > 0 else float("nan")


def window_spectrum(updates: torch.Tensor, center: bool = True) -> WindowSpectrum:
    """Thin SVD of a window of updates (float64).

    Parameters
    ----------
    updates : torch.Tensor, shape (m, n)
        One update Δθ_t per row, m ≥ 2.
    center : bool
        Subtract the mean update (row mean) first, as in the functional-modes paper.

    Returns
    -------
    WindowSpectrum
    """
    if updates.ndim != 2:
        raise ShapeError(f"updates must have shape (window, n_params), got {tuple(updates.shape)}")
    if updates.shape[0] < 2:
        raise DataError(f"a window needs at least 2 updates, got {updates.shape[0]}")
    u = updates.detach().to(torch.float64)
    if not torch.isfinite(u).all():
        raise NonFiniteError("updates contain NaN or Inf")
    if center:
        u = u - u.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(u, full_matrices=False)
    # deterministic signs: largest-magnitude entry of each direction positive
    idx = vh.abs().argmax(dim=1)
    signs = torch.sign(vh.gather(1, idx[:, None]))
    signs[signs == 0] = 1.0
    vh = vh * signs
    sigma = s.cpu().numpy()
    tol = (sigma[0] if sigma.size else 0.0) * max(u.shape) * np.finfo(np.float64).eps
    rank = int(np.sum(sigma > tol)) if sigma.size and sigma[0] > 0 else 0
    return WindowSpectrum(sigma=sigma, directions=vh, rank=rank)


def edge_energy_shares(
    spectrum: WindowSpectrum, parts: dict[str, torch.Tensor], k: int, center: bool = True
) -> dict[str, float]:
    """Share of each additive part of the updates in the edge energy.

    With ``U = Σ_c U_c`` (e.g. the gradient and the weight-decay part of AdamW's updates)
    and P the projector on the top-k directions, the share of part c is
    ``‖U_c P‖_F² / Σ_c' ‖U_c' P‖_F²`` (each part centred like U when ``center``). The shares
    are in [0, 1] and sum to 1; cross terms between parts are not attributed.

    Parameters
    ----------
    spectrum : WindowSpectrum
    parts : dict of name -> torch.Tensor, each (m, n)
    k : int
        Edge size.
    center : bool
        Must match the centring of ``spectrum``.
    """
    v = spectrum.directions[:k]
    energies = {}
    for name, u in parts.items():
        if u.shape[1] != v.shape[1]:
            raise ShapeError(f"part {name!r} has {u.shape[1]} columns, expected {v.shape[1]}")
        u = u.to(torch.float64)
        if center:
            u = u - u.mean(dim=0, keepdim=True)
        energies[name] = float(((u @ v.T) ** 2).sum())
    total = sum(energies.values())
    if total == 0:
        return {name: float("nan") for name in energies}
    return {name: e / total for name, e in energies.items()}
