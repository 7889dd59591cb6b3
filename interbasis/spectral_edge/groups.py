"""Groupings of input pairs (a, b) ∈ Z_p² by an algebraic key, and discrete logarithms.

A functional mode f_v(a, b) is averaged over the pairs sharing a key q (seed 003):

========  ==================================  ========  =================================
name      key q                               groups    note
========  ==================================  ========  =================================
``sum``   (a + b) mod p                       p
``diff``  (a − b) mod p                       p
``prod``  (a·b mod p) − 1                     p − 1     a, b ≠ 0; residues 1…p−1 in order
``dlog``  (log_g a + log_g b) mod (p − 1)     p − 1     a, b ≠ 0; g = smallest primitive root
========  ==================================  ========  =================================

``prod`` and ``dlog`` both have p − 1 groups, so their DFTs have the same frequencies and
the ratio F(dlog) / F(prod) (the seed's "5.9×") compares like with like. With
``a = g^i, b = g^j`` the product is ``g^{i+j}``: ``dlog`` is ``prod`` relabelled by the
group isomorphism Z_p^× ≅ Z_{p−1}, which turns multiplication into addition.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from interbasis.errors import DataError, ShapeError

Grouping = Literal["sum", "diff", "prod", "dlog"]
GROUPINGS: tuple[str, ...] = ("sum", "diff", "prod", "dlog")
"""The groupings of the input pairs ``(a, b)``: by ``a + b``, ``a - b``, ``a · b`` (mod p) and
by the discrete logarithm (``dlog``, the a·b grouping on the log grid)."""


def is_prime(p: int) -> bool:
    """Trial division (p is a task modulus, at most a few thousand)."""
    if p < 2:
        return False
    return all(p % d for d in range(2, math.isqrt(p) + 1))


def _require_prime(p: int, why: str) -> None:
    if not is_prime(int(p)):
        raise DataError(f"p={p} is not prime; {why} need a prime modulus")


def primitive_root(p: int) -> int:
    """Smallest generator g of the multiplicative group Z_p^× (p prime; 1 for p = 2)."""
    _require_prime(p, "primitive roots")
    if p == 2:
        return 1
    factors = {d for d in range(2, p) if (p - 1) % d == 0 and is_prime(d)}
    # every prime has a primitive root, so the search always ends with a g < p
    return next(g for g in range(2, p) if all(pow(g, (p - 1) // q, p) != 1 for q in factors))


def discrete_log_table(p: int) -> np.ndarray:
    """``table[x] = log_g x`` for x = 1 … p−1 (g = :func:`primitive_root`), ``table[0] = -1``.

    Returns
    -------
    numpy.ndarray, shape (p,), int64
    """
    g = primitive_root(p)
    table = np.full(p, -1, dtype=np.int64)
    x = 1
    for k in range(p - 1):
        table[x] = k
        x = (x * g) % p
    return table


def group_keys(a: np.ndarray, b: np.ndarray, p: int, grouping: Grouping) -> tuple[np.ndarray, int]:
    """Key q of each pair and the number of groups.

    Parameters
    ----------
    a, b : array of int, shape (N,)
        Inputs in 0 … p−1.
    p : int
        Modulus (prime for ``prod`` and ``dlog``).
    grouping : {"sum", "diff", "prod", "dlog"}

    Returns
    -------
    keys : numpy.ndarray, shape (N,), int64, in 0 … n_groups−1
    n_groups : int
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ShapeError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= p):
        raise DataError(f"inputs must lie in 0..{p - 1} (p={p})")
    if grouping == "sum":
        return (a + b) % p, p
    if grouping == "diff":
        return (a - b) % p, p
    if grouping not in ("prod", "dlog"):
        raise DataError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    _require_prime(p, f"grouping={grouping!r} (the multiplicative group Z_p^×)")
    if np.any(a == 0) or np.any(b == 0):
        raise DataError(f"grouping={grouping!r} needs a, b != 0 (pairs with a zero were given)")
    if grouping == "prod":
        return (a * b) % p - 1, p - 1
    table = discrete_log_table(p)
    return (table[a] + table[b]) % (p - 1), p - 1


def group_means(values: np.ndarray, keys: np.ndarray, n_groups: int) -> np.ndarray:
    """Average ``values`` over the pairs of each group.

    Parameters
    ----------
    values : array, shape (N,) or (N, d)
    keys : array of int, shape (N,), in 0 … n_groups−1
    n_groups : int

    Returns
    -------
    numpy.ndarray, shape (n_groups,) or (n_groups, d), float64
        ``means[q] = mean of values[keys == q]``.

    Raises
    ------
    DataError
        If a group has no pair (the grouping is then undefined).
    """
    values = np.asarray(values, dtype=np.float64)
    keys = np.asarray(keys, dtype=np.int64)
    if values.shape[0] != keys.shape[0]:
        raise ShapeError(f"values have {values.shape[0]} rows but keys has {keys.shape[0]}")
    if keys.size and (keys.min() < 0 or keys.max() >= n_groups):
        raise DataError(f"keys must lie in 0..{n_groups - 1}")
    counts = np.bincount(keys, minlength=n_groups).astype(np.float64)
    if np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)[:10].tolist()
        raise DataError(f"groups {empty} (of {n_groups}) have no pair; use more pairs")
    flat = values.reshape(values.shape[0], -1)
    sums = np.zeros((n_groups, flat.shape[1]))
    np.add.at(sums, keys, flat)
    means = sums / counts[:, None]
    return means.reshape((n_groups, *values.shape[1:]))
