"""Models as users bring them: mapping/tuple outputs, keyword inputs, extra positional tensors,
channels-first convolutions, train mode, unusual ``.to`` signatures (any-model issue)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import interbasis as ib
from interbasis import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """``h, mask -> h + tanh(mix(h))``: a residual-free block with an extra float argument."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d).double()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(h)) * mask


class HFLike(nn.Module):
    """Keyword inputs, a mask passed positionally to blocks, a dict output with ``logits``."""

    def __init__(self, d: int = 5, vocab: int = 11) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(vocab, d, generator=g, dtype=torch.float64))
        self.block0, self.block1 = Block(d), Block(d)
        self.head = nn.Linear(d, 3).double()

    def forward(self, input_ids: torch.Tensor, scale: torch.Tensor) -> dict:
        h = self.embed[input_ids]
        mask = scale[:, :, None].expand_as(h).to(h.dtype)
        h = self.block1(self.block0(h, mask), mask)
        return {"hidden": h, "logits": self.head(h[:, -1])}


class Wrapped(nn.Module):
    """The same model wrapped by hand to take one tensor and return the logits."""

    def __init__(self, inner: HFLike) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x[:, :4].long(), x[:, 4:])["logits"]


def _hf_data(n: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, 11, (n, 4), generator=g),
        # the same for every sample: a side input that varies with the sample would make the
        # blocks' inputs no cut of the forward pass (the cut check would refuse them)
        "scale": (0.5 + torch.rand(1, 4, generator=g, dtype=torch.float64)).expand(n, 4),
    }


def test_mapping_inputs_and_outputs_equal_a_hand_wrapped_model() -> None:
    model = HFLike().eval()
    data = _hf_data()
    layers = ["block0", "block1", "head", "output"]
    g = ib.build_graph(model, data, layers, batch_size=16, progress=False)
    wrapped = Wrapped(copy.deepcopy(model)).eval()
    x = torch.cat([data["input_ids"].double(), data["scale"]], dim=1)
    wl = ["inner." + n for n in layers[:-1]] + ["output"]
    ref = ib.build_graph(wrapped, x, wl, batch_size=16, progress=False)
    for a, b in zip(g.layers, ref.layers, strict=True):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-10)
    for a, b in zip(g.edges, ref.edges, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14 * b.max())
    # an output= selector gives the same graph; a selector returning a non-tensor is refused
    sel = ib.build_graph(model, data, layers, output=lambda o: o["logits"], progress=False)
    np.testing.assert_allclose(sel.edges[-1], g.edges[-1], rtol=1e-10)
    with pytest.raises(DataError, match="output= selector returned dict"):
        ib.build_graph(model, data, layers, output=lambda o: o, progress=False)


def test_tuple_output_reads_its_first_tensor() -> None:
    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()

        def forward(self, x: torch.Tensor) -> tuple:
            y = self.b(torch.tanh(self.a(x)))
            return (y, "aux")

    x = torch.randn(30, 3, dtype=torch.float64)
    bases = ib.build_bases(TupleOut().eval(), x, ["a", "b", "output"], progress=False)
    assert bases[-1].dim == 2


class Convs(nn.Module):
    """Conv -> ReLU -> (1x1 channel mix) -> conv -> pooled linear head; channels-first."""

    def __init__(self, mix: torch.Tensor | None = None, groups: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1, groups=groups).double()
        self.mix = nn.Conv2d(6, 6, 1, bias=False).double()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, groups=groups).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.4)
            self.mix.weight.copy_(torch.eye(6, dtype=torch.float64)[:, :, None, None])
            if mix is not None:
                self.mix.weight.copy_(mix[:, :, None, None])
                w2 = self.conv2.weight  # undo the mix: conv2 sees the same function
                self.conv2.weight.copy_(torch.einsum("oihw,ij->ojhw", w2, torch.linalg.inv(mix)))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        return self.pool(torch.tanh(self.conv2(self.mix(h)))).flatten(1)


def test_conv_features_are_channels_and_lambda_is_invariant_to_channel_mixing() -> None:
    x = torch.randn(24, 4, 6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layers = ["conv2", "pool", "output"]
    net = Convs().eval()
    bases = ib.build_bases(net, x, layers, progress=False)
    assert [b.dim for b in bases] == [6, 4, 4]  # channels, not the image width (5)
    grams = ib.activation_grams(net, x, ["conv1"])
    assert grams["conv1"].dim == 4
    mix = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mixed = Convs(mix=mix + 3 * torch.eye(6, dtype=torch.float64)).eval()
    # the mix sits between conv1 and conv2: conv2's input is mixed, the function is unchanged
    torch.testing.assert_close(mixed(x), net(x))
    b2 = ib.build_bases(mixed, x, layers, progress=False)
    torch.testing.assert_close(b2[0].eigenvalues[1:], bases[0].eigenvalues[1:], rtol=1e-9, atol=0)


def test_conv_channel_groups_that_never_mix_have_no_edges_between_them() -> None:
    x = torch.randn(30, 4, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    net = Convs(groups=2).eval()  # channels {0,1}->{0,1,2}->{0,1}; {2,3}->{3,4,5}->{2,3}
    g = ib.build_graph(net, x, ["conv1", "mix", "conv2", "output"], basis="neuron",
                       progress=False)  # fmt: skip
    E = g.edges[0]  # conv1 input (4 channels + constant) -> mix input (6 channels + constant)
    assert E[1:4, 3:].max() == 0 and E[4:, 1:3].max() == 0
    assert E[1:4, 1:3].max() > 0 and E[4:, 3:].max() > 0


def test_feature_dim_override_and_its_errors() -> None:
    class ChannelsFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Identity(), nn.Identity()
            self.w = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, channels, length)
            h = self.a(x)
            return self.b(torch.einsum("ij,bjl->bil", self.w, torch.tanh(h)))

    x = torch.randn(20, 3, 7, dtype=torch.float64)
    grams = ib.activation_grams(ChannelsFirst(), x, ["a"])
    assert grams["a"].dim == 7
    bases = ib.build_bases(ChannelsFirst(), x, ["a", "b"], feature_dim=1, progress=False)
    assert [b.dim for b in bases] == [3, 3]
    with pytest.raises(DataError, match="feature_dim=5"):
        ib.build_bases(ChannelsFirst(), x, ["a", "b"], feature_dim=5, progress=False)
    with pytest.raises(ib.NodeLayerError, match="feature_dim names 'c'"):
        ib.build_bases(ChannelsFirst(), x, ["a", "b"], feature_dim={"c": 1}, progress=False)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.bn, self.drop = nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.3)
        self.l2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.drop(torch.tanh(self.bn(self.l1(x)))))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before) and set(before) == set(after)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, None])
def test_train_mode_models_are_analysed_in_eval_mode_and_never_modified(dtype) -> None:
    torch.manual_seed(0)
    net = BNNet().train()
    x = torch.randn(64, 3)
    with torch.no_grad():  # some running statistics
        for _ in range(3):
            net(x)
    before = _state(net)
    layers = ["l1", "l2", "output"]
    with pytest.warns(UserWarning, match="train mode; analysing its eval-mode function"):
        g1 = ib.build_graph(net, x, layers, dtype=dtype, progress=False)
    with pytest.warns(UserWarning, match="train mode"):
        g2 = ib.build_graph(net, x, layers, dtype=dtype, progress=False)
    assert net.training and _unchanged(net, before)
    for a, b in zip(g1.edges, g2.edges, strict=True):  # deterministic: dropout is off
        np.testing.assert_array_equal(a, b)
    ref = ib.build_graph(copy.deepcopy(net).eval(), x, layers, dtype=dtype, progress=False)
    for a, b in zip(g1.layers, ref.layers, strict=True):
        np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ib.build_bases(net, x, layers, basis="pca", dtype=dtype, progress=False)
    assert _unchanged(net, before)
    with pytest.raises(DataError, match="is in train mode"):
        ib.build_graph(net, x, layers, train_mode="error", progress=False)


def test_a_model_whose_to_takes_one_argument_is_supported() -> None:
    class OneArgTo(nn.Sequential):
        def to(self, device_or_dtype):  # type: ignore[override]  # like HookedTransformer.to
            return super().to(device_or_dtype)

    net = OneArgTo(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()  # float32
    before = _state(net)
    g = ib.build_graph(net, torch.randn(20, 3), ["0", "2", "output"], progress=False)
    assert g.layers[0].size == 4 and _unchanged(net, before)


def test_bad_arguments_are_refused_before_any_work() -> None:
    net = BNNet().eval()
    x = torch.randn(20, 3)
    with pytest.raises(TypeError, match="node_layers must be a list"):
        ib.build_graph(net, x, "l1", progress=False)
    with pytest.raises(DataError, match="batch_size must be a positive integer, got True"):
        ib.build_graph(net, x, ["l1", "output"], batch_size=True, progress=False)
    with pytest.raises(ValueError, match="memory_budget must be an integer"):
        ib.build_graph(net, x, ["l1", "output"], memory_budget=-5, progress=False)
    with pytest.raises(ValueError, match='scope="global" applies to the interaction basis'):
        ib.build_bases(net, x, ["l1", "output"], basis="pca", scope="global", progress=False)
    with pytest.raises(ValueError, match="n_points must be an integer"):
        ib.build_graph(net, x, ["l1", "output"], edges="functional", n_points=0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="CUDA is not available"):
            ib.build_graph(net, x, ["l1", "output"], device="cuda", progress=False)
    with pytest.raises(DataError, match="meta device"):
        ib.build_graph(net, x.to("meta"), ["l1", "output"], progress=False)
    with pytest.raises(TypeError, match="keep_positions must be a dict"):
        ib.build_graph(net, x, ["l1", "output"], keep_positions=[-1], progress=False)


def test_kept_positions_equal_a_model_cut_to_those_positions() -> None:
    """keep_positions={"second": [-1]} equals cutting the model to its last position."""
    from nets import PositionMixer

    class Cut(PositionMixer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.second(self.mix(self.first(x))[:, -1:]))[:, -1:]

    class Full(PositionMixer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.second(self.mix(self.first(x))))[:, -1:]

    x = torch.randn(30, 4, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    layers = ["first", "second", "output"]
    cut = ib.build_graph(Cut().eval(), x, layers, progress=False)
    kept = ib.build_graph(Full().eval(), x, layers, keep_positions={"second": [-1]},
                          progress=False)  # fmt: skip
    for a, b in zip(kept.layers, cut.layers, strict=True):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-10)
    for a, b in zip(kept.edges, cut.edges, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14 * b.max())
    # without the selection the toolkit names the positions that never reach the output
    with pytest.warns(UserWarning, match=r"positions \[0, 1, 2\] of node layer 'second' never "
                      r"reach 'output'.*keep_positions=\{'second': \[3\]\}"):  # fmt: skip
        ib.build_graph(Full().eval(), x, layers, progress=False)
    with pytest.raises(DataError, match="the layer has 4 positions"):
        ib.build_graph(Full().eval(), x, layers, keep_positions={"second": [7]}, progress=False)


def test_curvature_entry_points_follow_the_train_mode_policy() -> None:
    """Hessian, HVP operator and Lanczos: eval-mode copy with a warning, deterministic,
    the model untouched; train_mode="error" refuses (one policy with build_graph)."""
    from interbasis.curvature import HessianOperator, hessian_matrix, lanczos
    from interbasis.curvature.objective import Objective

    torch.manual_seed(0)
    net = BNNet().double().train()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    before = _state(net)
    loss = nn.MSELoss()
    with pytest.warns(UserWarning, match="eval-mode function"):
        H1 = hessian_matrix(net, loss, (x, y))
    with pytest.warns(UserWarning, match="eval-mode function"):
        H2 = hessian_matrix(net, loss, (x, y))
    torch.testing.assert_close(H1, H2, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="eval-mode function"):
        op = HessianOperator(net, loss, (x, y))
    top = [lanczos(op, 3, v0=np.ones(op.shape[0])).values for _ in range(2)]
    torch.testing.assert_close(top[0], top[1], rtol=1e-10, atol=0)
    torch.testing.assert_close(top[0], torch.linalg.eigvalsh(H1).flip(0)[:3], rtol=1e-8, atol=0)
    assert net.training and _unchanged(net, before)
    with pytest.raises(DataError, match="is in train mode"):
        Objective(net, loss, (x, y), train_mode="error")


class PerPosition(nn.Module):
    """``(x, attention_mask) -> logits``: positions never mix (like causal attention seen from
    the left-most tokens), so padding positions only reach padding outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.up, self.down = nn.Linear(3, 6).double(), nn.Linear(6, 4).double()
        self.head = nn.Linear(4, 2).double()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.tanh(self.up(x))))


@pytest.mark.parametrize("edges", ["squared", "functional", "weight"])
def test_padding_changes_no_edge_kind(edges: str) -> None:
    """Padded positions (attention_mask 0, arbitrary values) are neither samples nor output
    units: every edge kind on padded data equals the graph of the real positions alone."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(24, 4, 3, generator=g, dtype=torch.float64)
    extra = torch.randn(24, 2, 3, generator=g, dtype=torch.float64)
    padded = torch.cat([real, 5.0 * extra], dim=1)
    mask = torch.ones(24, 6, dtype=torch.long)
    mask[:, 4:] = 0
    model = PerPosition().eval()
    names = ["down", "head"] if edges == "weight" else ["up", "down", "output"]
    kw = {"edges": edges, "progress": False}
    want = ib.build_graph(model, {"x": real, "attention_mask": mask[:, :4]}, names, **kw)
    got = ib.build_graph(model, {"x": padded, "attention_mask": mask}, names, **kw)
    assert got.metadata["n_samples"] == want.metadata["n_samples"] == 24
    for a, b in zip(got.edges, want.edges, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max())
    # mixed padding in one batch: half of the sequences are real up to 6 positions
    mixed_mask = mask.clone()
    mixed_mask[::2, 4:] = 1
    two = {"x": padded, "attention_mask": mixed_mask}
    longer = {"x": padded[::2], "attention_mask": mixed_mask[::2]}
    shorter = {"x": padded[1::2], "attention_mask": mask[1::2]}
    both = ib.build_graph(model, [longer, shorter], names, batch_size=None, **kw)
    mixed = ib.build_graph(model, two, names, **kw)
    for a, b in zip(mixed.edges, both.edges, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max())
