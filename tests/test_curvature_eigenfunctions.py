"""Eigenvector functions (seed 000): JVP vs finite differences, frequency measure."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interbasis.curvature import eigenvector_functions, sign_changes, spectral_centroid
from interbasis.errors import DataError, ShapeError

GRID = torch.linspace(-1, 1, 401, dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(1, 20),
        torch.nn.Tanh(),
        torch.nn.Linear(20, 20),
        torch.nn.Tanh(),
        torch.nn.Linear(20, 1),
    ).double()


def directions(p: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.linalg.qr(torch.randn(p, k, generator=g, dtype=torch.float64))[0]


def test_finite_difference_converges_to_jvp_with_order_one() -> None:
    model = net()
    V = directions(481, 4)
    x = GRID[:, None]
    err = {}
    for a in (1e-3, 1e-4):
        ef = eigenvector_functions(model, x, V, a=a)
        assert ef.finite_difference is not None
        err[a] = float((ef.finite_difference - ef.jvp).abs().max())
    # forward difference: error = a/2 * v^T (d^2 f) v + O(a^2), so 10x smaller a -> ~10x
    ratio = err[1e-3] / err[1e-4]
    assert 7.0 < ratio < 13.0, ratio
    assert err[1e-4] < 1e-3


def test_jvp_closed_form_for_a_linear_model_and_linearity() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(1, 1).double()
    v = torch.tensor([0.3, -2.0], dtype=torch.float64)  # [dW, db]
    ef = eigenvector_functions(lin, GRID[:, None], v, eigenvalues=torch.tensor([-4.0]))
    torch.testing.assert_close(ef.jvp[0, :, 0], 0.3 * GRID - 2.0, rtol=1e-14, atol=1e-14)
    assert ef.eigenvalues is not None and float(ef.eigenvalues[0]) == -4.0
    model = net()
    V = directions(481, 2)
    both = eigenvector_functions(model, GRID[:, None], torch.stack([V[:, 0], V[:, 1], V.sum(1)], 1))
    torch.testing.assert_close(both.jvp[2], both.jvp[0] + both.jvp[1], rtol=1e-12, atol=1e-12)
    assert both.amplitude.shape == (3,) and bool((both.amplitude > 0).all())


def test_spectral_centroid_ranks_integer_frequencies() -> None:
    ks = torch.arange(1, 31, dtype=torch.float64)
    c = spectral_centroid(torch.sin(ks[:, None] * GRID[None, :]), GRID)
    assert bool((c[1:] > c[:-1]).all())
    # spanning >= 1.5 cycles, the centroid is the frequency k / 2pi (cycles per unit x) to
    # within 10%: the finite window leaks power, an error that oscillates in k and decays ~1/k
    high = ks >= 10
    torch.testing.assert_close(c[high], ks[high] / (2 * math.pi), rtol=0.1, atol=0)
    const = spectral_centroid(torch.stack([torch.ones(401), torch.zeros(401)]).double(), GRID)
    # DCT round-off of a constant leaves ~1e-30 of power in m >= 1
    assert abs(float(const[0])) < 1e-12 and math.isnan(float(const[1]))


@settings(max_examples=40, deadline=None)
@given(k=st.floats(1.0, 30.0), gap=st.floats(1.0, 10.0))
def test_spectral_centroid_ranks_sin_kx_by_k(k: float, gap: float) -> None:
    c = spectral_centroid(torch.stack([torch.sin(k * GRID), torch.sin((k + gap) * GRID)]), GRID)
    assert float(c[1]) > float(c[0])


def test_sign_changes_count_roots() -> None:
    for k in (1.0, 4.0, 10.0, 31.0):
        # roots of sin(kx) in (-1, 1): x = j pi / k for |j| < k / pi
        expected = 2 * math.floor(k / math.pi) + 1
        assert int(sign_changes(torch.sin(k * GRID)[None, :])[0]) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0]), min_size=2, max_size=30))
def test_sign_changes_match_a_plain_loop(values: list[float]) -> None:
    v = torch.tensor(values, dtype=torch.float64)
    centred = v - v.mean()
    signs = [1 if c > 0 else -1 for c in centred.tolist() if c != 0]
    expected = sum(a != b for a, b in itertools.pairwise(signs))
    assert int(sign_changes(v[None, :])[0]) == expected


def test_bad_input() -> None:
    model = net()
    with pytest.raises(ShapeError, match=r"P=481"):
        eigenvector_functions(model, GRID[:, None], torch.zeros(480, 2))
    with pytest.raises(DataError, match="uniformly spaced"):
        eigenvector_functions(model, GRID[:, None] ** 3, directions(481, 1))
    with pytest.raises(DataError, match="1-D grid"):
        spectral_centroid(torch.zeros(1, 5, 1), torch.zeros(5, 2))
    with pytest.raises(DataError, match="non-zero"):
        eigenvector_functions(model, GRID[:, None], directions(481, 1), a=0.0)
    ef = eigenvector_functions(model, GRID[:, None] ** 3, directions(481, 1), frequency=False)
    assert ef.frequency is None and ef.jvp.shape == (1, 401, 1)
