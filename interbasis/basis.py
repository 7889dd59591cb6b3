"""Bases of a node layer: the interaction basis and the PCA and neuron baselines.

Row convention (DESIGN §4): ``f_hat = [f, 1] @ C`` and ``[f, 1] ≈ f_hat @ C_pinv``; with bias
folding the constant coordinate is appended *last* to ``f`` and the constant direction is
node 0 of every basis. Without bias folding ``f_hat = f @ C``.

Local interaction basis (seed 004 §6.1 and appendix A; DESIGN §4)::

    Cov = U D U^T                    (centred Gram; uncentred when center=False)
    M_z = D^{1/2} U^T M U D^{1/2}    (M in whitened coordinates z = (f - mu) U D^{-1/2})
    M_z = V Λ V^T
    f_hat = (f - mu) U D^{-1/2} V Λ^{1/2}   (non-constant nodes), f_hat_0 = 1

Seed 004 §6.1 writes (D_M^{1/2})^+ where appendix A and rib use Λ^{1/2}; we use Λ^{1/2}. The
constant node is kept out of the rotation V and its Λ is NaN. ``C_pinv`` is the left inverse
that reconstructs the activations on the data's span (``C_pinv`` row 0 is ``[mu, 1]``).
Eigenvalues below the truncation floor are dropped: ``"auto"`` is the relative floor
``max_eigenvalue * dim * eps_float64`` (an absolute 1e-15, rib's choice, sits at round-off);
for Λ the scale is ``max(D) * |M|``, the size of the factors of ``M_z``, since whitening can
make round-off large next to Λ's own maximum. A number is an absolute threshold.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from interbasis.errors import DataError, RankError, ShapeError
from interbasis.io import atomic_write, read_bases_file
from interbasis.performance import single_thread

FORMAT_NAME = "interbasis.Basis"
FORMAT_VERSION = 1
Truncation = float | Literal["auto"]
_EPS64 = float(torch.finfo(torch.float64).eps)


@dataclass
class Basis:
    """A basis of one node layer.

    Attributes
    ----------
    name : node-layer name (module name or ``"output"``).
    C : ``(d + 1, n)`` with a constant (else ``(d, n)``) float64; ``f_hat = [f, 1] @ C``.
    C_pinv : ``(n, d + 1)`` (else ``(n, d)``); ``[f, 1] ≈ f_hat @ C_pinv`` on the data.
    eigenvalues : ``(n,)`` Λ of the interaction basis; the PCA variances for ``"pca"``; the
        per-neuron variances for ``"neuron"``. NaN for the constant node 0.
    gram_eigenvalues : ``(d,)`` all eigenvalues of the (centred) activation Gram, descending.
    mean : ``(d,)`` mean activation (over samples and positions).
    has_constant : whether node 0 is the constant direction (bias folding).
    kind : ``"interaction"``, ``"pca"`` or ``"neuron"``.
    """

    name: str
    C: torch.Tensor
    C_pinv: torch.Tensor
    eigenvalues: torch.Tensor
    gram_eigenvalues: torch.Tensor
    mean: torch.Tensor
    has_constant: bool
    kind: str

    @property
    def n_nodes(self) -> int:
        """Number of basis directions, the constant included."""
        return int(self.C.shape[1])

    @property
    def dim(self) -> int:
        """Width ``d`` of the node layer's activations."""
        return int(self.mean.shape[0])

    def to(self, device: torch.device | str) -> Basis:
        """A copy with every tensor on ``device``."""
        moved = {f: getattr(self, f).to(device) for f in _TENSORS}
        return Basis(self.name, has_constant=self.has_constant, kind=self.kind, **moved)

    def transform(self, acts: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., n)``: activations in this basis (float64)."""
        x = acts.to(torch.float64)
        if x.shape[-1] != self.dim:
            raise ShapeError(f"{self.name}: activations have width {x.shape[-1]}, not {self.dim}")
        C = self.C.to(x.device)
        if self.has_constant:
            return x @ C[:-1] + C[-1]
        return x @ C

    def inverse_transform(self, f_hat: torch.Tensor) -> torch.Tensor:
        """``(..., n) -> (..., d)``: activations reconstructed from basis coordinates."""
        rec = f_hat.to(torch.float64) @ self.C_pinv.to(f_hat.device)
        return rec[..., :-1] if self.has_constant else rec

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``.safetensors`` (default) or ``.pt``, atomically, with a format version."""
        return save_bases([self], path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Basis:
        """Read a file written by :meth:`save` (or the first basis of :func:`save_bases`)."""
        return load_bases(path)[0]


def eigh_descending(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix in float64, eigenvalues descending.

    Each eigenvector's sign is fixed so that its largest-magnitude entry is positive, which
    makes results deterministic (the eigenvectors themselves are defined up to sign).
    """
    m = matrix.to(torch.float64)
    with single_thread(m.shape[0] < 1024 and m.device.type == "cpu"):
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    vals, vecs = vals.flip(0), vecs.flip(1)
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1], device=vecs.device)])
    signs[signs == 0] = 1.0
    return vals, vecs * signs


def truncation_floor(
    eigenvalues: torch.Tensor, truncation: Truncation, scale: float = 0.0
) -> float:
    """Threshold below which eigenvalues are dropped (see the module docstring).

    ``"auto"`` is ``max(largest eigenvalue, scale) * dim * eps_float64``, where ``scale`` is
    the norm of the matrix's factors when it was formed as a product (round-off is relative
    to them, not to its own largest eigenvalue).
    """
    if truncation == "auto":
        top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
        return max(top, scale, 0.0) * eigenvalues.numel() * _EPS64
    if (
        isinstance(truncation, (str, bool))
        or not isinstance(truncation, numbers.Real)
        or not truncation >= 0
    ):
        raise DataError(f'truncation must be "auto" or a number >= 0, got {truncation!r}')
    return float(truncation)


def _kept(vals: torch.Tensor, truncation: Truncation, scale: float = 0.0) -> torch.Tensor:
    floor = truncation_floor(vals, truncation, scale)
    return (vals > floor) & (vals > 0)


def _embed(
    name: str,
    A: torch.Tensor,
    A_pinv: torch.Tensor,
    eigenvalues: torch.Tensor,
    gram_eigenvalues: torch.Tensor,
    mean: torch.Tensor,
    shift: torch.Tensor | None,
    kind: str,
) -> Basis:
    """Assemble C from its activation part ``A`` ``(d, k)``: ``f_hat = (f - shift) @ A``.

    With ``shift`` (bias folding) node 0 is the constant: ``C = [[0, A], [1, -shift A]]``
    and ``C_pinv = [[shift, 1], [A_pinv, 0]]``.
    """
    if shift is None:
        return Basis(name, A, A_pinv, eigenvalues, gram_eigenvalues, mean, False, kind)
    d, k = A.shape
    C = A.new_zeros(d + 1, k + 1)
    C[:d, 1:] = A
    C[d, 0] = 1.0
    C[d, 1:] = -shift @ A
    C_pinv = A.new_zeros(k + 1, d + 1)
    C_pinv[0, :d] = shift
    C_pinv[0, d] = 1.0
    C_pinv[1:, :d] = A_pinv
    lam = torch.cat([eigenvalues.new_full((1,), float("nan")), eigenvalues])
    return Basis(name, C, C_pinv, lam, gram_eigenvalues, mean, True, kind)


def _whitening(
    name: str, mean: torch.Tensor, cov: torch.Tensor, truncation: Truncation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(all Gram eigenvalues, kept D, kept U)``; raises if nothing is kept."""
    vals, vecs = eigh_descending(cov)
    keep = _kept(vals, truncation)
    if not keep.any():
        raise RankError(
            f"node layer {name!r}: the activation Gram has no direction above the truncation "
            f"threshold {truncation_floor(vals, truncation):.3g} (largest eigenvalue "
            f"{float(vals.max()):.3g}); the activations are constant or zero on the data"
        )
    return vals, vals[keep], vecs[:, keep]


def interaction_basis(
    name: str,
    mean: torch.Tensor,
    gram: torch.Tensor,
    M: torch.Tensor,
    *,
    center: bool = True,
    fold_bias: bool = True,
    truncation: Truncation = "auto",
) -> Basis:
    """Local (or global) interaction basis from the activation Gram and Jacobian Gram.

    Parameters
    ----------
    mean : ``(d,)`` mean activation.
    gram : ``(d, d)`` centred Gram (``center=True``) or uncentred second moment.
    M : ``(d, d)`` Jacobian Gram ``E[J^T J]`` of the next node layer's basis functions with
        respect to this layer's activations (seed 004 eq. 40, local form of appendix A).
    """
    _check_square(name, gram, mean.shape[0], "activation Gram")
    _check_square(name, M, mean.shape[0], "Jacobian Gram M")
    g_vals, D, U = _whitening(name, mean, gram, truncation)
    half = U * D.sqrt()  # U D^{1/2}
    M = M.to(torch.float64)
    lam, V = eigh_descending(half.T @ M @ half)
    # M_z is a product: its round-off scales with |D| |M|, which whitening can make much
    # larger than its own largest eigenvalue
    scale = float(D.max()) * float(eigh_descending(M)[0][0].clamp_min(0))
    keep = _kept(lam, truncation, scale)
    if not keep.any():
        raise RankError(
            f"node layer {name!r}: M has no direction above the truncation threshold "
            f"{truncation_floor(lam, truncation, scale):.3g} (largest {float(lam.max()):.3g}); the "
            "next node layer does not depend on this one on the data"
        )
    lam, V = lam[keep], V[:, keep]
    A = (U / D.sqrt()) @ V * lam.sqrt()  # U D^{-1/2} V Λ^{1/2}
    A_pinv = (V / lam.sqrt()[None, :]).T @ half.T  # Λ^{-1/2} V^T D^{1/2} U^T
    shift = _shift(mean, center, fold_bias)
    return _embed(name, A, A_pinv, lam, g_vals, mean, shift, "interaction")


def pca_basis(
    name: str,
    mean: torch.Tensor,
    gram: torch.Tensor,
    *,
    center: bool = True,
    fold_bias: bool = True,
    truncation: Truncation = "auto",
) -> Basis:
    """PCA baseline: ``C = Y U`` (centring then rotation, no whitening, no M; DESIGN §4).

    Eigenvalues are the PCA variances. Without bias folding (e.g. the final node layer)
    ``f_hat = f @ U``.
    """
    _check_square(name, gram, mean.shape[0], "activation Gram")
    g_vals, D, U = _whitening(name, mean, gram, truncation)
    return _embed(name, U, U.T, D, g_vals, mean, _shift(mean, center, fold_bias), "pca")


def neuron_basis(name: str, mean: torch.Tensor, gram: torch.Tensor, *, fold_bias: bool) -> Basis:
    """Neuron baseline: the identity, with the constant moved to node 0 when folded.

    Eigenvalues are the per-neuron variances (diagonal of the centred Gram ``gram``).
    """
    d = mean.shape[0]
    _check_square(name, gram, d, "activation Gram")
    eye = torch.eye(d, dtype=torch.float64, device=mean.device)
    g_vals = eigh_descending(gram)[0]
    shift = mean.new_zeros(d) if fold_bias else None
    return _embed(name, eye, eye.clone(), gram.diagonal().clone(), g_vals, mean, shift, "neuron")


def _shift(mean: torch.Tensor, center: bool, fold_bias: bool) -> torch.Tensor | None:
    if not fold_bias:
        return None
    return mean if center else mean.new_zeros(mean.shape)


def _check_square(name: str, m: torch.Tensor, d: int, what: str) -> None:
    if m.shape != (d, d):
        raise ShapeError(
            f"node layer {name!r}: {what} has shape {tuple(m.shape)}, expected {(d, d)}"
        )


_TENSORS = ("C", "C_pinv", "eigenvalues", "gram_eigenvalues", "mean")


def save_bases(bases: list[Basis], path: str | os.PathLike[str]) -> Path:
    """Write a list of bases to one ``.safetensors`` (or ``.pt``) file, atomically."""
    target = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    header = []
    for i, b in enumerate(bases):
        for field in _TENSORS:
            tensors[f"{i}.{field}"] = (
                getattr(b, field).detach().to("cpu", torch.float64).contiguous()
            )
        header.append({"name": b.name, "has_constant": b.has_constant, "kind": b.kind})
    meta = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "bases": json.dumps(header)}

    def write(tmp: Path) -> None:
        if target.suffix == ".pt":
            torch.save({"metadata": meta, "tensors": tensors}, tmp)
        else:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=meta)

    return atomic_write(target, write)


def load_bases(path: str | os.PathLike[str]) -> list[Basis]:
    """Read bases written by :func:`save_bases` or :meth:`Basis.save`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FormatError
        The file is not an interbasis basis file, has an unknown format version, or a missing,
        mistyped or misshapen field (checked by :func:`interbasis.io.read_bases_file`).
    """
    return [Basis(**fields) for fields in read_bases_file(path, FORMAT_NAME, FORMAT_VERSION)]
