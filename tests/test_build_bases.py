"""build_bases: closed forms, invariances, batching, baselines (foundation issue tests 1-5)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import PositionMixer, linear_names, mlp
from torch import nn

from interbasis import build_bases
from interbasis.capture import capture, resolve_node_layers


def _acts(net: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return capture(net, x, resolve_node_layers(net, names))[0]


def _match_up_to_sign(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    """Columns of a equal those of b up to a sign per column."""
    signs = torch.sign((a * b).sum(0))
    torch.testing.assert_close(a * signs, b, rtol=rtol, atol=rtol * b.abs().max())


# 1. deep linear net -------------------------------------------------------------------------
def _orthogonalish(d: int, g: torch.Generator) -> torch.Tensor:
    """Well-conditioned random square matrix: singular values in [0.5, 2]."""
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    return q1 @ torch.diag(s) @ q2


def test_deep_linear_transitions_are_diagonal_and_lambda_is_shared() -> None:
    g = torch.Generator().manual_seed(1)
    d = 6
    net = nn.Sequential(*[nn.Linear(d, d, bias=False).double() for _ in range(4)]).eval()
    with torch.no_grad():
        for lin in net:
            lin.weight.copy_(_orthogonalish(d, g))
    # anisotropic inputs so that Λ is non-degenerate
    x = torch.randn(400, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d)
    names = [*linear_names(net), "output"]
    bases = build_bases(net, x, names, center=False, fold_bias=False, progress=False)
    hidden = bases[:-1]  # interaction-basis layers; the last one is the neuron basis
    for lo, hi, lin in zip(hidden[:-1], hidden[1:], list(net)[:-1], strict=False):
        T = lo.C_pinv @ lin.weight.T @ hi.C  # f_hat^l -> f_hat^{l+1}
        off = T - torch.diag(torch.diagonal(T))
        assert off.abs().max() < 1e-8
        torch.testing.assert_close(torch.diagonal(T).abs(), torch.ones(d, dtype=torch.float64))
    for b in hidden[1:]:
        torch.testing.assert_close(b.eigenvalues, hidden[0].eigenvalues, rtol=1e-8, atol=0)
    # the transition into the neuron-basis output is a dense orthogonal-like map, not diagonal
    T_out = hidden[-1].C_pinv @ list(net)[-1].weight.T @ bases[-1].C
    assert (T_out - torch.diag(torch.diagonal(T_out))).abs().max() > 1e-2


def test_global_basis_equals_local_on_deep_linear_net() -> None:
    g = torch.Generator().manual_seed(2)
    d = 5
    net = nn.Sequential(*[nn.Linear(d, d, bias=False).double() for _ in range(3)]).eval()
    with torch.no_grad():
        for lin in net:
            lin.weight.copy_(_orthogonalish(d, g))
    x = torch.randn(300, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d)
    names = [*linear_names(net), "output"]
    kw = dict(center=False, fold_bias=False, progress=False)
    local = build_bases(net, x, names, **kw)
    glob = build_bases(net, x, names, scope="global", **kw)
    for a, b in zip(local, glob, strict=True):
        torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-8, atol=0)
        _match_up_to_sign(a.C, b.C, rtol=1e-7)


def test_global_basis_uses_the_final_layer_jacobian() -> None:
    """Global M^l (seed 004 eq. 40) from a brute-force Jacobian to the final node layer."""
    net = mlp([3, 5, 4, 3])  # full-rank M: no eigenvalue at the truncation floor
    x = torch.randn(60, 3, dtype=torch.float64)
    names = ["0", "2", "4", "output"]
    bases = build_bases(net, x, names, scope="global", progress=False)
    rest = nn.Sequential(*list(net)[:])  # from the input of "0" to the output
    J = torch.stack([torch.func.jacrev(rest)(xi) for xi in x])  # (N, 3, 3)
    M = torch.einsum("nki,nkj->ij", J, J) / len(x)
    cov = torch.cov(x.T, correction=0)
    evals, evecs = torch.linalg.eigh(cov)
    half = evecs * evals.sqrt()
    lam = torch.linalg.eigvalsh(half.T @ M @ half).flip(0)
    lam = lam[lam > lam.max() * 1e-12]
    torch.testing.assert_close(bases[0].eigenvalues[1:], lam, rtol=1e-8, atol=0)


# 2. reparametrisation invariance ------------------------------------------------------------
def _reparametrised(net: nn.Sequential, R: torch.Tensor, at: int) -> nn.Sequential:
    """Insert h -> h R before Linear ``at`` and absorb R^{-1} into it: same function."""
    layers = [copy.deepcopy(m) for m in net]
    mixer = nn.Linear(R.shape[0], R.shape[0], bias=False).double()
    with torch.no_grad():
        mixer.weight.copy_(R.T)  # row convention: h @ R
        layers[at].weight.copy_(layers[at].weight @ torch.linalg.inv(R).T)
    return nn.Sequential(*layers[:at], mixer, *layers[at:]).eval()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(3, 7))
def test_reparametrisation_invariance(seed: int, width: int) -> None:
    g = torch.Generator().manual_seed(seed)
    net = mlp([3, width, width, 8], seed=seed)  # wide output: M full rank, no Λ near 0
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    R = _orthogonalish(width, g)  # a general invertible map, singular values in [0.5, 2]
    # original node layers: inputs of Linear "0", "2", "4"; in the reparametrised net the
    # hidden layer before Linear "2" is h R (input of the moved Linear, now named "3")
    other = _reparametrised(net, R, at=2)
    base = build_bases(net, x, ["0", "2", "4", "output"], progress=False)
    rep = build_bases(other, x, ["0", "3", "5", "output"], progress=False)
    acts_a = _acts(net, x, ["0", "2", "4"])
    acts_b = _acts(other, x, ["0", "3", "5"])
    pairs = zip(zip(base[:3], "024", strict=True), zip(rep[:3], "035", strict=True), strict=True)
    for (ba, na), (bb, nb) in pairs:
        assert ba.n_nodes == bb.n_nodes
        torch.testing.assert_close(
            ba.eigenvalues, bb.eigenvalues, rtol=1e-8, atol=0, equal_nan=True
        )
        _match_up_to_sign(ba.transform(acts_a[na]), bb.transform(acts_b[nb]), rtol=1e-7)


# 4. batching and determinism ----------------------------------------------------------------
def test_results_independent_of_batching_and_deterministic() -> None:
    net = PositionMixer().eval()
    x = torch.randn(50, 4, 5, dtype=torch.float64)
    names = ["first", "second", "output"]
    one = build_bases(net, x, names, batch_size=50, progress=False)
    pieces = list(torch.tensor_split(x, [3, 4, 17, 30, 31, 44]))  # 7 uneven batches
    seven = build_bases(net, pieces, names, progress=False)
    again = build_bases(net, x, names, batch_size=50, progress=False)
    for a, b, c in zip(one, seven, again, strict=True):
        torch.testing.assert_close(b.eigenvalues, a.eigenvalues, rtol=1e-12, atol=0, equal_nan=True)
        _match_up_to_sign(b.C, a.C, rtol=1e-10)
        assert torch.equal(a.C, c.C) and torch.equal(a.C_pinv, c.C_pinv)


# 5. baselines -------------------------------------------------------------------------------
def test_pca_and_neuron_baselines() -> None:
    net = mlp([4, 6, 3])
    x = torch.randn(120, 4, dtype=torch.float64) + 2.0
    names = ["0", "2", "output"]
    pca = build_bases(net, x, names, basis="pca", progress=False)
    neuron = build_bases(net, x, names, basis="neuron", progress=False)
    acts = _acts(net, x, ["0", "2"])
    for b, name in zip(pca[:2], ["0", "2"], strict=True):
        # constant first; the rest orthonormal in the activation part, centred coordinates
        assert b.has_constant and torch.equal(b.C[:, 0], torch.eye(b.C.shape[0])[:, -1].double())
        U = b.C[:-1, 1:]
        torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64))
        f_hat = b.transform(acts[name])
        torch.testing.assert_close(f_hat[:, 0], torch.ones(len(x), dtype=torch.float64))
        torch.testing.assert_close(
            f_hat[:, 1:].mean(0), torch.zeros(U.shape[1], dtype=torch.float64), atol=1e-12, rtol=0
        )
        cov = f_hat[:, 1:].T @ f_hat[:, 1:] / len(x)
        torch.testing.assert_close(cov, torch.diag(b.eigenvalues[1:]), atol=1e-10, rtol=0)
    for b, name in zip(neuron[:2], ["0", "2"], strict=True):
        d = b.dim
        expected = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        expected[d, 0] = 1
        expected[:d, 1:] = torch.eye(d)
        assert torch.equal(b.C, expected)
        f_hat = b.transform(acts[name])
        torch.testing.assert_close(f_hat[:, 1:], acts[name])
    assert torch.equal(neuron[-1].C, torch.eye(3, dtype=torch.float64))


def test_interaction_basis_whitens_and_reconstructs() -> None:
    """C = U D^{-1/2} V Λ^{1/2}: the basis functions are uncorrelated with variances Λ."""
    net = mlp([4, 8, 8])  # square last layer: M full rank, every direction kept
    x = torch.randn(150, 4, dtype=torch.float64)
    b = build_bases(net, x, ["0", "2", "output"], progress=False)[1]
    assert b.n_nodes == 9
    acts = _acts(net, x, ["2"])["2"]
    f_hat = b.transform(acts)
    cov = torch.cov(f_hat[:, 1:].T, correction=0)
    torch.testing.assert_close(cov, torch.diag(b.eigenvalues[1:]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(b.inverse_transform(f_hat), acts, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b.C_pinv @ b.C, torch.eye(b.n_nodes, dtype=torch.float64))


@pytest.mark.parametrize("basis", ["interaction", "pca", "neuron"])
def test_order_and_names(basis: str) -> None:
    net = mlp([3, 4, 2])
    bases = build_bases(
        net,
        torch.randn(30, 3, dtype=torch.float64),
        ["0", "2", "output"],
        basis=basis,
        progress=False,
    )
    assert [b.name for b in bases] == ["0", "2", "output"]
    assert all(b.kind == basis for b in bases[:-1]) and bases[-1].kind == "neuron"
    assert torch.isnan(bases[0].eigenvalues[0]) and not bases[-1].has_constant
