"""interbasis.ablation: every bad argument gives our own error naming it (issue 19)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from nets import mlp

import interbasis as ib
from interbasis.ablation import (
    DirectionAblation,
    ablation_curve,
    edge_ablation,
    edges_needed,
    module_ablation,
)
from interbasis.ablation.directions import least_important
from interbasis.ablation.forward import Forward
from interbasis.capture import OUTPUT
from interbasis.errors import DataError, NodeLayerError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["0", "2", "4", OUTPUT]


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    net = mlp([3, 5, 5, 4], seed=2)
    x = torch.randn(48, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    bases = ib.build_bases(net, x, NAMES, progress=False)
    graph = ib.build_graph(net, x, NAMES, bases=bases, progress=False)
    return {"net": net, "x": x, "bases": bases, "graph": graph}


def _curve(**overrides: Any) -> Callable[[dict[str, Any]], object]:
    def call(b: dict[str, Any]) -> object:
        kwargs: dict[str, Any] = {
            "model": b["net"], "data": b["x"], "bases": b["bases"], "node_layer": "2",
            "counts": [1], "metric": "mse",
        }  # fmt: skip
        kwargs.update({k: v(b) if callable(v) and k == "data" else v for k, v in overrides.items()})
        return ablation_curve(**kwargs)

    return call


def _labels(b: dict[str, Any], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return b["x"], torch.zeros(b["x"].shape[0], width, dtype=torch.long)


CURVE_CASES = [
    ("model", _curve(model="net"), DataError, r"model must be a torch.nn.Module, got str"),
    ("dtype-int", _curve(dtype=torch.int64), DataError, r"dtype must be a floating.*torch.int64"),
    ("dtype-str", _curve(dtype="float64"), DataError, r"dtype must be a floating.*'float64'"),
    ("batch-size", _curve(batch_size=0), DataError, r"batch_size must be a positive .* got 0"),
    ("batch-size-bool", _curve(batch_size=True), DataError, r"batch_size .* got True"),
    ("empty-batch", _curve(data=lambda b: [b["x"][:0]]), DataError,
     r"batch 0: the model input must be a non-empty tensor, got \(0, 3\)"),
    ("not-tensor-batch", _curve(data=lambda b: [("abc",)]), DataError,
     r"batch 0: the model input must be a non-empty tensor, got str"),
    ("targets-rows", _curve(data=lambda b: (b["x"], b["x"][:5])), DataError,
     r"batch 0: targets must be a tensor with one row per input \(48\)"),
    ("no-batches", _curve(data=lambda b: []), DataError, r"data holds no batches"),
    ("mapping-data", _curve(data=lambda b: {"input_ids": b["x"]}), DataError,
     r"keyword inputs .*'input_ids'"),
    ("bases-dict-value", _curve(bases={"2": "basis"}), DataError,
     r"basis of '2' is a str, not a Basis"),
    ("bases-none", _curve(bases=None), DataError, r"bases must be a list of Basis .* NoneType"),
    ("counts-int", _curve(counts=3), DataError, r"counts must be a non-empty sequence .* 3"),
    ("counts-empty", _curve(counts=[]), DataError, r"counts must be a non-empty sequence"),
    ("counts-negative", _curve(counts=[2, -1]), DataError, r"counts must be integers >= 0, got -1"),
    ("counts-bool", _curve(counts=[True]), DataError, r"counts must be integers >= 0, got True"),
    ("node-layer-empty", _curve(node_layer=[]), NodeLayerError, r"node_layer is empty"),
    ("node-layer-output", _curve(node_layer=[OUTPUT]), NodeLayerError,
     r'"output" cannot be ablated'),
    ("count-kind", _curve(count="removed"), DataError, r"count must be .* got 'removed'"),
    ("mode", _curve(mode="median"), DataError, r"mode must be .* got 'median'"),
    ("truncated", _curve(truncated="cut"), DataError, r"truncated must be .* got 'cut'"),
    ("metric-name", _curve(metric="f1"), DataError, r"metric must be one of .* got 'f1'"),
    ("metric-callable-shape", _curve(metric=lambda out, t, clean: out.sum()), DataError,
     r"metric callable must return one value per sample, shape \(48,\); got shape \(\)"),
    ("accuracy-labels", _curve(metric="accuracy", data=lambda b: _labels(b, 2)), DataError,
     r'"accuracy" needs one class label per sample: targets have shape \(48, 2\)'),
    ("r2-targets", _curve(metric="r2", data=lambda b: (b["x"], b["x"][:, :1].repeat(1, 7))),
     DataError, r'"r2" needs targets shaped like the outputs: \(48, 7\) vs \(48, 4\)'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CURVE_CASES], ids=[c[0] for c in CURVE_CASES]
)
def test_ablation_curve_bad_arguments(built, call, error, match):
    with pytest.raises(error, match=match):
        call(built)


def test_bases_list_with_a_non_basis(built):
    with pytest.raises(DataError, match=r"bases\[1\] is a str, not a Basis"):
        ablation_curve(built["net"], built["x"], [built["bases"][0], "b"], "2", [1])


def test_basis_of_another_width(built):
    # the basis of node layer "0" (width 3) handed in for "2" (width 5)
    with pytest.raises(ShapeError, match=r"basis of '2' has width 3 but the model's '2' input"):
        ablation_curve(built["net"], built["x"], {"2": built["bases"][0]}, "2", [1], "mse")


def test_least_important_and_constant_direction(built):
    basis = built["bases"][1]
    assert basis.has_constant
    k = basis.n_nodes - 1
    with pytest.raises(
        DataError, match=rf"node layer '2': cannot ablate {k + 1} directions; it has {k}"
    ):
        least_important(basis, k + 1)
    with pytest.raises(DataError, match=r"node layer '2': the constant direction 0 cannot be"):
        DirectionAblation(basis, [0, 1])


def test_forward_guards(built):
    fwd = Forward(built["net"], ["0", "2"])
    acts, layouts, _ = fwd.clean(built["x"])
    with pytest.raises(NodeLayerError, match="no node layer to substitute"):
        fwd.substituted(built["x"], acts, layouts, {})
    with pytest.raises(NodeLayerError, match='"output" cannot be substituted'):
        fwd.inject(built["x"], OUTPUT, acts["0"], layouts["0"], OUTPUT)


def _edges(**overrides: Any) -> Callable[[dict[str, Any]], object]:
    def call(b: dict[str, Any]) -> object:
        kwargs: dict[str, Any] = {"keep": 1, "bases": b["bases"], "metric": "mse"}
        kwargs.update(overrides)
        return edge_ablation(b["net"], b["x"], b["graph"], **kwargs)

    return call


def _needed(tolerance: Any) -> Callable[[dict[str, Any]], object]:
    return lambda b: edges_needed(b["net"], b["x"], b["graph"], tolerance, bases=b["bases"])


EDGE_CASES = [
    ("section-index", _edges(section=3), r"section index 3 out of range 0..2"),
    ("section-name", _edges(section="output"), r"section 'output' is not an input layer"),
    ("section-float", _edges(section=1.5), r"section must be an int index.* got 1.5"),
    ("section-bool", _edges(section=True), r"section must be an int index.* got True"),
    ("keep-empty", _edges(keep=[]), r"keep is empty"),
    ("keep-none", _edges(keep=None), r"keep must be an int or a sequence of ints, got None"),
    ("keep-float", _edges(keep=[1, 2.5]), r"keep must be an integer >= 0, got 2.5"),
    ("keep-negative", _edges(keep=-1), r"keep must be an integer >= 0, got -1"),
    ("max-rows", _edges(max_rows=0), r"max_rows must be an int >= 1, got 0"),
    ("tolerance-negative", _needed(-0.1), r"tolerance must be a number >= 0, got -0.1"),
    ("tolerance-str", _needed("small"), r"tolerance must be a number >= 0, got 'small'"),
    ("tolerance-nan", _needed(float("nan")), r"tolerance must be a number >= 0, got nan"),
]


@pytest.mark.parametrize(
    ("call", "match"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_edge_ablation_bad_arguments(built, call, match):
    with pytest.raises(DataError, match=match):
        call(built)


def test_edge_ablation_with_bases_of_another_graph(built):
    other = mlp([3, 4, 4, 4], seed=7)  # same layer names, narrower layers
    graph = ib.build_graph(other, built["x"], NAMES, progress=False)
    with pytest.raises(ShapeError, match=r"edges of '0' -> '2' have shape \(5, 4\) but the bases"):
        edge_ablation(built["net"], built["x"], graph, 1, bases=built["bases"], section=0)


def _modules(partition: Any = None, **kwargs: Any) -> Callable[[dict[str, Any]], object]:
    def call(b: dict[str, Any]) -> object:
        part = {"2:1": 0} if partition is None else partition
        return module_ablation(b["net"], b["x"], b["graph"], part, bases=b["bases"], **kwargs)

    return call


MODULE_CASES = [
    ("partition-type", _modules(partition=5), DataError,
     r"partition must be a graphs.Partition or a dict .* got int"),
    ("module-id", _modules(partition={"2:1": "a"}), DataError,
     r"module id of node '2:1' must be an int, got 'a'"),
    ("groups-empty", _modules(groups={}), DataError, r"groups is empty"),
    ("groups-type", _modules(groups=[0, 1]), DataError, r"groups must be a dict .* got list"),
    ("groups-columns", _modules(groups={"A": "01"}), DataError,
     r"groups\['A'\] must be a list of output column indices, got '01'"),
    ("node-index", _modules(partition={"2:99": 0}), ShapeError,
     r"partition node '2:99' is not in the graph: layer '2' has \d+ nodes"),
    ("node-id", _modules(partition={"2:x": 0}), ShapeError, r"partition node '2:x' is not in"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in MODULE_CASES], ids=[c[0] for c in MODULE_CASES]
)
def test_module_ablation_bad_arguments(built, call, error, match):
    with pytest.raises(error, match=match):
        call(built)
