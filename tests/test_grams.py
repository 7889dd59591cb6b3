"""G, M and K agree with brute-force sums over samples, positions and full Jacobians."""

from __future__ import annotations

import torch
from nets import PositionMixer, mlp

from interbasis import activation_grams, output_jacobian_gram
from interbasis.grams import GramAccumulator


def _brute_gram(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = acts.reshape(-1, acts.shape[-1])
    mean = f.sum(0) / f.shape[0]
    centred = sum(torch.outer(r - mean, r - mean) for r in f) / f.shape[0]
    return mean, centred


def _brute_jacobian_gram(fn, acts: torch.Tensor, out_map: torch.Tensor) -> torch.Tensor:
    """sum_{x,t,i,s} J_{tis.}^T J_{tis.} / (N P_in), J from a full jacrev per sample."""
    n, p_in, d = acts.shape
    total = torch.zeros(d, d, dtype=torch.float64)
    for x in acts:  # per-sample loop on purpose: an independent reference
        J = torch.func.jacrev(lambda v: fn(v) @ out_map)(x)  # (P_out, k, P_in, d)
        for t in range(J.shape[0]):
            for i in range(J.shape[1]):
                for s in range(p_in):
                    total += torch.outer(J[t, i, s], J[t, i, s])
    return total / (n * p_in)


def test_gram_and_M_match_brute_force_with_positions() -> None:
    net = PositionMixer().eval()
    x = torch.randn(23, 4, 5, dtype=torch.float64)
    grams = activation_grams(net, x, ["first", "second"], batch_size=6)
    h1 = x
    h2 = net.mix(x)
    for name, acts in (("first", h1), ("second", h2)):
        mean, centred = _brute_gram(acts)
        torch.testing.assert_close(grams[name].mean, mean, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(grams[name].covariance, centred, rtol=1e-10, atol=1e-14)
        uncentred = torch.einsum("npi,npj->ij", acts, acts) / (acts.shape[0] * acts.shape[1])
        torch.testing.assert_close(grams[name].second_moment, uncentred, rtol=1e-10, atol=1e-14)

    out_map = torch.randn(4, 3, dtype=torch.float64)
    M = output_jacobian_gram(net, x, wrt="first", of="second", out_map=out_map, batch_size=6)
    torch.testing.assert_close(M, _brute_jacobian_gram(net.mix, h1, out_map), rtol=1e-10, atol=0)

    eye = torch.eye(6, dtype=torch.float64)
    M_out = output_jacobian_gram(net, x, wrt="second", batch_size=5)
    torch.testing.assert_close(M_out, _brute_jacobian_gram(net.head, h2, eye), rtol=1e-10, atol=0)


def test_K_is_output_jacobian_gram_wrt_preactivations() -> None:
    """K^l (seed 004 eq. 39): Gram of output Jacobians w.r.t. the pre-activations."""
    net = mlp([3, 6, 5, 2], act=torch.nn.Tanh)
    x = torch.randn(40, 3, dtype=torch.float64)
    K = output_jacobian_gram(net, x, wrt="1")  # module "1" (Tanh) receives pre-activations
    pre = net[0](x)
    rest = torch.nn.Sequential(*list(net)[1:])
    Ks = [torch.func.jacrev(rest)(p) for p in pre]  # (2, 6) each
    ref = sum(J.T @ J for J in Ks) / len(Ks)
    torch.testing.assert_close(K, ref, rtol=1e-10, atol=0)


def test_streaming_gram_independent_of_batching() -> None:
    x = torch.randn(301, 7, dtype=torch.float64) * 3 + 5  # large mean: tests the merge
    one = GramAccumulator(7)
    one.update(x)
    many = GramAccumulator(7)
    for chunk in torch.tensor_split(x, [1, 2, 50, 51, 200, 260]):
        many.update(chunk)
    assert one.count == many.count == 301
    torch.testing.assert_close(many.covariance, one.covariance, rtol=1e-12, atol=0)
    torch.testing.assert_close(many.mean, one.mean, rtol=1e-12, atol=0)
    g = one.gram(fold_bias=True)
    aug = torch.cat([x, torch.ones(301, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(g, aug.T @ aug / 301, rtol=1e-12, atol=1e-12)


def test_affine_sections_take_the_fast_path_and_agree() -> None:
    """An affine section (Linear -> output) is detected and gives the same M as per-sample
    VJPs; a nonlinear one is not taken for affine."""
    from interbasis.build import prepare
    from interbasis.jacobians import section_jacobian_gram

    net = mlp([3, 6, 4])  # "2" -> output is the last Linear: affine
    x = torch.randn(50, 3, dtype=torch.float64)
    run = prepare(net, x, ["0", "2", "output"], batch_size=16, progress=False)
    out_map = torch.randn(4, 3, dtype=torch.float64)
    args = (run.section("2", "output"), run.batches, out_map)
    fast = section_jacobian_gram(*args)
    slow = section_jacobian_gram(*args, detect_affine=False)
    assert fast.affine is not None and slow.affine is None
    torch.testing.assert_close(fast.M, slow.M, rtol=1e-12, atol=0)
    W = net[2].weight.detach()
    torch.testing.assert_close(fast.M, W.T @ out_map @ out_map.T @ W, rtol=1e-12, atol=0)
    args = (run.section("0", "2"), run.batches, torch.eye(6, dtype=torch.float64))
    assert section_jacobian_gram(*args).affine is None
