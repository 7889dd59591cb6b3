"""Bad input to the foundation gets a clear error naming the problem."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import mlp
from torch import nn

from interbasis import (
    DataError,
    NodeLayerError,
    NonFiniteError,
    RankError,
    build_bases,
    output_jacobian_gram,
)

X = torch.randn(32, 3, dtype=torch.float64)


def test_unknown_node_layer_lists_close_matches() -> None:
    net = mlp([3, 4, 2])
    with pytest.raises(NodeLayerError, match=r"unknown node layer '3'"):
        build_bases(net, X, ["0", "3"], progress=False)
    outer = nn.Module()
    outer.layers = nn.ModuleList([nn.Linear(3, 2).double()])  # type: ignore[assignment]
    with pytest.raises(NodeLayerError, match="unknown node layer 'layers.O'") as err:
        build_bases(outer.eval(), X, ["layers.O"], progress=False)
    assert "Close matches: ['layers.0'" in str(err.value)


def test_node_layers_out_of_forward_order() -> None:
    net = mlp([3, 4, 4, 2])
    with pytest.raises(NodeLayerError, match="forward order.*\\['0', '4', '2'\\]"):
        build_bases(net, X, ["0", "4", "2"], progress=False)


def test_output_must_be_last_and_names_unique() -> None:
    net = mlp([3, 4, 2])
    with pytest.raises(NodeLayerError, match='"output" must be the last'):
        build_bases(net, X, ["output", "0"], progress=False)
    with pytest.raises(NodeLayerError, match="given twice"):
        build_bases(net, X, ["0", "0"], progress=False)
    with pytest.raises(NodeLayerError, match="empty"):
        build_bases(net, X, [], progress=False)


def test_empty_data_and_bad_batches() -> None:
    net = mlp([3, 4, 2])
    with pytest.raises(DataError, match="empty tensor"):
        build_bases(net, torch.empty(0, 3, dtype=torch.float64), ["0", "output"], progress=False)
    with pytest.raises(DataError, match="no batches"):
        build_bases(net, [], ["0", "output"], progress=False)
    with pytest.raises(DataError, match="first\\s+element is one"):
        build_bases(net, [("not a tensor", 1)], ["0", "output"], progress=False)
    with pytest.raises(DataError, match="one-shot iterator"):
        build_bases(net, (b for b in [X]), ["0", "output"], progress=False)


def test_nan_in_activations_names_layer_and_batch() -> None:
    net = mlp([3, 4, 2])
    bad = X.clone()
    bad[20, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="activations of node layer '0' in batch 2"):
        build_bases(net, bad, ["0", "2", "output"], batch_size=8, progress=False)


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        pass

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return g * float("inf")

    @staticmethod
    def vmap(info, in_dims, x):  # type: ignore[no-untyped-def]
        return _InfGrad.apply(x), in_dims[0]


class _InfGradModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _InfGrad.apply(x)


def test_nan_in_jacobians_names_layer_and_batch() -> None:
    net = nn.Sequential(nn.Linear(3, 4).double(), _InfGradModule(), nn.Linear(4, 2).double())
    with pytest.raises(NonFiniteError, match=r"Jacobians.*node layer '0' in batch 0"):
        build_bases(net.eval(), X, ["0", "2"], progress=False)


def test_train_mode_warns() -> None:
    net = mlp([3, 4, 2]).train()
    with pytest.warns(UserWarning, match="train mode"):
        build_bases(net, X, ["0", "output"], progress=False)


def test_all_zero_gram_is_a_rank_error() -> None:
    net = nn.Sequential(nn.Linear(3, 4).double(), nn.Linear(4, 2).double()).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()
    # layer '1' is constant, so the cut check cannot run: it says so before the RankError
    with (
        pytest.warns(UserWarning, match="could not check"),
        pytest.raises(RankError, match="node layer '1'.*no direction above"),
    ):
        build_bases(net, X, ["0", "1", "output"], progress=False)


def test_layer_the_output_ignores_is_a_rank_error() -> None:
    net = nn.Sequential(nn.Linear(3, 4).double(), nn.Linear(4, 2).double()).eval()
    with torch.no_grad():
        net[1].weight.zero_()
    with pytest.raises(RankError, match="node layer '1': M has no direction"):
        build_bases(net, X, ["0", "1", "output"], progress=False)


def test_mixed_devices_in_the_model() -> None:
    net = mlp([3, 4, 2])
    net[2].register_buffer("elsewhere", torch.zeros(1, device="meta"))
    with pytest.raises(DataError, match="several devices"):
        build_bases(net, X, ["0", "output"], progress=False)


class _Residual(nn.Module):
    """x + f(x) written so that f's input is NOT a cut (the skip bypasses it)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3).double()
        self.after = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(x + torch.tanh(self.inner(x)))


def test_node_layers_that_are_not_a_cut() -> None:
    net = _Residual().eval()
    with pytest.raises(NodeLayerError, match="not consecutive sections.*residual"):
        build_bases(net, X, ["inner", "after", "output"], progress=False)
    with pytest.raises(NodeLayerError, match="not consecutive sections"):
        output_jacobian_gram(net, X, wrt="inner")


def test_option_errors() -> None:
    net = mlp([3, 4, 2])
    with pytest.raises(ValueError, match="center=True needs fold_bias=True"):
        build_bases(net, X, ["0", "output"], fold_bias=False, progress=False)
    with pytest.raises(ValueError, match="fold_bias=True needs center=True"):
        build_bases(net, X, ["0", "output"], center=False, progress=False)
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        build_bases(net, X, ["0", "output"], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="basis must be"):
        build_bases(net, X, ["0", "output"], basis="ica", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="truncation"):
        build_bases(net, X, ["0", "output"], truncation=-1.0, progress=False)
    with pytest.raises(DataError, match="no floating-point tensor input"):
        emb = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)).double().eval()
        build_bases(emb, torch.randint(0, 5, (8,)), ["0", "1"], progress=False)


def test_inf_in_activations_is_named_too() -> None:
    net = mlp([3, 4, 2])
    bad = X.clone()
    bad[3, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="node layer '0' in batch 0"):
        build_bases(net, bad, ["0", "2", "output"], progress=False)


def test_cut_check_waits_for_a_batch_of_two_and_warns_when_there_is_none() -> None:
    net = _Residual().eval()
    with pytest.raises(NodeLayerError, match="not consecutive sections"):  # 1st batch: 1 sample
        build_bases(net, [X[:1], X[1:]], ["inner", "after", "output"], progress=False)
    with pytest.warns(UserWarning, match="could not check that the node layers are sections"):
        build_bases(mlp([3, 4, 2]), [X[:1], X[1:2]], ["0", "2", "output"], progress=False)


class _KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(input=x)


class _SequenceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d) -> (pos, batch, d)
        return self.inner(x.transpose(0, 1)).transpose(0, 1)


def test_keyword_inputs_work_and_sequence_first_modules_are_named() -> None:
    """A module called with a keyword tensor (HF style) is read and substituted there."""
    kw = _KeywordCall().eval()
    positional = nn.Sequential(copy.deepcopy(kw.inner)).eval()
    got = build_bases(kw, X, ["inner", "output"], progress=False)
    want = build_bases(positional, X, ["0", "output"], progress=False)
    torch.testing.assert_close(
        got[0].eigenvalues, want[0].eigenvalues, rtol=1e-12, atol=0, equal_nan=True
    )
    x = torch.randn(8, 5, 3, dtype=torch.float64)
    with pytest.raises(DataError, match="first dimension is not the batch"):
        build_bases(_SequenceFirst().eval(), x, ["inner", "output"], progress=False)


def test_data_of_the_wrong_width_name_the_layer_and_the_batch() -> None:
    """Input width 5 into Linear(3): our error names the batch, the failing module and the
    width it expects, for one batch and for a later batch of a mixed-width list."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    wide = torch.randn(10, 5, dtype=torch.float64)
    pattern = r"batch {} \(input shape \(10, 5\)\) inside module '0' \(Linear\), which expects 3"
    with pytest.raises(DataError, match=pattern.format(0)):
        build_bases(net, wide, ["0", "2"], progress=False)
    with pytest.raises(DataError, match=pattern.format(1)):
        build_bases(net, [X[:10], wide], ["0", "2"], progress=False)
    inner = nn.Sequential(nn.Linear(5, 3), nn.Sequential(nn.ReLU(), nn.Linear(4, 2))).double()
    with pytest.raises(DataError, match=r"inside module '1.1' \(Linear\), which expects 4"):
        build_bases(inner.eval(), wide, ["0", "output"], progress=False)
