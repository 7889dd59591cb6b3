"""Lyapunov exponents by QR iteration vs the closed forms of seed 002 (issue 11, tests 1, 1b, 2).

Monte-Carlo tolerances: the QR estimate is a mean of per-step increments that are independent
across steps (fresh weights at every step); its standard error ``stderr`` is estimated by
batch means (20 blocks, a t-distribution with 19 degrees of freedom). We accept
|estimate - closed form| <= 4 s.e. (two-sided t_19 tail ~ 8e-4) and require a wrong closed
form to be rejected by more than 8 s.e.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from interbasis.errors import DataError, ShapeError
from interbasis.jacobian_spectra import (
    FixedGatesMLP,
    depth_fit,
    gaussian_lyapunov,
    layer_jacobians,
    log_singular_values,
    lyapunov_exponents,
    masked_gaussian_lyapunov,
)

F64 = torch.float64
N_SE = 4.0


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gaussian_factors(n: int, batch: int, steps: int, var: float, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randn(batch, n, n, generator=gen, dtype=F64) * (var / n) ** 0.5


def test_gaussian_products_match_closed_form() -> None:
    """Test 1: λ_k = ½[log(2/n) + ψ((n-k+1)/2)] for i.i.d. N(0, 1/n) matrices."""
    gen = torch.Generator().manual_seed(0)
    n, k = 12, 6
    res = lyapunov_exponents(gaussian_factors(n, 8, 400, 1.0, gen), k, generator=gen)
    theory = gaussian_lyapunov(n, k)
    assert np.all(res.stderr > 0) and np.all(res.stderr < 0.01)
    np.testing.assert_array_less(np.abs(res.exponents - theory), N_SE * res.stderr)
    assert res.converged().all() and not res.unresolved.any()
    # the test can fail: the same estimate rejects the exponents of a variance-2 product
    assert np.all(np.abs(res.exponents - gaussian_lyapunov(n, k, variance=2.0)) > 8 * res.stderr)


def test_masked_closed_form_reduces_to_gaussian_and_has_ratio() -> None:
    """keep_prob=1 is the Gaussian case; at n=64 the effective-variance form is ~2.5x off."""
    np.testing.assert_allclose(
        masked_gaussian_lyapunov(10, 4, keep_prob=1.0, variance=3.0),
        gaussian_lyapunov(10, 4, variance=3.0),
        rtol=1e-13,
    )
    masked = masked_gaussian_lyapunov(64, 1)[0]
    effective = gaussian_lyapunov(64, 1, variance=1.0)[0]  # D·W replaced by N(0, 1/n)
    assert 2.4 < masked / effective < 2.7


def test_masked_products_match_masked_closed_form() -> None:
    """Test 1b: D·W with Bernoulli(½) gates and He weights N(0, 2/n)."""
    gen = torch.Generator().manual_seed(1)
    n, batch, steps, k = 32, 32, 400, 3

    def factors():
        for w in gaussian_factors(n, batch, steps, 2.0, gen):
            gate = torch.bernoulli(torch.full((batch, n, 1), 0.5, dtype=F64), generator=gen)
            yield gate * w

    res = lyapunov_exponents(factors(), k, generator=gen)
    theory = masked_gaussian_lyapunov(n, k)
    np.testing.assert_array_less(np.abs(res.exponents - theory), N_SE * res.stderr)
    wrong = gaussian_lyapunov(n, k, variance=1.0)  # "effective variance" form
    assert np.all(np.abs(res.exponents - wrong) > 8 * res.stderr)


def relu_net(n: int, depth: int, gen: torch.Generator) -> nn.Sequential:
    """Bias-free He-initialised ReLU net (weights N(0, 2/n), drawn from ``gen``)."""
    mods: list[nn.Module] = []
    weights = torch.randn(depth, n, n, generator=gen, dtype=F64) * (2 / n) ** 0.5
    for w in weights:
        lin = nn.Linear(n, n, bias=False, device="meta")  # skip the default init (slow)
        lin.weight = nn.Parameter(w)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods)


def test_real_forward_gates_behave_like_independent_masks() -> None:
    """Test 1b: gates from a real forward pass of a He-initialised ReLU net at init.

    Inputs through the same weights are correlated, so chains from 32 independent networks are
    stacked along the batch; steps (layers) stay independent, as the s.e. assumes.
    """
    gen = torch.Generator().manual_seed(2)
    n, depth, k = 32, 150, 3
    jacs = [
        layer_jacobians(relu_net(n, depth, gen), torch.randn(2, n, generator=gen, dtype=F64))
        for _ in range(32)
    ]
    factors = [torch.cat([j.factors[t] for j in jacs]) for t in range(depth)]
    res = lyapunov_exponents(factors, k, burn_in=5, generator=gen)
    theory = masked_gaussian_lyapunov(n, k)
    np.testing.assert_array_less(np.abs(res.exponents - theory), N_SE * res.stderr)
    assert abs(res.exponents[0] - gaussian_lyapunov(n, 1)[0]) > 8 * res.stderr[0]


def test_random_fixed_gates_model_matches_masked_closed_form() -> None:
    gen = torch.Generator().manual_seed(4)
    n, depth, k, p = 24, 200, 2, 0.75
    nets = [
        FixedGatesMLP.random([n] * (depth + 1), p, gate_last=True, generator=gen) for _ in range(6)
    ]
    x = torch.randn(1, n, dtype=F64)
    jacs = [layer_jacobians(net, x) for net in nets]
    factors = [torch.cat([j.factors[t] for j in jacs]) for t in range(depth)]
    res = lyapunov_exponents(factors, k, generator=gen)
    theory = masked_gaussian_lyapunov(n, k, keep_prob=p, variance=1 / p)
    np.testing.assert_array_less(np.abs(res.exponents - theory), N_SE * res.stderr)


def test_orthogonal_layers_have_zero_exponents() -> None:
    """Test 2: exact orthogonal maps: every exponent is 0 and every log σ is 0."""
    gen = torch.Generator().manual_seed(5)
    n, depth = 6, 30
    ortho = [torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))[0] for _ in range(depth)]
    net = FixedGatesMLP(ortho, None, [torch.ones(n, dtype=F64)] * depth)
    jac = layer_jacobians(net, torch.randn(3, n, dtype=F64))
    res = lyapunov_exponents(jac, n, generator=gen)
    np.testing.assert_allclose(res.exponents, 0.0, atol=1e-13)
    np.testing.assert_allclose(res.per_input, 0.0, atol=1e-13)
    np.testing.assert_allclose(log_singular_values(jac), 0.0, atol=1e-12)
    assert res.converged().all()


def test_full_frame_log_volume_identity() -> None:
    """With k = n the QR logs sum to log|det J_{0:T}| = sum_t log|det A_t| (exact identity)."""
    gen = torch.Generator().manual_seed(6)
    n, depth = 5, 12
    factors = list(gaussian_factors(n, 4, depth, 1.0, gen))
    res = lyapunov_exponents(factors, n, generator=gen)
    log_det = sum(torch.linalg.slogdet(a)[1] for a in factors)
    np.testing.assert_allclose(res.per_input.sum(-1) * depth, log_det.numpy(), rtol=1e-12)
    log_sigma = log_singular_values(factors[:2])  # shallow: the product's SVD is accurate
    assert log_sigma.shape == (2, 4, n)
    np.testing.assert_allclose(
        log_sigma[0], torch.linalg.svdvals(factors[0]).log().numpy(), rtol=1e-12
    )
    log_det_2 = torch.linalg.slogdet(factors[1] @ factors[0])[1].numpy()
    np.testing.assert_allclose(log_sigma[1].sum(-1), log_det_2, rtol=1e-12)


def test_convergence_diagnostic_detects_drift() -> None:
    gen = torch.Generator().manual_seed(7)
    n = 8
    first = list(gaussian_factors(n, 4, 200, 1.0, gen))
    second = [3.0 * a for a in gaussian_factors(n, 4, 200, 1.0, gen)]
    assert not lyapunov_exponents(first + second, 2, generator=gen).converged().any()
    res = lyapunov_exponents(first, 2, generator=gen)
    assert res.converged().all()
    assert res.running.shape == (200, 2)
    np.testing.assert_allclose(res.running[-1], res.exponents, rtol=1e-12)


def test_depth_fit_recovers_line_and_finite_depth_slope() -> None:
    depths = np.arange(1, 11)
    slope, intercept = depth_fit(depths, np.stack([0.3 * depths - 1, -0.2 * depths + 2], 1))
    np.testing.assert_allclose(slope, [0.3, -0.2], rtol=1e-12)
    np.testing.assert_allclose(intercept, [-1, 2], rtol=1e-12)


def test_unresolved_directions_are_counted() -> None:
    rank_one = torch.zeros(2, 4, 4, dtype=F64)
    rank_one[:, 0, 0] = 1.0
    res = lyapunov_exponents([rank_one] * 5, 2)
    assert res.unresolved[0] == 0 and res.unresolved[1] == 10


def test_bad_input() -> None:
    with pytest.raises(DataError, match="depth 0"):
        lyapunov_exponents([], 1)
    with pytest.raises(ShapeError, match="k=5"):
        lyapunov_exponents([torch.eye(4, dtype=F64)], 5)
    with pytest.raises(ShapeError, match="factor 1"):
        lyapunov_exponents([torch.eye(4), torch.eye(3)], 2)
    with pytest.raises(ShapeError, match="keep at least"):
        lyapunov_exponents([torch.ones(4, 4), torch.ones(1, 4)], 2)
    with pytest.raises(DataError, match="burn_in"):
        lyapunov_exponents([torch.eye(3)] * 3, 1, burn_in=3)
    with pytest.raises(DataError, match="P\\(K < 1\\)"):
        masked_gaussian_lyapunov(8, 3)
    with pytest.raises(DataError):
        gaussian_lyapunov(4, 5)
    with pytest.raises(ShapeError):
        depth_fit([1.0], [[0.0]])
    with pytest.raises(DataError, match="depth 0"):
        log_singular_values([])
