"""JVP of node functions along parameter directions, read in the interaction basis (issue 12)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import interbasis as ib
from interbasis.curvature import ParamLayout
from interbasis.errors import DataError, ShapeError
from interbasis.links import (
    find_graph_stages,
    node_function_jvps,
    node_functions,
    node_pair_direction,
    split_directions,
    stage_transitions,
)
from interbasis.links.jvp import float64_copy

# Node layers: "2" (post-tanh h1), "3" (pre-activations W2 h1 + b2), "4" (post-tanh h2), output.
LAYERS = ["0", "2", "3", "4", "output"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, list[ib.Basis]]:
    """A well-conditioned tanh MLP 3-6-6-2 (every Λ far above the truncation floor)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2)
    ).double()
    x = torch.randn(400, 3, dtype=torch.float64)
    bases = ib.build_bases(net.eval(), x, LAYERS, progress=False)
    return net, x, bases


def test_weight_between_two_nodes_changes_only_the_out_node(mlp) -> None:
    """Issue 12 test 2: the direction built through C^l and C^{l+1} moves node i alone."""
    net, x, bases = mlp
    by = {b.name: b for b in bases}
    (stage, *_), _ = find_graph_stages(net, x, LAYERS)
    assert (stage.input, stage.output) == ("2", "3")
    layout = ParamLayout.from_model(net)
    b_in, b_out = by["2"], by["3"]
    assert b_in.n_nodes >= 4 and b_out.n_nodes >= 4
    for i, j in [(1, 1), (3, 2), (2, 0), (b_out.n_nodes - 1, b_in.n_nodes - 1)]:
        v = node_pair_direction(net, stage, b_in, b_out, i, j, layout)
        assert float(v[layout.slices["0.weight"]].abs().max()) == 0.0  # other layers untouched
        delta = node_function_jvps(net, x, bases, v, layout).deltas["3"][0]  # (N, n)
        rms = delta.pow(2).mean(dim=0).sqrt()
        others = torch.cat([rms[:i], rms[i + 1 :]])
        # 1e-8 relative (the bound); round-off of the float64 bases is ~1e-14
        assert float(others.max()) < 1e-8 * float(rms[i]), (i, j, rms)
        # and node i changes exactly by f_hat_j (the weight is 1): delta f_hat_i = f_hat_j
        f_in = node_functions(net, x, bases)["2"][:, j]
        torch.testing.assert_close(delta[:, i], f_in, rtol=1e-9, atol=1e-12)


def test_transition_of_the_pair_direction_is_a_unit_matrix(mlp) -> None:
    """Closed form: delta T = C^l_pinv delta W^T C^{l+1} = e_j e_i^T."""
    net, x, bases = mlp
    (stage, *_), _ = find_graph_stages(net, x, LAYERS)
    layout = ParamLayout.from_model(net)
    v = node_pair_direction(net, stage, bases[1], bases[2], 2, 3, layout)
    T = stage_transitions(float64_copy(net), stage, bases[1], bases[2], split_directions(layout, v))
    want = torch.zeros_like(T[0])
    want[3, 2] = 1.0
    torch.testing.assert_close(T[0], want, rtol=0, atol=1e-10)


def test_jvp_matches_central_differences(mlp) -> None:
    """delta f_hat = lim (f_hat(theta + h v) - f_hat(theta - h v)) / 2h, error O(h^2)."""
    net, x, bases = mlp
    layout = ParamLayout.from_model(net)
    v = torch.randn(2, layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jv = node_function_jvps(net, x[:64], bases, v, layout)
    theta = layout.gather(net)
    errors = []
    for h in (1e-3, 5e-4):
        moved = []
        for sign in (1.0, -1.0):
            other = float64_copy(net)
            named = dict(other.named_parameters())
            with torch.no_grad():
                for name, t in layout.unflatten(theta + sign * h * v[0]).items():
                    named[name].copy_(t)
            moved.append(node_functions(other, x[:64], bases))
        fd = {n: (moved[0][n] - moved[1][n]) / (2 * h) for n in jv.deltas}
        errors.append(max(float((fd[n] - jv.deltas[n][0]).abs().max()) for n in fd))
    assert errors[0] < 1e-4
    assert 3.0 < errors[0] / errors[1] < 5.0  # halving h quarters the error: order 2


def test_constant_node_never_moves_and_shapes(mlp) -> None:
    net, x, bases = mlp
    layout = ParamLayout.from_model(net)
    v = torch.randn(3, layout.size, dtype=torch.float64)
    jv = node_function_jvps(net, x, bases, v, layout, batch_size=57)  # uneven batches
    for b in bases:
        d = jv.deltas[b.name]
        assert d.shape == (3, 400, b.n_nodes)
        if b.has_constant:
            assert float(d[..., 0].abs().max()) == 0.0
    whole = node_function_jvps(net, x, bases, v, layout)
    for n in jv.deltas:
        torch.testing.assert_close(jv.deltas[n], whole.deltas[n], rtol=1e-12, atol=1e-15)


def test_bad_directions_and_layouts(mlp) -> None:
    net, x, bases = mlp
    layout = ParamLayout.from_model(net)
    with pytest.raises(ShapeError, match=f"\\(k, {layout.size}\\)"):
        node_function_jvps(net, x, bases, torch.zeros(layout.size + 1), layout)
    bad = torch.zeros(layout.size)
    bad[0] = float("nan")
    with pytest.raises(ib.NonFiniteError):
        node_function_jvps(net, x, bases, bad, layout)
    other = ParamLayout(("nope.weight",), (torch.Size([2, 2]),))
    with pytest.raises(DataError, match="nope.weight"):
        node_function_jvps(net, x, bases, torch.zeros(4), other)
    (stage, *_), _ = find_graph_stages(net, x, LAYERS)
    with pytest.raises(DataError, match="got the bases of"):
        node_pair_direction(net, stage, bases[2], bases[3], 1, 1, layout)


def test_stage_detection_names_what_is_not_a_stage(mlp) -> None:
    net, x, _ = mlp
    stages, notes = find_graph_stages(net, x, LAYERS)
    assert [(s.input, s.output) for s in stages] == [("2", "3"), ("4", "output")]
    assert stages[0].params == ("2.weight", "2.bias")
    assert any("'0'" in n and "not the input of '2'" in n for n in notes)
