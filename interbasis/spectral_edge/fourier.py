"""Fourier measures of functional modes: 1-D concentration and the 2-D split over Z_n².

Concentration (seed 003). For group means g_q (q = 0 … n−1, see :mod:`.groups`) let
``ĝ_ω = Σ_q g_q e^{−2πi ωq/n}`` and ``P_ω = ‖ĝ_ω‖² / Σ_{ω'=1}^{⌊n/2⌋} ‖ĝ_ω'‖²`` for
ω = 1 … ⌊n/2⌋ (ω = 0, the mean, is left out; ‖·‖ sums over channels of a vector field).
The concentration is ``F = max_ω P_ω``: 1 for a single harmonic, 1/⌊n/2⌋ for a flat power.

2-D split. For a field f(a, b) on the full grid Z_n² let
``f̂(k_1, k_2) = Σ_{a,b} f(a,b) e^{−2πi(k_1 a + k_2 b)/n}``. Without the mean (0, 0), its
energy ``‖f̂‖²`` splits into

* ``sum``: k_1 = k_2 — functions of a + b;
* ``diff``: k_1 = −k_2 (mod n), not already in ``sum`` — functions of a − b;
* ``single``: exactly one of k_1, k_2 is 0 — functions of a alone or of b alone;
* ``other``: the rest (products of a- and b-harmonics at unrelated frequencies).

For odd n the first two are disjoint; for even n they meet at (n/2, n/2), counted as ``sum``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interbasis.errors import DataError, NonFiniteError, ShapeError
from interbasis.spectral_edge.groups import discrete_log_table


@dataclass(frozen=True)
class Concentration:
    """Fourier concentration of group means.

    Attributes
    ----------
    F : float
        Largest normalised power share (NaN if the group means are constant).
    peak : int
        Frequency ω ∈ 1 … ⌊n/2⌋ of the largest share (0 if undefined).
    power : numpy.ndarray, shape (⌊n/2⌋,)
        Normalised power P_ω for ω = 1 … ⌊n/2⌋.
    """

    F: float
    peak: int
    power: np.ndarray


def fourier_concentration(group_values: np.ndarray) -> Concentration:
    """F = max_ω P_ω of group means (see module docstring).

    Parameters
    ----------
    group_values : array, shape (n,) or (n, d)
        Group means g_q, n ≥ 2 (a vector field's channels are summed in the power).
    """
    g = np.asarray(group_values, dtype=np.float64)
    if g.ndim not in (1, 2) or g.shape[0] < 2:
        raise ShapeError(f"group_values must have shape (n,) or (n, d) with n >= 2, got {g.shape}")
    if not np.all(np.isfinite(g)):
        raise NonFiniteError("group_values contain NaN or Inf")
    n = g.shape[0]
    spec = np.fft.rfft(g, axis=0)[1 : n // 2 + 1]
    power = np.abs(spec) ** 2
    if power.ndim == 2:
        power = power.sum(axis=1)
    total = power.sum()
    # a constant g has only round-off power: relative to the mean's power it is ~eps
    scale = float(np.sum(g**2)) * n
    if total <= scale * 1e3 * np.finfo(np.float64).eps ** 2 or total == 0:
        return Concentration(float("nan"), 0, np.full(n // 2, np.nan))
    power = power / total
    k = int(np.argmax(power))
    return Concentration(float(power[k]), k + 1, power)


@dataclass(frozen=True)
class FourierSplit2D:
    """Shares of a field's non-constant 2-D Fourier energy (they sum to 1).

    Attributes
    ----------
    sum, diff, single, other : float
    power : numpy.ndarray, shape (n, n)
        ‖f̂(k_1, k_2)‖² normalised to total 1 without (0, 0) (which is set to 0).
    """

    sum: float
    diff: float
    single: float
    other: float
    power: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """The four shares by name."""
        return {"sum": self.sum, "diff": self.diff, "single": self.single, "other": self.other}


def fourier_split_2d(field: np.ndarray) -> FourierSplit2D:
    """Split the 2-D DFT energy of f(a, b) on Z_n² into a+b, a−b, single-input and other.

    Parameters
    ----------
    field : array, shape (n, n) or (n, n, d)
        f(a, b) at every pair (a = row, b = column); channels of a vector field are summed.
    """
    f = np.asarray(field, dtype=np.float64)
    if f.ndim not in (2, 3) or f.shape[0] != f.shape[1] or f.shape[0] < 2:
        raise ShapeError(f"field must have shape (n, n) or (n, n, d), got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise NonFiniteError("field contains NaN or Inf")
    n = f.shape[0]
    power = np.abs(np.fft.fft2(f, axes=(0, 1))) ** 2
    if power.ndim == 3:
        power = power.sum(axis=2)
    power[0, 0] = 0.0
    total = power.sum()
    if total <= float(np.sum(f**2)) * n * n * 1e3 * np.finfo(np.float64).eps ** 2 or total == 0:
        raise DataError("field is constant: its non-constant Fourier energy is zero")
    power = power / total
    k1, k2 = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    in_sum = k1 == k2
    in_diff = (k1 == (-k2) % n) & ~in_sum
    single = (k1 == 0) ^ (k2 == 0)
    other = ~(in_sum | in_diff | single)
    return FourierSplit2D(
        sum=float(power[in_sum].sum()),
        diff=float(power[in_diff].sum()),
        single=float(power[single].sum()),
        other=float(power[other].sum()),
        power=power,
    )


def to_grid(values: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Place per-pair values on the grid: ``grid[a_i, b_i] = values[i]``.

    Returns
    -------
    numpy.ndarray, shape (n, n) or (n, n, d)

    Raises
    ------
    DataError
        If some pair of Z_n² is missing (the 2-D DFT needs the full grid).
    """
    values = np.asarray(values, dtype=np.float64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if values.shape[0] != a.shape[0] or a.shape != b.shape:
        raise ShapeError(f"values ({values.shape[0]}), a {a.shape} and b {b.shape} differ")
    grid = np.full((n, n, *values.shape[1:]), np.nan)
    grid[a, b] = values
    if np.isnan(grid).any():
        raise DataError(f"the pairs do not cover the full {n}x{n} grid")
    return grid


def dlog_grid(field: np.ndarray, p: int) -> np.ndarray:
    """Re-index a field on Z_p² by discrete logs: ``out[i, j] = f(g^i, g^j)``.

    A function of a·b becomes a function of i + j on Z_{p−1}², so :func:`fourier_split_2d`
    then puts it in the ``sum`` component.

    Parameters
    ----------
    field : array, shape (p, p) or (p, p, d)
    p : int, prime

    Returns
    -------
    numpy.ndarray, shape (p−1, p−1) or (p−1, p−1, d)
    """
    f = np.asarray(field)
    if f.ndim < 2 or f.shape[0] != p or f.shape[1] != p:
        raise ShapeError(f"field must have shape (p, p[, d]) with p={p}, got {f.shape}")
    table = discrete_log_table(p)  # raises DataError for non-prime p
    powers = np.empty(p - 1, dtype=np.int64)
    powers[table[1:]] = np.arange(1, p)  # powers[i] = g^i
    return f[np.ix_(powers, powers)]
