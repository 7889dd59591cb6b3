"""Link between Jacobian right-singular directions and interaction-basis directions (issue 11).

The interaction basis is built here by hand from DESIGN §4 (G = U D U^T, R = U D^{-1/2},
M_z = R^+ M R^{+T} = V Λ V^T, C = R V Λ^{1/2}) on synthetic matrices, so the link is tested
without ``interbasis.build_bases``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from interbasis.errors import NodeLayerError, NonFiniteError, RankError, ShapeError
from interbasis.jacobian_spectra import (
    FixedGatesMLP,
    basis_directions,
    direction_angles,
    interaction_basis_angles,
    jacobian_input_directions,
    layer_jacobians,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def interaction_c(gram: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C (d, n) and its eigenvalues Λ (descending) by the DESIGN §4 formula, no constant."""
    d_g, u = np.linalg.eigh(gram)
    r = u / np.sqrt(d_g)
    r_pinv = np.linalg.pinv(r)
    lam, v = np.linalg.eigh(r_pinv @ m @ r_pinv.T)
    order = np.argsort(lam)[::-1]
    lam, v = lam[order], v[:, order]
    return r @ v * np.sqrt(lam), lam


def with_constant(c: np.ndarray, lam: np.ndarray, junk: float) -> SimpleNamespace:
    """A Basis-like object: constant node 0, constant coordinate last (DESIGN §4)."""
    d, n = c.shape
    c_full = np.zeros((d + 1, n + 1))
    c_full[:d, 1:] = c
    c_full[d, 0] = 1.0
    c_pinv = np.linalg.pinv(c_full)
    c_pinv[1:, d] = junk  # the constant coordinate must be dropped, whatever it holds
    return SimpleNamespace(
        name="layers.1",
        C=torch.tensor(c_full),
        C_pinv=torch.tensor(c_pinv),
        eigenvalues=torch.tensor(np.r_[np.nan, lam]),
        has_constant=True,
    )


def test_jacobian_directions_are_top_eigenvectors_of_m() -> None:
    j = torch.randn(7, 3, 6, dtype=F64)
    v = jacobian_input_directions(j, 2)
    m = np.einsum("bij,bik->jk", j.numpy(), j.numpy())
    _, eigvec = np.linalg.eigh(m)
    np.testing.assert_allclose(np.abs(np.sum(v * eigvec[:, ::-1][:, :2], 0)), 1.0, rtol=1e-10)


def test_isotropic_data_gives_zero_angles() -> None:
    """G = I: rows of C_pinv are the eigenvectors of M = E[J^T J], so the angles are 0."""
    j = torch.randn(20, 4, 6, dtype=F64)
    m = np.einsum("bij,bik->jk", j.numpy(), j.numpy()) / 20
    c, lam = interaction_c(np.eye(6), m)
    basis = with_constant(c, lam, junk=5.0)
    rows = basis_directions(basis)
    assert rows.shape == (6, 6)
    np.testing.assert_allclose(rows, np.linalg.pinv(c), atol=1e-12)
    angles = direction_angles(jacobian_input_directions(j, 3), rows, 3)
    np.testing.assert_allclose(angles, 0.0, atol=1e-10)


def test_anisotropic_data_tilts_the_basis_away() -> None:
    """With a non-isotropic Gram the interaction directions are not M's eigenvectors."""
    gen = np.random.default_rng(0)
    j = torch.tensor(gen.normal(size=(20, 4, 6)))
    m = np.einsum("bij,bik->jk", j.numpy(), j.numpy()) / 20
    a = gen.normal(size=(6, 6))
    c, _lam = interaction_c(a @ a.T + 0.1 * np.eye(6), m)
    angles = direction_angles(jacobian_input_directions(j, 2), np.linalg.pinv(c), 2)
    assert angles.max() > 0.1


def test_rows_are_sorted_by_eigenvalue() -> None:
    c, lam = interaction_c(np.eye(3), np.diag([1.0, 3.0, 2.0]))
    basis = with_constant(c, lam, junk=0.0)
    perm = [0, 3, 1, 2]  # shuffle the non-constant nodes; eigenvalues travel with them
    shuffled = SimpleNamespace(
        name="x",
        C_pinv=basis.C_pinv[perm],
        eigenvalues=basis.eigenvalues[perm],
        has_constant=True,
    )
    np.testing.assert_allclose(basis_directions(shuffled), basis_directions(basis))
    top = basis_directions(basis)[0]
    np.testing.assert_allclose(np.abs(top) / np.linalg.norm(top), [0, 1, 0], atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(3, 7), k=st.integers(1, 3), seed=st.integers(0, 9999))
def test_angles_invariant_under_rotation_and_remixing(d: int, k: int, seed: int) -> None:
    gen = np.random.default_rng(seed)
    v = np.linalg.qr(gen.normal(size=(d, k)))[0]
    rows = gen.normal(size=(d, d))
    angles = direction_angles(v, rows, k)
    q = ortho_group.rvs(d, random_state=seed)
    np.testing.assert_allclose(direction_angles(q @ v, rows @ q.T, k), angles, atol=1e-9)
    mix = gen.normal(size=(k, k)) + 3 * np.eye(k)  # invertible: same span of the top-k rows
    remixed = np.vstack([mix @ rows[:k], rows[k:]])
    np.testing.assert_allclose(direction_angles(v, remixed, k), angles, atol=1e-9)
    assert np.all((angles >= 0) & (angles <= np.pi / 2 + 1e-12))


def test_orthogonal_spans_give_right_angles() -> None:
    e = np.eye(5)
    np.testing.assert_allclose(direction_angles(e[:, :2], e[2:4]), [np.pi / 2] * 2, rtol=1e-14)


def test_interaction_basis_angles_on_a_chain() -> None:
    """End to end on a bias-free linear chain: per-layer angles keyed by the basis name."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 5, generator=gen, dtype=F64) for _ in range(3)]
    net = FixedGatesMLP(weights, None, [torch.ones(5, dtype=F64)] * 3)
    jac = layer_jacobians(net, torch.randn(10, 5, dtype=F64))
    j_1l = jac.suffix_products()[1]  # layer "weights.1" to the output
    m = np.einsum("bij,bik->jk", j_1l.numpy(), j_1l.numpy()) / 10
    c, lam = interaction_c(np.eye(5), m)
    basis = with_constant(c, lam, junk=1.0)
    basis.name = "weights.1"
    out = interaction_basis_angles(jac, [basis], k=2)
    assert set(out) == {"weights.1"}
    np.testing.assert_allclose(out["weights.1"], 0.0, atol=1e-10)
    basis.name = "weights.0"  # the same basis compared with the wrong layer's Jacobian
    assert interaction_basis_angles(jac, [basis], k=2)["weights.0"].max() > 0.1


def test_gram_weighted_directions_reproduce_build_bases() -> None:
    """With the centred Gram, G^{1/2} V_k(J G^{1/2}) spans the top-k interaction directions
    that ``interbasis.build_bases`` (global scope, neuron output basis) computes; the raw
    Jacobian directions do not, since the activations are far from isotropic."""
    import interbasis as ib
    from experiments.models import MLP, MLPConfig

    model = MLP(MLPConfig(3, [12, 12], 3, "relu", seed=0)).double().eval()
    x = torch.randn(400, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    names = ["layers.1", "layers.2", "output"]
    bases = ib.build_bases(model, x, names, scope="global", progress=False)
    jac = layer_jacobians(model, x)
    suffix = jac.suffix_products()
    with torch.no_grad():
        h = model.acts[0](model.layers[0](x))
    for layer, basis in ((1, bases[0]), (2, bases[1])):
        if layer == 2:
            with torch.no_grad():
                h = model.acts[1](model.layers[1](h))
        hc = (h - h.mean(0)).numpy()
        gram = hc.T @ hc / len(hc)
        rows = basis_directions(basis)
        weighted = jacobian_input_directions(suffix[layer], 3, gram=gram)
        np.testing.assert_allclose(direction_angles(weighted, rows, 3), 0.0, atol=1e-8)
        raw = direction_angles(jacobian_input_directions(suffix[layer], 3), rows, 3)
        assert raw.max() > 0.3
    out = interaction_basis_angles(jac, bases[:2], k=2)
    assert list(out) == ["layers.1", "layers.2"]


def test_bad_input() -> None:
    jac = layer_jacobians(
        FixedGatesMLP([torch.eye(3, dtype=F64)], None, [torch.ones(3, dtype=F64)]),
        torch.randn(2, 3, dtype=F64),
    )
    bad_shape = SimpleNamespace(name="weights.0", C_pinv=np.ones((4, 6)), has_constant=True)
    with pytest.raises(ShapeError, match=r"weights\.0"):
        interaction_basis_angles(jac, [bad_shape])
    with pytest.raises(NodeLayerError, match="nope"):
        interaction_basis_angles(jac, [SimpleNamespace(name="nope", C_pinv=np.eye(3))])
    with pytest.raises(ShapeError, match="C_pinv"):
        basis_directions(SimpleNamespace(name="b", C_pinv=np.ones(3), has_constant=False))
    with pytest.raises(ShapeError, match="k=4"):
        direction_angles(np.eye(3), np.eye(3), 4)
    with pytest.raises(NonFiniteError):
        direction_angles(np.full((3, 1), np.nan), np.eye(3), 1)
    with pytest.raises(RankError, match="basis rows"):
        direction_angles(np.eye(3)[:, :2], np.ones((3, 3)), 2)
    rank_one = torch.zeros(2, 3, 3, dtype=F64)
    rank_one[:, 0, 0] = 1.0
    with pytest.raises(RankError, match="rank"):
        jacobian_input_directions(rank_one, 2)
    with pytest.raises(ShapeError, match="gram"):
        jacobian_input_directions(torch.randn(2, 3, 3, dtype=F64), 2, gram=np.eye(2))
