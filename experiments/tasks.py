"""Generated datasets (no downloads): modular arithmetic, multitask, 1-D regression, two tasks.

Every task is a :class:`Task`: all examples as tensors plus a deterministic train/test split.
Modular tasks use rib's token layout ``(a, b, "=")`` with ``"=" = p`` and ``d_vocab = p + 1``;
pairs are enumerated ``a``-major, index ``k <-> (a, b) = (k // p, k % p)`` (rib's
``ModularArithmeticDataset`` builds ``[(i, j, p) for i in range(p) for j in range(p)]``), and
the split is ``perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))``, train
= ``perm[:int(frac_train * n)]``, test = the rest (rib's ``random_split`` draws exactly this
permutation). So ``modular_task("add", 113, 0.3, seed=0)`` reproduces rib's split of the
shipped checkpoint, in rib's order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from interbasis import DataError
from interbasis.spectral_edge.groups import discrete_log_table, is_prime
from interbasis.spectral_edge.groups import primitive_root as primitive_root  # re-export

MODULAR_OPS = ("add", "sub", "mul", "div", "x2y2")
REGRESSION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "x2": lambda x: x**2,
    "sin5x": lambda x: torch.sin(5 * x),
}
_RIB_FN_NAMES = {"add": "add", "subtract": "sub"}


@dataclass(frozen=True, eq=False)
class Task:
    """A dataset with its train/test split.

    Attributes
    ----------
    name : str
    inputs : Tensor (n, ...)
        Every example: token ids ``(n, n_ctx)`` (long) or features ``(n, d_in)`` (float).
    targets : Tensor
        Class labels ``(n,)`` (long) when ``n_classes`` is set, else regression targets
        ``(n, d_out)`` (float).
    train_idx, test_idx : Tensor (n_train,), (n_test,)
        Disjoint long indices into ``inputs`` covering all examples (split order kept).
    n_classes : int or None
        Number of label values (``p`` for modular tasks); None for regression.
    info : dict
        Task parameters (``p``, ``op``, ``d_vocab``, ``n_ctx``, ``equals_token``, ...).
    """

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    n_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_classification(self) -> bool:
        return self.n_classes is not None

    @property
    def labels(self) -> torch.Tensor:
        """Alias of ``targets``."""
        return self.targets

    @property
    def train_inputs(self) -> torch.Tensor:
        return self.inputs[self.train_idx]

    @property
    def train_targets(self) -> torch.Tensor:
        return self.targets[self.train_idx]

    @property
    def test_inputs(self) -> torch.Tensor:
        return self.inputs[self.test_idx]

    @property
    def test_targets(self) -> torch.Tensor:
        return self.targets[self.test_idx]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of ``"train"``, ``"test"`` or ``"all"``."""
        if name == "train":
            return self.train_inputs, self.train_targets
        if name == "test":
            return self.test_inputs, self.test_targets
        if name == "all":
            return self.inputs, self.targets
        raise DataError(f"unknown split {name!r}; expected 'train', 'test' or 'all'")

    def batches(
        self, split: str = "train", batch_size: int = 4096
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive ``(inputs, targets)`` chunks of a split (for streaming pipelines)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be >= 1 (an int), got {batch_size!r}")
        x, y = self.split(split)
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]

    def loader(
        self, split: str = "train", batch_size: int = 512, shuffle: bool = True, seed: int = 0
    ) -> DataLoader:
        """A ``DataLoader`` over a split, shuffled by a generator seeded with ``seed``."""
        x, y = self.split(split)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator
        )


def _check_prime(p: int, why: str) -> None:
    if not is_prime(p):
        raise DataError(f"p={p} is not prime, but {why} needs a field Z_p (p prime)")


def discrete_log(p: int) -> torch.Tensor:
    """``dlog[x]`` with ``g**dlog[x] = x mod p`` (g = :func:`primitive_root`); ``dlog[0] = -1``.

    Returns LongTensor (p,). :func:`is_prime`, :func:`primitive_root` and the table come from
    :mod:`interbasis.spectral_edge.groups`.
    """
    return torch.from_numpy(discrete_log_table(p))


def modular_inverse(b: int, p: int) -> int:
    """``b^{-1} mod p``; DataError when b is not invertible."""
    try:
        return pow(b, -1, p)
    except ValueError:
        raise DataError(f"{b} has no inverse modulo {p}") from None


def split_indices(n: int, frac_train: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rib's split: ``randperm(n)`` seeded with ``seed``; the first ``int(frac_train*n)`` train."""
    if not isinstance(frac_train, (int, float)) or not 0 < frac_train <= 1:
        raise DataError(f"frac_train must lie in (0, 1], got {frac_train!r}")
    n_train = int(frac_train * n)
    if n_train < 1:
        raise DataError(f"frac_train={frac_train} of {n} examples leaves no training example")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train], perm[n_train:]


def _check_p(p: int) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise DataError(f"the modulus p must be an int >= 2, got {p!r}")


def _modular_pairs(
    op: str, p: int, nonzero: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``a, b, labels`` (each (n,)) in rib's a-major order; div drops b = 0."""
    if op not in MODULAR_OPS:
        raise DataError(f"unknown modular op {op!r}; expected one of {MODULAR_OPS}")
    _check_p(p)
    k = torch.arange(p * p)
    a, b = k // p, k % p
    if op == "div":
        _check_prime(p, "div")
    keep = (b != 0) if op == "div" else torch.ones_like(k, dtype=torch.bool)
    if nonzero:
        keep &= (a != 0) & (b != 0)
    a, b = a[keep], b[keep]
    if op == "add":
        labels = (a + b) % p
    elif op == "sub":
        labels = (a - b) % p
    elif op == "mul":
        labels = (a * b) % p
    elif op == "x2y2":
        labels = (a * a + b * b) % p
    else:
        inverse = torch.tensor([0] + [modular_inverse(x, p) for x in range(1, p)])
        labels = (a * inverse[b]) % p
    return a, b, labels


def modular_task(
    op: str, p: int, frac_train: float = 0.3, seed: int = 0, nonzero: bool = False
) -> Task:
    """``(a op b) mod p`` on all pairs, tokens ``(a, b, p)``; see the module docstring.

    Parameters
    ----------
    op : {"add", "sub", "mul", "div", "x2y2"}
        ``div`` is ``a * b^{-1}`` over b != 0 (p(p-1) pairs, p must be prime); ``x2y2`` is
        ``a² + b²``.
    p : int
        Modulus (>= 2).
    frac_train : float in (0, 1]
    seed : int
        Seed of the split.
    nonzero : bool
        Drop pairs with a = 0 or b = 0 (seed 003 does this for mul).

    Returns
    -------
    Task with inputs LongTensor (n, 3), labels LongTensor (n,), ``n_classes = p`` and
    ``info = {op, p, d_vocab: p + 1, n_ctx: 3, equals_token: p, nonzero}``.
    """
    a, b, labels = _modular_pairs(op, p, nonzero)
    inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    train_idx, test_idx = split_indices(len(inputs), frac_train, seed)
    info = {
        "op": op,
        "p": p,
        "d_vocab": p + 1,
        "n_ctx": 3,
        "equals_token": p,
        "nonzero": nonzero,
        "frac_train": frac_train,
        "seed": seed,
    }
    return Task(f"{op}_mod{p}", inputs, labels, train_idx, test_idx, n_classes=p, info=info)


def division_sequence_task(p: int = 97, frac_train: float = 0.5, seed: int = 0) -> Task:
    """Seed 001's modular division (teddykoker/grokking layout): ``x / y mod p`` as 4 tokens.

    Every pair ``0 <= x < p``, ``0 < y < p`` once, ``x``-major, as the sequence
    ``[x, op, y, eq]`` with ``eq = p`` and ``op = p + 1`` (``d_vocab = p + 2``); the label is
    ``x · y^{-1} mod p`` (``y^{-1} = y^{p-2} mod p``, Fermat), read at the last position. The
    split is :func:`split_indices` (a random ``frac_train`` of the p(p - 1) pairs; the seed
    trains on half, 4 656 of 9 312 pairs for p = 97).

    Returns
    -------
    Task with inputs LongTensor (p(p-1), 4), labels (p(p-1),), ``n_classes = p`` and ``info``
    ``{op: "div", p, d_vocab: p + 2, n_ctx: 4, equals_token: p, op_token: p + 1, ...}``.
    """
    a, b, labels = _modular_pairs("div", p, nonzero=False)
    inputs = torch.stack([a, torch.full_like(a, p + 1), b, torch.full_like(a, p)], dim=1)
    train_idx, test_idx = split_indices(len(inputs), frac_train, seed)
    info = {
        "op": "div",
        "p": p,
        "d_vocab": p + 2,
        "n_ctx": 4,
        "equals_token": p,
        "op_token": p + 1,
        "frac_train": frac_train,
        "seed": seed,
    }
    return Task(f"div_seq_mod{p}", inputs, labels, train_idx, test_idx, n_classes=p, info=info)


def modular_task_from_rib_config(dataset: dict[str, Any]) -> Task:
    """The task of a rib ``config.yaml`` ``dataset`` section (modulus, fn_name, ...)."""
    if not isinstance(dataset, dict):
        raise DataError(f"rib dataset config must be a mapping, got {type(dataset).__name__}")
    fn_name = dataset.get("fn_name")
    if fn_name not in _RIB_FN_NAMES:
        raise DataError(f"rib fn_name {fn_name!r} is not supported; expected {list(_RIB_FN_NAMES)}")
    values: dict[str, Any] = {}
    for key, kind, default in (("modulus", int, None), ("frac_train", float, None),
                               ("seed", int, 0)):  # fmt: skip
        raw = dataset.get(key, default)
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or (kind is int and raw != int(raw))
        ):
            raise DataError(
                f"rib dataset config: {key!r} must be {'an int' if kind is int else 'a number'}, "
                f"got {raw!r}"
            )
        values[key] = kind(raw)
    return modular_task(
        _RIB_FN_NAMES[fn_name], values["modulus"], values["frac_train"], seed=values["seed"]
    )


def multitask(
    ops: Sequence[str], p: int, frac_train: float = 0.3, seed: int = 0, nonzero: bool = False
) -> Task:
    """Several modular ops in one dataset; tokens ``(a, b, op_token, "=")``.

    ``"=" = p`` as in :func:`modular_task`, ``op_token = p + 1 + i`` for ``ops[i]``, so
    ``d_vocab = p + 1 + len(ops)``. Examples are the single-op examples concatenated in the
    order of ``ops``; each op is split separately with ``frac_train`` (seed ``seed + i``), so
    every op has the same train fraction. ``info["op_index"]`` (n,) tells each example's op.
    """
    if len(ops) == 0 or len(set(ops)) != len(ops):
        raise DataError(f"multitask needs distinct ops, got {list(ops)}")
    parts, labels, op_index, train, test = [], [], [], [], []
    offset = 0
    for i, op in enumerate(ops):
        a, b, lab = _modular_pairs(op, p, nonzero)
        parts.append(torch.stack([a, b, torch.full_like(a, p + 1 + i), torch.full_like(a, p)], 1))
        labels.append(lab)
        op_index.append(torch.full_like(a, i))
        tr, te = split_indices(len(a), frac_train, seed + i)
        train.append(tr + offset)
        test.append(te + offset)
        offset += len(a)
    info = {
        "ops": list(ops),
        "p": p,
        "d_vocab": p + 1 + len(ops),
        "n_ctx": 4,
        "equals_token": p,
        "op_tokens": [p + 1 + i for i in range(len(ops))],
        "op_index": torch.cat(op_index),
        "nonzero": nonzero,
        "frac_train": frac_train,
        "seed": seed,
    }
    return Task(
        f"multitask_{'_'.join(ops)}_mod{p}",
        torch.cat(parts),
        torch.cat(labels),
        torch.cat(train),
        torch.cat(test),
        n_classes=p,
        info=info,
    )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{name} must be >= {minimum} (an int), got {value!r}")


def _regression_fn(fn: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if fn not in REGRESSION_FNS:
        raise DataError(
            f"unknown regression function {fn!r}; expected one of {list(REGRESSION_FNS)}"
        )
    return REGRESSION_FNS[fn]


def regression_task(
    fn: str = "x2",
    n: int = 1024,
    frac_train: float = 0.8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Task:
    """1-D regression from seed 000: ``y = f(x)``, ``x ~ U[-1, 1]``, f in ``{"x2", "sin5x"}``.

    Inputs (n, 1) and targets (n, 1) of ``dtype``; x is drawn from a generator seeded with
    ``seed`` and split with :func:`split_indices`.
    """
    f = _regression_fn(fn)
    _check_int("n", n, 1)
    gen = torch.Generator().manual_seed(seed)
    x = (2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1).to(dtype)
    train_idx, test_idx = split_indices(n, frac_train, seed)
    info = {"fn": fn, "n": n, "frac_train": frac_train, "seed": seed, "d_in": 1, "d_out": 1}
    return Task(f"regression_{fn}", x, f(x), train_idx, test_idx, info=info)


def two_tasks(
    fns: tuple[str, str] = ("x2", "sin5x"),
    n: int = 1024,
    frac_train: float = 0.8,
    seed: int = 0,
    grid_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Task:
    """Two independent regressions: inputs ``(x1, x2)``, targets ``(f1(x1), f2(x2))``.

    ``x1, x2 ~ U[-1, 1]`` independently (n samples), or with ``grid_size=m`` the Cartesian
    product grid of ``m`` evenly spaced points per input (n = m², x1-major). Output k depends
    on input k only, the ground truth for module-recovery tests.
    """
    f1, f2 = _regression_fn(fns[0]), _regression_fn(fns[1])
    if grid_size is not None:
        _check_int("grid_size", grid_size, 2)
        axis = torch.linspace(-1, 1, grid_size, dtype=torch.float64)
        x = torch.cartesian_prod(axis, axis).to(dtype)
    else:
        _check_int("n", n, 1)
        gen = torch.Generator().manual_seed(seed)
        x = (2 * torch.rand(n, 2, generator=gen, dtype=torch.float64) - 1).to(dtype)
    y = torch.stack([f1(x[:, 0]), f2(x[:, 1])], dim=1)
    train_idx, test_idx = split_indices(len(x), frac_train, seed)
    info = {
        "fns": list(fns),
        "n": len(x),
        "grid_size": grid_size,
        "frac_train": frac_train,
        "seed": seed,
        "d_in": 2,
        "d_out": 2,
    }
    return Task(f"two_tasks_{fns[0]}_{fns[1]}", x, y, train_idx, test_idx, info=info)
