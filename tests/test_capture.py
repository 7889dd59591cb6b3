"""Capture and data handling on realistic inputs: in-place models, tuples, loaders."""

from __future__ import annotations

import numpy as np
import torch
from nets import mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from interbasis import activation_grams, build_bases, build_graph


class _InPlaceResidual(nn.Module):
    """h = hook(x); h += tanh(W h): the residual add writes into the hooked tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = nn.Identity()
        self.lin = nn.Linear(4, 4).double()
        self.out = nn.Linear(4, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hook(x)
        h += torch.tanh(self.lin(h))
        return self.out(h)


def test_in_place_operations_do_not_change_captured_activations() -> None:
    x = torch.randn(64, 4, dtype=torch.float64)
    grams = activation_grams(_InPlaceResidual().eval(), x, ["hook"])
    torch.testing.assert_close(grams["hook"].mean, x.mean(0))
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(inplace=True), nn.Linear(5, 2)).double().eval()
    x3 = torch.randn(64, 3, dtype=torch.float64)
    pre = net[0](x3).detach()
    grams = activation_grams(net, x3, ["1"])  # the input of the in-place ReLU
    torch.testing.assert_close(grams["1"].mean, pre.mean(0))
    bases = build_bases(net, x3, ["0", "1", "output"], basis="pca", progress=False)
    # the pre-activations of 3-d inputs span 3 directions (+ the constant); the rectified
    # activations that an in-place ReLU would leave behind span 5
    assert bases[1].n_nodes == 4


def test_a_tuple_is_one_batch_and_loaders_match_tensors() -> None:
    x = torch.randn(60, 3, dtype=torch.float64)
    y = torch.randn(60, 3, dtype=torch.float64)  # same width: must not be taken for inputs
    net = mlp([3, 5, 2])
    names = ["0", "2", "output"]
    ref = build_bases(net, x, names, progress=False)
    as_tuple = build_bases(net, (x, y), names, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    as_loader = build_bases(net, loader, names, progress=False)
    for a, b, c in zip(ref, as_tuple, as_loader, strict=True):
        torch.testing.assert_close(b.mean, a.mean, rtol=1e-12, atol=0)
        torch.testing.assert_close(c.eigenvalues, a.eigenvalues, rtol=1e-10, atol=0, equal_nan=True)


class _FusedAttention(nn.Module):
    """Attention through scaled_dot_product_attention (no forward-mode AD on CPU kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Identity()
        self.second = nn.Identity()
        self.q = nn.Linear(4, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        a = nn.functional.scaled_dot_product_attention(self.q(h), h, h)
        return self.second(torch.tanh(a)).sum(1)


def test_models_without_forward_mode_ad_take_the_general_path() -> None:
    x = torch.randn(40, 3, 4, dtype=torch.float64)
    graph = build_graph(_FusedAttention().eval(), x, ["first", "second", "output"], progress=False)
    assert all(e.shape[0] > 0 for e in graph.edges)


def test_float32_forward_finds_affine_sections() -> None:
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)).eval()
    x = torch.randn(90, 4)
    names = ["0", "1", "output"]
    w = build_graph(net, x, names, edges="weight", dtype=torch.float32, progress=False)
    sq = build_graph(net, x, names, dtype=torch.float32, progress=False)
    for a, b in zip(sq.edges, w.edges, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7 * a.max())
