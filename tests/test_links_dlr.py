"""D_LR with interaction-basis features of layers and modules (issue 12)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import interbasis as ib
from interbasis.errors import DataError, ShapeError
from interbasis.links import graph_dlr, layer_activations, node_functions
from interbasis.richness import d_lr

LAYERS = ["0", "2", "4", "output"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def net_and_data() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()
    return net.eval(), torch.randn(300, 4, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["gram", "projection"])
def test_pca_basis_features_give_the_neurons_d_lr(net_and_data, mode) -> None:
    """Issue 12 test 3: CKA ignores centring and orthogonal maps, so PCA = neurons."""
    net, x = net_and_data
    pca = ib.build_bases(net, x, LAYERS, basis="pca", progress=False)
    got = graph_dlr(net, x, pca, mode=mode)
    acts = layer_activations(net, x, LAYERS[:-1])
    F = acts["output"]
    for name in LAYERS[:-1]:
        want = d_lr(acts[name], F, mode=mode)
        assert got.layers[name] == pytest.approx(want, rel=1e-10, abs=1e-13)
        assert got.neurons[name] == pytest.approx(want, rel=1e-12, abs=1e-15)
    # the interaction basis is not an orthogonal map of the neurons: its D_LR differs
    inter = graph_dlr(net, x, ib.build_bases(net, x, LAYERS, progress=False), mode=mode)
    assert abs(inter.layers["2"] - got.layers["2"]) > 1e-3


def test_interaction_features_before_a_linear_readout_are_the_outputs(net_and_data) -> None:
    """Closed form: with ``F = f W^T + b`` and nothing truncated, ``f_hat f_hat^T = F_c F_c^T``.

    In the local interaction basis of the readout layer ``M_z = W_z W_z^T`` (whitened
    coordinates), so ``f_hat f_hat^T = z V Λ V^T z^T = z M_z z^T = F_c F_c^T``: D_LR = 0.
    """
    net, x = net_and_data
    bases = ib.build_bases(net, x, LAYERS, progress=False)
    f_hat = node_functions(net, x, bases)["4"][:, 1:]
    F = layer_activations(net, x, [])["output"]
    Fc = F - F.mean(dim=0)
    torch.testing.assert_close(f_hat @ f_hat.T, Fc @ Fc.T, rtol=1e-9, atol=1e-11)
    assert graph_dlr(net, x, bases).layers["4"] == pytest.approx(0.0, abs=1e-12)


def test_modules_and_module_layers(net_and_data) -> None:
    net, x = net_and_data
    bases = ib.build_bases(net, x, LAYERS, progress=False)
    # module 0 = every node of layer "2", module 1 = the first two nodes of "4"
    member = {f"2:{i}": 0 for i in range(1, bases[1].n_nodes)}
    member.update({"4:1": 1, "4:2": 1, "4:3": -1, "output:0": 1})
    res = graph_dlr(net, x, bases, member)
    assert res.modules[0] == pytest.approx(res.layers["2"], rel=1e-12)
    assert res.module_layers[(0, "2")] == pytest.approx(res.layers["2"], rel=1e-12)
    assert res.module_sizes == {0: bases[1].n_nodes - 1, 1: 2}  # output nodes left out
    f_hat = node_functions(net, x, bases)["4"][:, 1:3]
    want = d_lr(f_hat, layer_activations(net, x, [])["output"])
    assert res.modules[1] == pytest.approx(want, rel=1e-12)


def test_positions_are_concatenated_and_constant_features_give_nan() -> None:
    """A (N, pos, d) layer contributes all positions; a constant module gives NaN, no crash."""

    class PerPosition(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inner(x)  # (N, 2, 3)
            return self.head(h.reshape(h.shape[0], -1))

    torch.manual_seed(1)
    net = PerPosition().double().eval()
    x = torch.randn(200, 2, 3, dtype=torch.float64)
    x[:, 1] = 1.0  # the second position is the same for every input
    pca = ib.build_bases(net, x, ["inner", "output"], basis="pca", progress=False)
    res = graph_dlr(net, x, pca, {"inner:1": 0})
    want = d_lr(x.reshape(200, -1), layer_activations(net, x, [])["output"])
    assert res.layers["inner"] == pytest.approx(want, rel=1e-10)
    net2 = PerPosition().double().eval()
    neuron = ib.build_bases(net2, x, ["inner", "output"], basis="neuron", progress=False)
    res = graph_dlr(net2, x, neuron, {"inner:1": 0})  # neuron 0 at both positions
    assert res.module_layers[(0, "inner")] == pytest.approx(
        d_lr(x[:, :, 0], layer_activations(net2, x, [])["output"]), rel=1e-10
    )
    # neuron 0 constant at both positions: its module's D_LR is NaN (CKA undefined), the
    # other module's is still the closed form, and the layer as a whole stays finite
    x_const = x.clone()
    x_const[:, :, 0] = 0.5
    neuron = ib.build_bases(net2, x_const, ["inner", "output"], basis="neuron", progress=False)
    res = graph_dlr(net2, x_const, neuron, {"inner:1": 0, "inner:2": 1})
    assert math.isnan(res.modules[0]) and math.isnan(res.module_layers[(0, "inner")])
    F_const = layer_activations(net2, x_const, [])["output"]
    assert res.modules[1] == pytest.approx(d_lr(x_const[:, :, 1], F_const), rel=1e-10)
    assert math.isfinite(res.layers["inner"]) and res.module_sizes == {0: 2, 1: 2}


def test_bad_input(net_and_data) -> None:
    net, x = net_and_data
    bases = ib.build_bases(net, x, LAYERS, progress=False)
    with pytest.raises(DataError, match="at least one node layer besides 'output'"):
        graph_dlr(net, x, bases[-1:])
    with pytest.raises(DataError, match="at least 2 samples"):
        graph_dlr(net, x[:1], bases)
    torch.manual_seed(2)
    other = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    with pytest.raises(ShapeError, match="width 5, not 8"):  # bases of another model
        graph_dlr(other.double().eval(), x, bases)
