"""interbasis.ablation: node-direction ablation curves (issue 20, tests 1 and 2)."""

from __future__ import annotations

import itertools
from typing import Literal

import pytest
import torch
from nets import PositionMixer, mlp
from torch import nn

import interbasis as ib
from interbasis.ablation import DirectionAblation, ablation_curve, importance_order
from interbasis.capture import capture, resolve_node_layers, run_section

pytestmark = pytest.mark.usefixtures("one_thread")

EXACT = 1e-10  # float64 forward passes of the same numbers: round-off only


def max_dev(out: torch.Tensor, target: torch.Tensor | None, clean: torch.Tensor) -> torch.Tensor:
    """Per-sample max |out - target| (target = clean outputs when none are given)."""
    ref = clean if target is None else target
    return (out - ref).abs().reshape(out.shape[0], -1).amax(1)


@pytest.fixture(scope="module")
def net_data() -> tuple[nn.Module, torch.Tensor, list[str]]:
    # widths never shrink, so no basis is truncated (M and the Grams have full rank)
    g = torch.Generator().manual_seed(3)
    return mlp([3, 5, 5, 6], seed=2), torch.randn(256, 3, generator=g, dtype=torch.float64), [
        "0", "2", "4", "output",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["interaction", "pca", "neuron"])
def test_zero_directions_is_exact(net_data, kind):
    net, x, names = net_data
    bases = ib.build_bases(net, x, names, basis=kind, progress=False)
    for truncated in ("keep", "drop"):
        curve = ablation_curve(
            net, x, bases, names[:-1], [0], max_dev, jointly=True, truncated=truncated,
            mode="mean",
        )  # fmt: skip
        assert curve.values["joint"][0] < EXACT
        assert curve.n_ablated == {n: [0] for n in names[:-1]}


def mean_input_output(net: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    mods = resolve_node_layers(net, [name])
    acts, layouts = capture(net, x, mods)
    value = acts[name].mean(0, keepdim=True).expand_as(acts[name])
    module = mods[name]
    assert module is not None
    with torch.no_grad():
        return run_section(net, x, (name, module), value, layouts[name], ("output", None))


@pytest.mark.parametrize("kind", ["interaction", "pca", "neuron"])
def test_all_directions_ablated_is_mean_input(net_data, kind):
    net, x, names = net_data
    bases = ib.build_bases(net, x, names, basis=kind, progress=False)
    for name, b in zip(names[:-1], bases, strict=False):
        expected = mean_input_output(net, x, name)
        k = b.n_nodes - 1
        mode: Literal["zero", "mean"] = (
            "mean" if kind == "neuron" else "zero"
        )  # centred bases: zero = mean
        curve = ablation_curve(net, (x, expected), bases, name, [k], max_dev, mode=mode)
        assert curve.n_kept[name] == [0]
        assert curve.values[name][0] < EXACT, (kind, name)
        # ... and ablating all but one direction does not give the mean-input output
        part = ablation_curve(net, (x, expected), bases, name, [k - 1], max_dev, mode=mode)
        assert part.values[name][0] > 1e-3


def test_neuron_zero_mode_sets_neurons_to_zero(net_data):
    net, x, names = net_data
    b = ib.build_bases(net, x, names, basis="neuron", progress=False)[1]
    acts = torch.randn(7, b.dim, dtype=torch.float64)
    out = DirectionAblation(b, [1, 3], "zero")(acts)
    assert torch.equal(out[:, [0, 2]], torch.zeros(7, 2, dtype=torch.float64))
    assert torch.equal(out[:, [1, 3, 4]], acts[:, [1, 3, 4]])
    out = DirectionAblation(b, [1], "mean")(acts)
    assert torch.allclose(out[:, 0], b.mean[0].expand(7))


def deep_linear(widths: list[int], seed: int, last: torch.Tensor | None = None) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(widths):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) / a**0.5)
            lin.bias.copy_(torch.randn(b, generator=g, dtype=torch.float64))
        layers.append(lin)
    if last is not None:
        with torch.no_grad():
            layers[-1].weight.copy_(last)
    return nn.Sequential(*layers).eval()


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 0.5


def test_deep_linear_closed_form_interaction():
    """mse after ablating the n smallest-Λ directions = sum of those Λ.

    Normalisation: ``mse = (1/N) sum_x sum_k (out_k - clean_k)^2`` (output units summed,
    samples averaged), as the Grams (``/N``); global scope so that M is taken with respect to
    the output's (neuron-basis) functions.
    """
    net = deep_linear([4, 6, 6, 7], seed=0)
    x = correlated_inputs(512, 4, seed=1)
    names = ["1", "2", "output"]
    bases = ib.build_bases(net, x, names, scope="global", progress=False)
    for b in bases[:-1]:
        lam = b.eigenvalues[importance_order(b)]  # descending, constant excluded
        counts = list(range(lam.numel() + 1))
        curve = ablation_curve(net, x, bases, b.name, counts, "mse")
        expected = [float(lam[lam.numel() - n :].sum()) if n else 0.0 for n in counts]
        assert curve.values[b.name] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_deep_linear_closed_form_pca():
    """With an orthogonal last map the output mse is the sum of the ablated PCA variances."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(4),
                                       dtype=torch.float64))  # fmt: skip
    net = deep_linear([4, 6, 6], seed=2, last=q)
    x = correlated_inputs(512, 4, seed=3)
    bases = ib.build_bases(net, x, ["1", "output"], basis="pca", progress=False)
    b = bases[0]
    var = b.eigenvalues[importance_order(b)]
    counts = list(range(var.numel() + 1))
    curve = ablation_curve(net, x, bases, "1", counts, "mse")
    expected = [float(var[var.numel() - n :].sum()) if n else 0.0 for n in counts]
    assert curve.values["1"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # all neurons mean-ablated = all PCA directions ablated: the total variance (trace)
    nb = ib.build_bases(net, x, ["1", "output"], basis="neuron", progress=False)
    total = ablation_curve(net, x, nb, "1", [6], "mse", mode="mean").values["1"][0]
    assert total == pytest.approx(float(var.sum()), rel=1e-9)


def test_counts_kept_and_clamped(net_data):
    net, x, names = net_data
    bases = ib.build_bases(net, x, names, progress=False)
    curve = ablation_curve(net, x, bases, ["0", "2"], [0, 2, 99], "mse", count="kept")
    assert curve.n_kept == {"0": [0, 2, 3], "2": [0, 2, 5]}
    assert curve.n_ablated == {"0": [3, 1, 0], "2": [5, 3, 0]}
    assert curve.values["0"][2] == 0.0 and curve.values["0"][0] > 0
    rows = curve.rows()
    assert len(rows) == 6 and {r["layer"] for r in rows} == {"0", "2"}


def test_transformer_like_positions():
    """Node layers with a position dimension: zero ablation exact, full ablation = mean."""
    net = PositionMixer().eval()
    x = torch.randn(64, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    names = ["first", "second", "output"]
    bases = ib.build_bases(net, x, names, basis="pca", progress=False)
    curve = ablation_curve(net, x, bases, ["first", "second"], [0], max_dev, jointly=True)
    assert curve.values["joint"][0] < EXACT
    k = bases[1].n_nodes - 1
    mean = bases[1].mean  # the basis mean is over samples and positions
    mods = resolve_node_layers(net, ["second"])
    acts, layouts = capture(net, x, mods)
    module = mods["second"]
    assert module is not None
    with torch.no_grad():
        expected = run_section(net, x, ("second", module), mean.expand_as(acts["second"]),
                               layouts["second"], ("output", None))  # fmt: skip
    curve = ablation_curve(net, (x, expected), bases, "second", [k], max_dev)
    assert curve.values["second"][0] < EXACT


def test_bad_arguments(net_data):
    net, x, names = net_data
    bases = ib.build_bases(net, x, names, progress=False)
    with pytest.raises(ValueError, match="metric"):
        ablation_curve(net, x, bases, "0", [1], "nope")
    with pytest.raises(ValueError, match="counts"):
        ablation_curve(net, x, bases, "0", [-1], "mse")
    with pytest.raises(ValueError, match="mode"):
        ablation_curve(net, x, bases, "0", [1], "mse", mode="median")  # type: ignore[arg-type]
    with pytest.raises(ib.NodeLayerError, match="output"):
        ablation_curve(net, x, bases, "output", [1], "mse")
    with pytest.raises(ib.ShapeError, match="no basis"):
        ablation_curve(net, x, bases[:1], "2", [1], "mse")
    with pytest.raises(ib.DataError, match="targets"):
        ablation_curve(net, x, bases, "0", [1], "loss")
    with pytest.raises(ib.NodeLayerError, match="unknown node layer"):
        ablation_curve(net, x, {"nope": bases[0]}, "nope", [1], "mse")
