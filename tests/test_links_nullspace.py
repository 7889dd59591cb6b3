"""Zero-curvature directions attributed to the degeneracy mechanisms (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from interbasis.curvature import ParamLayout, eigh_descending, hessian_matrix
from interbasis.degeneracy import behavioural_mse
from interbasis.errors import DataError, ShapeError
from interbasis.links import (
    attribute_null_directions,
    behavioural_null_space,
    mechanism_directions,
    null_vectors,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _hand_built() -> tuple[nn.Module, torch.Tensor]:
    """docs/degeneracy.md's network: a synchronized pair, a dead neuron, x3 = x1 + x2."""
    g = torch.Generator().manual_seed(0)
    sign = torch.where(torch.rand(300, generator=g) < 0.5, 1.0, -1.0).double()
    u = (0.5 + 0.5 * torch.rand(300, generator=g, dtype=torch.float64)) * sign
    v = 2 * torch.rand(300, generator=g, dtype=torch.float64) - 1
    x = torch.stack([u, v, u + v], dim=1)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(
            torch.tensor(
                [[1.0, 0, 0], [1.0, 0.3, 0], [0.1, 0.2, 0.1], [0.2, 1.0, -0.3], [-0.5, 0.4, 0.6]]
            )
        )
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -3.0, 0.1, -0.2]))
        net[2].weight.copy_(
            torch.tensor([[1.0, -0.7, 0.4, 0.8, -1.1], [0.3, 0.9, -0.5, -0.6, 0.7]])
        )
        net[2].bias.copy_(torch.tensor([0.1, -0.2]))
    return net, x


def _behavioural_eigenpairs(net: nn.Module, x: torch.Tensor):
    H = hessian_matrix(net, behavioural_mse, (x, net(x).detach()))
    pairs = eigh_descending(H)
    zero = pairs.values.abs() <= 1e-9 * pairs.values.abs().max()
    return H, pairs, zero


def test_mechanisms_span_exactly_the_null_space_of_the_hand_built_net() -> None:
    """Every free direction is explained and every mechanism direction is free (closed form)."""
    net, x = _hand_built()
    H, pairs, zero = _behavioural_eigenpairs(net, x)
    assert int(zero.sum()) == 16  # docs/degeneracy.md: predicted = measured = 16
    mech = mechanism_directions(net, x)
    Q = mech.span()
    assert Q.shape[1] == 16  # union of the mechanisms' spans = the null space's dimension
    # every mechanism direction is a null direction: H Q = 0 up to round-off (|H| ~ 1)
    assert float((H @ Q).abs().max()) < 1e-12
    att = attribute_null_directions(pairs.vectors[:, zero], mech)
    assert att.union_dim == 16
    assert float(att.union.min()) > 1 - 1e-9
    # G: x3 = x1 + x2 (5 rows) and the dead neuron's out-weights (2); K: its in-weights (4);
    # sync: blocks {0, 1}, {2}, {3}, {4} -> 4 + 1 + 1 + 1 = 7 re-mixings and rescalings
    assert dict(zip(att.mechanisms, att.dims, strict=True)) == {
        "G": 7,
        "K": 4,
        "sync": 7,
        "co-silent": 0,
    }
    # the non-zero eigenvectors are orthogonal to every mechanism
    rest = attribute_null_directions(pairs.vectors[:, ~zero], mech)
    assert float(rest.union.max()) < 1e-12


def test_generic_relu_net_null_space_is_the_rescalings() -> None:
    """No dead or synchronized neurons: one rescaling per hidden neuron, all attributed."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    x = 2 * torch.rand(400, 2, dtype=torch.float64) - 1
    null = behavioural_null_space(net, x)
    assert null.nullity == 4 and null.attribution.union_dim == 4
    assert null.counts() == {"G": 0, "K": 0, "sync": 4, "co-silent": 0, "unexplained": 0}
    assert null.smallest_nonzero > 1e4 * null.largest_zero  # a clean gap around the threshold


def test_null_vectors_are_scale_free() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 3, generator=g, dtype=torch.float64)
    f = torch.cat([a, a[:, :1] + a[:, 1:2], torch.zeros(50, 1, dtype=torch.float64)], dim=1)
    gram = f.T @ f / 50
    n = null_vectors(gram)
    assert n.shape == (5, 2)  # the dependency and the dead coordinate
    assert float((gram @ n).abs().max()) < 1e-12
    scaled = torch.diag(torch.tensor([30.0, 1.0, 0.05, 1.0, 1.0], dtype=torch.float64))
    assert null_vectors(scaled @ gram @ scaled).shape == (5, 2)


@pytest.mark.parametrize("seed", [4, 7])
def test_always_on_neurons_add_a_bias_shift_each(seed: int) -> None:
    """An always-on neuron is linear: its bias shift is absorbed by the next bias."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    x = 2 * torch.rand(400, 2, dtype=torch.float64) - 1
    null = behavioural_null_space(net, x)
    from interbasis.degeneracy import degeneracy_report

    report = degeneracy_report(net, x)
    assert report.layers[0].sync.always_on  # these seeds have always-on neurons
    assert null.nullity == report.predicted == null.attribution.union_dim
    assert float(null.attribution.union.min()) > 1 - 1e-9


def test_bad_input() -> None:
    net, x = _hand_built()
    mech = mechanism_directions(net, x)
    with pytest.raises(ShapeError, match="mechanisms' layout has 32"):
        attribute_null_directions(torch.zeros(31, 2), mech)
    tanh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with pytest.raises(DataError, match="not ReLU-like"):
        mechanism_directions(tanh, x)
    big = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    with pytest.raises(DataError, match="P <= max_dense=2000"):
        behavioural_null_space(big.double(), x)
    assert ParamLayout.from_model(net).size == 32


def test_attribution_shares_match_least_squares_projections() -> None:
    """Shares are ``||P v||^2 / ||v||^2``, checked against a least-squares projection onto the
    raw (non-orthonormalised) mechanism directions, and 1 / 0 inside / outside the span."""
    net, x = _hand_built()
    mech = mechanism_directions(net, x)
    g = torch.Generator().manual_seed(5)
    V = torch.randn(32, 3, generator=g, dtype=torch.float64)
    V[:, 1] = mech.span()[:, :4] @ torch.randn(4, generator=g, dtype=torch.float64)  # inside
    res = attribute_null_directions(V, mech)
    assert res.shares.shape == (3, len(res.mechanisms)) and res.union.shape == (3,)

    def projected_share(D: torch.Tensor, v: torch.Tensor) -> float:
        coef = torch.linalg.lstsq(D, v[:, None], driver="gelsd").solution
        return float(((D @ coef).squeeze(1) ** 2).sum() / (v**2).sum())

    everything = torch.cat(list(mech.directions.values()), dim=1)
    for j in range(3):
        assert res.union[j] == pytest.approx(projected_share(everything, V[:, j]), abs=1e-9)
        for m, name in enumerate(res.mechanisms):
            want = projected_share(mech.directions[name], V[:, j])
            assert res.shares[j, m] == pytest.approx(want, abs=1e-9)
    assert res.union[1] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < res.union[0] < 1.0  # a random vector in R^32 is not in a 16-dim span
    # orthogonal to every mechanism: no share anywhere
    Q = mech.span()
    w = V[:, 2] - Q @ (Q.T @ V[:, 2])
    outside = attribute_null_directions(w, mech)
    assert outside.union[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(outside.shares, 0.0, atol=1e-12)
