"""Tasks: labels against direct Python arithmetic, splits, token layout, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.tasks import (
    MODULAR_OPS,
    discrete_log,
    is_prime,
    modular_task,
    multitask,
    primitive_root,
    regression_task,
    split_indices,
    two_tasks,
)
from interbasis import DataError

PY_OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a),  # solve c·b = a
    "x2y2": lambda a, b, p: (a * a + b * b) % p,
}


@pytest.mark.parametrize("op", MODULAR_OPS)
@pytest.mark.parametrize("nonzero", [False, True])
def test_labels_match_python(op: str, nonzero: bool) -> None:
    p = 11
    task = modular_task(op, p, frac_train=0.5, seed=1, nonzero=nonzero)
    pairs = [
        (a, b)
        for a in range(p)
        for b in range(p)
        if not (op == "div" and b == 0) and not (nonzero and (a == 0 or b == 0))
    ]
    assert task.inputs.tolist() == [[a, b, p] for a, b in pairs]  # a-major order, "=" = p
    assert task.labels.tolist() == [PY_OPS[op](a, b, p) for a, b in pairs]
    assert task.n_classes == p and task.info["d_vocab"] == p + 1
    assert task.inputs.dtype == torch.long and task.labels.dtype == torch.long


def test_div_has_p_times_p_minus_1_pairs_and_uses_inverse() -> None:
    task = modular_task("div", 13)
    assert len(task.inputs) == 13 * 12
    a, b = task.inputs[:, 0], task.inputs[:, 1]
    assert torch.equal((task.labels * b) % 13, a)  # c = a·b⁻¹ ⟺ c·b = a


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3000),
    frac=st.floats(0.0, 1.0, exclude_min=True),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_is_disjoint_and_covers(n: int, frac: float, seed: int) -> None:
    if int(frac * n) < 1:
        with pytest.raises(DataError, match="no training example"):
            split_indices(n, frac, seed)
        return
    train, test = split_indices(n, frac, seed)
    assert len(train) == int(frac * n)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(n))
    again, _ = split_indices(n, frac, seed)
    assert torch.equal(train, again)


def test_split_matches_rib_random_split() -> None:
    """rib splits with torch.utils.data.random_split(dataset, [n_train, n_test], generator)."""
    n = 113 * 113
    task = modular_task("add", 113, 0.3, seed=0)
    subset, _ = torch.utils.data.random_split(
        range(n), [int(0.3 * n), n - int(0.3 * n)], generator=torch.Generator().manual_seed(0)
    )
    assert task.train_idx.tolist() == list(subset.indices)
    assert torch.equal(task.train_inputs, task.inputs[task.train_idx])


def test_multitask_layout() -> None:
    p = 7
    task = multitask(["add", "mul", "div"], p, frac_train=0.5, seed=2)
    assert task.info["d_vocab"] == p + 4 and task.info["n_ctx"] == 4
    for row, label, op_i in zip(
        task.inputs.tolist(), task.labels.tolist(), task.info["op_index"].tolist(), strict=True
    ):
        a, b, op_token, eq = row
        op = ["add", "mul", "div"][op_i]
        assert op_token == p + 1 + op_i and eq == p
        assert label == PY_OPS[op](a, b, p)
    assert len(task.inputs) == 2 * p * p + p * (p - 1)
    train, test = set(task.train_idx.tolist()), set(task.test_idx.tolist())
    assert not train & test and len(train | test) == len(task.inputs)
    per_op = torch.bincount(task.info["op_index"][task.train_idx])
    assert per_op.tolist() == [int(0.5 * p * p), int(0.5 * p * p), int(0.5 * p * (p - 1))]


def test_primes_primitive_roots_and_discrete_logs() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert primitive_root(7) == 3 and primitive_root(97) == 5 and primitive_root(113) == 3
    for p in (5, 13, 97):
        g, dlog = primitive_root(p), discrete_log(p)
        assert dlog[0] == -1
        assert sorted(dlog[1:].tolist()) == list(range(p - 1))
        assert all(pow(g, int(dlog[x]), p) == x for x in range(1, p))


def test_regression_tasks() -> None:
    task = regression_task("sin5x", n=200, frac_train=0.75, seed=3)
    x, y = task.inputs, task.targets
    assert x.shape == (200, 1) and y.shape == (200, 1) and not task.is_classification
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    torch.testing.assert_close(y, torch.sin(5 * x))
    assert torch.equal(regression_task("sin5x", n=200, seed=3).inputs, x)
    sq = regression_task("x2", n=50, seed=0, dtype=torch.float64)
    assert sq.inputs.dtype == torch.float64
    assert torch.equal(sq.targets, sq.inputs**2)


def test_two_tasks_outputs_depend_on_own_input() -> None:
    task = two_tasks(("x2", "sin5x"), grid_size=9, frac_train=0.5, seed=0, dtype=torch.float64)
    x, y = task.inputs, task.targets
    assert x.shape == (81, 2) and y.shape == (81, 2)
    assert torch.equal(x[:9, 0], torch.full((9,), -1.0, dtype=torch.float64))  # x1-major grid
    for (x1, x2), (y1, y2) in zip(x.tolist(), y.tolist(), strict=True):
        assert y1 == pytest.approx(x1**2, abs=1e-15)
        assert y2 == pytest.approx(math.sin(5 * x2), abs=1e-15)
    sampled = two_tasks(n=100, seed=1)
    assert sampled.inputs.shape == (100, 2) and len(sampled.train_idx) == 80


def test_batches_and_loader_cover_the_split() -> None:
    task = modular_task("add", 7, frac_train=0.6, seed=0)
    chunks = list(task.batches("test", batch_size=4))
    assert torch.equal(torch.cat([c[0] for c in chunks]), task.test_inputs)
    assert torch.equal(torch.cat([c[1] for c in chunks]), task.test_targets)
    seen = torch.cat([x for x, _ in task.loader("train", batch_size=5, seed=1)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, task.train_inputs.tolist()))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: modular_task("div", 12), "p=12 is not prime"),
        (lambda: discrete_log(15), "p=15 is not prime"),
        (lambda: modular_task("add", 7, frac_train=0.0), r"frac_train must lie in \(0, 1\]"),
        (lambda: modular_task("add", 7, frac_train=1.5), r"frac_train must lie in \(0, 1\]"),
        (lambda: modular_task("pow", 7), "unknown modular op 'pow'"),
        (lambda: modular_task("add", 1), "modulus p must be an int >= 2"),
        (lambda: multitask(["add", "add"], 7), "distinct ops"),
        (lambda: multitask(["add", "div"], 9), "p=9 is not prime"),
        (lambda: regression_task("cos"), "unknown regression function 'cos'"),
        (lambda: two_tasks(grid_size=1), "grid_size must be >= 2"),
        (lambda: modular_task("add", 7).split("val"), "unknown split 'val'"),
    ],
)
def test_bad_input(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=match):
        call()


def test_full_fraction_gives_empty_test_set() -> None:
    task = modular_task("sub", 5, frac_train=1.0)
    assert len(task.train_idx) == 25 and len(task.test_idx) == 0
