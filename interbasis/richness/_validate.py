"""Input checks shared by the richness functions: shapes, sample counts, finiteness."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from interbasis.errors import DataError, NonFiniteError, RankError, ShapeError

EPS64 = float(torch.finfo(torch.float64).eps)


def as_samples(x: Any, name: str, *, min_samples: int = 2) -> torch.Tensor:
    """Return ``x`` as a float64 ``(n, d)`` tensor (a 1-D input is one column).

    Raises ``ShapeError`` for other ranks or an empty feature axis, ``DataError`` when
    ``n < min_samples`` or the dtype is not numeric, ``NonFiniteError`` for NaN/Inf.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise DataError(f"{name} must be a tensor or array, got {type(x).__name__}") from err
    if t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ShapeError(
            f"{name} must have shape (n, d) or (n,), got {tuple(t.shape)}; "
            "select one position or flatten the trailing axes first"
        )
    n, d = t.shape
    if d == 0:
        raise ShapeError(f"{name} has no columns: shape {tuple(t.shape)}")
    if n < min_samples:
        raise DataError(f"{name} needs at least {min_samples} samples (rows), got n={n}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{name} contains {bad} NaN/Inf entries (shape {tuple(t.shape)})")
    return t


def same_n(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ShapeError`` unless ``a`` and ``b`` have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ShapeError(
            f"{name_a} and {name_b} must have the same number of samples: "
            f"{name_a} has shape {tuple(a.shape)}, {name_b} has shape {tuple(b.shape)}"
        )


def centred(x: torch.Tensor, name: str) -> torch.Tensor:
    """Subtract the column means; raise ``RankError`` if nothing is left (constant ``x``).

    The tolerance ``n · eps · ||x||_F`` bounds the round-off of computing a mean of n
    numbers and subtracting it, so only inputs that are constant up to round-off fail.
    """
    xc = x - x.mean(dim=0, keepdim=True)
    scale = float(torch.linalg.matrix_norm(x))
    if float(torch.linalg.matrix_norm(xc)) <= x.shape[0] * EPS64 * scale:
        raise RankError(
            f"{name} is constant across the {x.shape[0]} samples (shape {tuple(x.shape)}): "
            "its centred kernel is zero and CKA is undefined"
        )
    return xc


def rank_floor(singular_values: torch.Tensor, shape: tuple[int, ...]) -> float:
    """Relative floor ``s_max · max(shape) · eps`` below which a singular value is round-off."""
    if singular_values.numel() == 0:
        return 0.0
    return float(singular_values.max()) * max(shape) * EPS64
