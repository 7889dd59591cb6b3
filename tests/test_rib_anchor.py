"""Sanity anchor: the shipped rib mod-add checkpoint reproduces rib's published Λ."""

from __future__ import annotations

import copy

import torch

from interbasis import Basis

RIB_NODE_LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]
# rib's published Λ at `unembed` (printed with two decimals, so agreement is checked to
# half a unit in the last printed digit: ≤ 0.005 absolute, i.e. ≤ 5e-7 relative)
RIB_UNEMBED_LAMBDA = [9286.75, 5306.10, 1891.80]


def test_unembed_lambda_matches_rib(rib_bases: list[Basis]) -> None:
    unembed = rib_bases[2]
    got = unembed.eigenvalues[1:4].tolist()
    print("Λ at unembed:", [f"{v:.6f}" for v in got])
    for g, want in zip(got, RIB_UNEMBED_LAMBDA, strict=True):
        assert abs(g - want) <= 0.005


def test_unembed_lambda_equals_output_covariance(rib_bases, rib_model, rib_train_inputs) -> None:
    """Independent route: unembed -> logits is linear (W_U), so with the neuron basis at the
    output, M = W_U W_U^T and Λ are the nonzero eigenvalues of the centred logit covariance
    W_U^T Cov W_U. Eigenvalues above 1e-7 of the largest agree to rtol 1e-8; the smaller ones
    sit near float64 round-off of the Gram (absolute error ~1e-14 of the largest), so they are
    compared with an absolute tolerance of 1e-13 of the largest."""
    captured: list[torch.Tensor] = []
    model = copy.deepcopy(rib_model).double()
    handle = model.unembed.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        model(rib_train_inputs)
    handle.remove()
    resid = captured[0]
    cov = torch.cov(resid.T, correction=0)
    W_U = model.unembed.W_U.detach()
    ref = torch.linalg.eigvalsh(W_U.T @ cov @ W_U).flip(0)
    lam = rib_bases[2].eigenvalues[1:]
    ref = ref[: len(lam)]
    big = ref > 1e-7 * ref[0]
    assert big.sum() >= 20  # 29 on this checkpoint: the logit covariance is low-rank
    torch.testing.assert_close(lam[big], ref[big], rtol=1e-8, atol=0)
    torch.testing.assert_close(lam, ref, rtol=1e-8, atol=1e-13 * float(ref[0]))


def test_rib_bases_are_consistent(rib_bases: list[Basis]) -> None:
    print("nodes per layer:", {b.name: b.n_nodes for b in rib_bases})
    assert [b.name for b in rib_bases] == RIB_NODE_LAYERS
    for b in rib_bases[:-1]:
        lam = b.eigenvalues[1:]
        assert b.has_constant and torch.isnan(b.eigenvalues[0])
        assert (lam > 0).all() and (lam[:-1] >= lam[1:]).all()
    assert rib_bases[-1].kind == "neuron" and rib_bases[-1].n_nodes == 114
