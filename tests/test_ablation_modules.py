"""interbasis.ablation.module_ablation on two-task networks (issue 20, test 4)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch

import interbasis as ib
from experiments.modules_two_tasks import mixed_disconnected_net, node_layers
from experiments.tasks import two_tasks
from graphs import find_modules
from interbasis.ablation import module_ablation
from interbasis.ablation.modules import module_nodes

pytestmark = pytest.mark.usefixtures("one_thread")
CHANCE = 0.05  # R² of a constant prediction is <= 0; allow round-off and a little leakage
KEPT = 0.01  # "leaves task B within 1 %"
GROUPS = {"A": [0], "B": [1]}


def isolates(values: np.ndarray, baseline: np.ndarray, broken: int) -> bool:
    """Whether a module's row breaks task ``broken`` and keeps the other within 1 %."""
    other = 1 - broken
    return bool(values[broken] <= CHANCE and values[other] >= baseline[other] - KEPT)


def ablate(seed: int, kind: Literal["interaction", "pca", "neuron"]):
    net = mixed_disconnected_net(3, 2, seed)
    x = two_tasks(grid_size=16, dtype=torch.float64).inputs
    names = node_layers(2)
    bases = ib.build_bases(net, x, names, basis=kind, progress=False)
    graph = ib.build_graph(net, x, names, basis=kind, bases=bases, progress=False)
    partition = find_modules(graph, method="spectral", n_modules=2)
    return module_ablation(net, x, graph, partition, "r2", bases=bases, groups=GROUPS), graph


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interaction_modules_are_task_units(seed):
    res, _ = ablate(seed, "interaction")
    assert res.baseline == pytest.approx([1.0, 1.0])  # r2 against the clean outputs
    for task in (0, 1):
        assert any(isolates(row, res.baseline, task) for row in res.values), (seed, task)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_neuron_module_is_a_task_unit(seed):
    res, _ = ablate(seed, "neuron")
    for row in res.values:
        assert not isolates(row, res.baseline, 0) and not isolates(row, res.baseline, 1)


def test_module_nodes_skip_output_and_unassigned():
    res, graph = ablate(0, "interaction")
    membership = {f"{graph.layers[0].name}:1": 0, "output:0": 0, f"{graph.layers[1].name}:2": -1}
    assert module_nodes(graph, membership) == {0: {graph.layers[0].name: [1]}}
    for per_layer in res.ablated_nodes.values():
        assert "output" not in per_layer
    with pytest.raises(ib.ShapeError, match="not in the graph"):
        module_nodes(graph, {"nope:1": 0})
