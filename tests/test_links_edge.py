"""Parameter directions ↔ graph: node movement, Fourier labels and match (issue 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import interbasis as ib
from interbasis.curvature import ParamLayout
from interbasis.errors import DataError
from interbasis.links import (
    FourierGrid,
    edge_graph_links,
    find_graph_stages,
    key_classes,
    key_frequencies,
    node_pair_direction,
)

P = 11


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _grid(p: int = P) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def test_key_frequencies_closed_forms() -> None:
    a, b = _grid()
    w = 2 * math.pi / P
    fns = np.stack(
        [
            np.cos(w * 3 * (a + b)),  # a function of a + b at k = 3
            np.sin(w * 2 * (a - b)) + 0.1,  # of a - b at k = 2 (the constant is ignored)
            np.cos(w * 4 * a),  # of a alone at k = 4
            np.cos(w * (3 * a + 5 * b)),  # a mixed class: no key frequency
            np.cos(w * 1 * (a + b)) + 0.5 * np.cos(w * 5 * b),  # k = 1 dominates (0.8)
            np.full(P * P, 2.0),  # constant
        ],
        axis=1,
    ).reshape(P, P, -1)
    freq, share = key_frequencies(fns)
    assert freq.tolist() == [3, 2, 4, 0, 1, 0]
    np.testing.assert_allclose(share[:3], 1.0, rtol=1e-12)
    assert share[3] < 1e-12 and share[5] == 0.0
    assert share[4] == pytest.approx(1 / 1.25, rel=1e-12)  # powers 1 : 0.25
    keys = key_classes(P)
    assert keys[0, 0] == 0 and keys[3, 3] == 3 and keys[3, P - 3] == 3 and keys[3, 5] == -1


class FourierFeatures(nn.Module):
    """Tokens ``(a, b)`` -> fixed features of key frequencies 1, 2 (of a + b) and 3 (of a)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a, b = tokens[:, 0].double(), tokens[:, 1].double()
        w = 2 * math.pi / P
        return torch.stack(
            [3 * torch.cos(w * (a + b)), 2 * torch.cos(2 * w * (a + b)), torch.cos(3 * w * a)], 1
        )


@pytest.fixture(scope="module")
def fourier_net():
    net = nn.Sequential(FourierFeatures(), nn.Linear(3, 3), nn.Linear(3, 3)).double().eval()
    with torch.no_grad():
        for lin in (net[1], net[2]):
            lin.weight.copy_(torch.eye(3))
            lin.bias.zero_()
    a, b = _grid()
    tokens = torch.tensor(np.stack([a, b], axis=1))
    layers = ["1", "2", "output"]
    bases = ib.build_bases(net, tokens, layers, progress=False)
    return net, tokens, bases, FourierGrid(a, b, P)


def test_node_labels_and_the_match_of_a_planted_weight(fourier_net) -> None:
    """The weight from the frequency-j node to node i moves node i with frequency k_j.

    The three features are uncorrelated on the full grid with variances 9/2, 2, 1/2, so every
    basis keeps them apart, node 1, 2, 3 = key frequency 1, 2, 3. The change at layer "2" has
    the in-node's frequency: ``match = 1`` when it lands on a node of the same label.
    """
    net, tokens, bases, grid = fourier_net
    (stage, *_), _ = find_graph_stages(net, tokens, ["1", "2", "output"])
    layout = ParamLayout.from_model(net)
    dirs = torch.stack(
        [node_pair_direction(net, stage, bases[0], bases[1], i, j, layout) for i, j in
         [(1, 1), (1, 2), (3, 3)]]
    )  # fmt: skip
    member = {"2:1": 0, "2:2": 1, "2:3": 1}
    el = edge_graph_links(net, tokens, bases, dirs, layout, member, grid=grid)
    assert el.labels["1"].tolist() == [0, 1, 2, 3] and el.labels["2"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(el.label_shares["2"][1:], 1.0, rtol=1e-12)
    assert el.mode_frequency["2"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(el.match["2"], [1.0, 0.0, 1.0], atol=1e-12)
    mv = el.moved["2"]
    for r, i in enumerate([1, 1, 3]):
        others = np.delete(mv[r], i)
        assert others.max() < 1e-20 and mv[r, i] > 0
        assert el.top_nodes[r][0][0] in {f"2:{i}", f"output:{i - 1}"}
    # module movement: layer "2" node 1 is module 0, nodes 2-3 module 1; output unassigned
    assert el.module_moved[0, 0] == pytest.approx(mv[0, 1], rel=1e-12)
    assert el.module_moved[2, 1] == pytest.approx(mv[2, 3], rel=1e-12)
    total = sum(el.moved[n].sum(axis=1) for n in el.moved)
    np.testing.assert_allclose(el.module_moved.sum(axis=1) + el.unassigned_moved, total)


def test_bad_grid(fourier_net) -> None:
    net, tokens, bases, grid = fourier_net
    layout = ParamLayout.from_model(net)
    v = torch.ones(1, layout.size, dtype=torch.float64)
    with pytest.raises(DataError, match="different number of rows"):
        edge_graph_links(net, tokens[:50], bases, v, layout, grid=grid)
    column = FourierGrid(np.zeros_like(grid.a), grid.b, P)  # every pair claims a = 0
    with pytest.raises(DataError, match="full"):
        edge_graph_links(net, tokens, bases, v, layout, grid=column)
