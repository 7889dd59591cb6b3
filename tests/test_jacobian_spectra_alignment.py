"""Alignment measures and principal angles (issue 11, test 2 and the alignment deliverable)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from interbasis.errors import RankError, ShapeError
from interbasis.jacobian_spectra import (
    FixedGatesMLP,
    alignment_profile,
    layer_jacobians,
    principal_angles,
    random_overlap_baseline,
    rotation_baseline,
    top_singular,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def linear_chain(weights: list[torch.Tensor]) -> FixedGatesMLP:
    n = weights[0].shape[0]
    return FixedGatesMLP(weights, None, [torch.ones(n, dtype=F64)] * len(weights))


def relu_net(n: int, depth: int, gen: torch.Generator) -> nn.Sequential:
    mods: list[nn.Module] = []
    for w in torch.randn(depth, n, n, generator=gen, dtype=F64) * (2 / n) ** 0.5:
        lin = nn.Linear(n, n, bias=False, device="meta")
        lin.weight = nn.Parameter(w)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods)


def test_orthogonal_layers_make_alignment_trivial() -> None:
    """Test 2: all σ = 1, so separation = efficiency = 1 exactly (any vector is top)."""
    gen = torch.Generator().manual_seed(0)
    ortho = [torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))[0] for _ in range(8)]
    prof = alignment_profile(layer_jacobians(linear_chain(ortho), torch.randn(3, 5, dtype=F64)))
    np.testing.assert_allclose(prof.efficiency[:, 1:-1], 1.0, atol=1e-12)
    np.testing.assert_allclose(prof.separation[:, 1:], 1.0, atol=1e-12)
    assert np.isnan(prof.efficiency[:, [0, -1]]).all() and np.isnan(prof.separation[:, 0]).all()


def test_planted_dominant_direction_aligns_everything() -> None:
    """Test 2: W_l = 1.5 u u^T + N(0, 0.01/n): alignment -> 1, far above the random baseline."""
    gen = torch.Generator().manual_seed(1)
    n, depth = 10, 30
    u = torch.randn(n, generator=gen, dtype=F64)
    u /= u.norm()
    weights = [
        1.5 * torch.outer(u, u) + 0.1 * torch.randn(n, n, generator=gen, dtype=F64) / n**0.5
        for _ in range(depth)
    ]
    prof = alignment_profile(layer_jacobians(linear_chain(weights), torch.randn(2, n, dtype=F64)))
    assert 1 - prof.right_shared[:, 5:].min() < 1e-12  # shared basis: exact up to round-off
    assert 1 - prof.left_shared[:, :-5].min() < 1e-12
    assert np.nanmin(prof.consecutive) > 0.98 > 3 * random_overlap_baseline(n)
    assert np.nanmin(prof.efficiency) > 0.98
    assert np.all(np.diff(prof.separation[:, 1:8], axis=1) > 0)  # σ1/σ2 grows with depth


def test_consecutive_alignment_at_init_is_at_random_baseline() -> None:
    """At He init the consecutive factors are independently oriented.

    Per-network means are independent samples (cuts and inputs within one network are not);
    we test their mean against E|<u, e>| and against the Haar-rotation baseline (paired) at
    4 standard errors.
    """
    gen = torch.Generator().manual_seed(2)
    n, depth, nets = 12, 8, 40
    overlap, eff_gap = [], []
    for _ in range(nets):
        jac = layer_jacobians(relu_net(n, depth, gen), torch.randn(4, n, generator=gen, dtype=F64))
        prof, base = alignment_profile(jac), rotation_baseline(jac, gen)
        overlap.append(np.nanmean(prof.consecutive))
        eff_gap.append(np.nanmean(prof.efficiency) - np.nanmean(base.efficiency))
    overlap_se = np.std(overlap, ddof=1) / np.sqrt(nets)
    assert abs(np.mean(overlap) - random_overlap_baseline(n)) < 4 * overlap_se
    assert abs(np.mean(eff_gap)) < 4 * np.std(eff_gap, ddof=1) / np.sqrt(nets)


def test_shared_alignment_grows_with_depth_at_init() -> None:
    gen = torch.Generator().manual_seed(3)
    jacs = [layer_jacobians(relu_net(12, 10, gen), torch.randn(8, 12, generator=gen, dtype=F64))]
    prof = alignment_profile(jacs[0])
    shallow, deep = prof.right_shared[:, 1, 0], prof.right_shared[:, 9, 0]
    assert deep.mean() > shallow.mean() + 0.2


def test_profile_matches_numpy_svd() -> None:
    gen = torch.Generator().manual_seed(4)
    weights = [torch.randn(6, 6, generator=gen, dtype=F64) for _ in range(4)]
    jac = layer_jacobians(linear_chain(weights), torch.randn(1, 6, dtype=F64))
    full = np.linalg.multi_dot([w.numpy() for w in weights[::-1]])
    a = weights[1].numpy() @ weights[0].numpy()
    b = weights[3].numpy() @ weights[2].numpy()
    (ua, sa, vta), (ub, sb, vtb), (uf, sf, vtf) = map(np.linalg.svd, (a, b, full))
    prof = alignment_profile(jac)
    assert prof.consecutive.shape == (1, 5, 1)
    np.testing.assert_allclose(prof.right_shared[0, 2, 0], abs(vta[0] @ vtf[0]), rtol=1e-10)
    np.testing.assert_allclose(prof.left_shared[0, 2, 0], abs(ub[:, 0] @ uf[:, 0]), rtol=1e-10)
    np.testing.assert_allclose(prof.consecutive[0, 2, 0], abs(ua[:, 0] @ vtb[0]), rtol=1e-10)
    np.testing.assert_allclose(prof.efficiency[0, 2], sf[0] / (sa[0] * sb[0]), rtol=1e-10)
    np.testing.assert_allclose(prof.separation[0, 2], sa[0] / sa[1], rtol=1e-10)
    prof2 = alignment_profile(jac, k=2)
    assert prof2.consecutive.shape == (1, 5, 2)
    angles = np.sort(scipy.linalg.subspace_angles(vta[:2].T, vtf[:2].T))
    np.testing.assert_allclose(prof2.right_shared[0, 2], np.cos(angles), rtol=1e-10)
    angles = np.sort(scipy.linalg.subspace_angles(ua[:, :2], vtb[:2].T))
    np.testing.assert_allclose(prof2.consecutive[0, 2], np.cos(angles), rtol=1e-10)


def test_rank_one_chain_overlap_equals_efficiency() -> None:
    """d_0 = d_L = 1: A is a column a, B a row b, so |<u_1(A), v_1(B)>| = |b·a|/(|a||b|)."""
    gen = torch.Generator().manual_seed(5)
    widths = [1, 7, 7, 7, 1]
    weights = [torch.randn(b, a, generator=gen, dtype=F64) for a, b in itertools.pairwise(widths)]
    masks = [torch.ones(w, dtype=F64) for w in widths[1:]]
    prof = alignment_profile(layer_jacobians(FixedGatesMLP(weights, None, masks), torch.ones(1, 1)))
    np.testing.assert_allclose(prof.consecutive[0, 1:-1, 0], prof.efficiency[0, 1:-1], rtol=1e-12)
    assert np.isnan(prof.separation).all()  # a single singular value: no separation


def test_random_overlap_baseline_closed_values() -> None:
    assert random_overlap_baseline(1) == pytest.approx(1.0, rel=1e-14)
    assert random_overlap_baseline(2) == pytest.approx(2 / np.pi, rel=1e-14)
    assert random_overlap_baseline(3) == pytest.approx(0.5, rel=1e-14)
    assert random_overlap_baseline(10_000) == pytest.approx(np.sqrt(2 / (np.pi * 1e4)), rel=1e-4)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(2, 8), p=st.integers(1, 4), q=st.integers(1, 4), seed=st.integers(0, 9999))
def test_principal_angles_agree_with_scipy(d: int, p: int, q: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    p, q = min(p, d), min(q, d)
    a = torch.randn(2, d, p, generator=gen, dtype=F64)
    b = torch.randn(2, d, q, generator=gen, dtype=F64)
    ours = principal_angles(a, b).numpy()
    for i in range(2):
        ref = np.sort(scipy.linalg.subspace_angles(a[i].numpy(), b[i].numpy()))
        # scipy's arccos branch is only sqrt(eps) ~ 1.5e-8 accurate near 0 (see basis_link)
        np.testing.assert_allclose(ours[i], ref, atol=1e-7)


def test_principal_angles_small_and_right_angles() -> None:
    t = 1e-9  # arccos would return 0 here; the sine branch keeps it
    a = torch.eye(4, dtype=F64)[:, :2]
    b = torch.stack([a[:, 0], torch.tensor([0, np.cos(t), np.sin(t), 0], dtype=F64)], 1)
    np.testing.assert_allclose(principal_angles(a, b).numpy(), [0.0, t], rtol=1e-6, atol=1e-15)
    mixed = torch.stack([torch.eye(4, dtype=F64)[:, 3], b[:, 1]], 1)  # scipy gives (0, π/2)
    np.testing.assert_allclose(principal_angles(a, mixed).numpy(), [t, np.pi / 2], rtol=1e-6)
    c = torch.eye(4, dtype=F64)[:, 2:]
    np.testing.assert_allclose(principal_angles(a, c).numpy(), [np.pi / 2] * 2, rtol=1e-14)


def test_top_singular_reconstructs() -> None:
    j = torch.randn(3, 4, 5, dtype=F64)
    u, s, v = top_singular(j, 4)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ v.mT, j, rtol=1e-12, atol=1e-12)


def test_bad_input() -> None:
    with pytest.raises(ShapeError, match="k=3"):
        top_singular(torch.randn(2, 2, dtype=F64), 3)
    with pytest.raises(RankError, match="full column rank"):
        principal_angles(torch.ones(4, 2, dtype=F64), torch.eye(4, dtype=F64)[:, :1])
    with pytest.raises(ShapeError, match="different spaces"):
        principal_angles(torch.eye(4, dtype=F64), torch.eye(3, dtype=F64))
    jac = layer_jacobians(linear_chain([torch.eye(3, dtype=F64)] * 2), torch.ones(1, 3))
    with pytest.raises(ShapeError, match="k=4"):
        alignment_profile(jac, k=4)
