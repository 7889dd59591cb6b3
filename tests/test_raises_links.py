"""Bad inputs to interbasis.links (atlas and CLI aside): our exception type, a message that
names the offending argument, layer, parameter, shape or file. One row per check (issue 19)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nets import mlp
from torch import nn

import interbasis as ib
from interbasis.curvature import ParamLayout
from interbasis.errors import DataError, FormatError, NonFiniteError, ShapeError
from interbasis.links import (
    GraphStage,
    edge_graph_links,
    find_graph_stages,
    graph_dlr,
    hessian_eigenpairs,
    key_frequencies,
    load_series,
    mechanism_directions,
    node_function_jvps,
    node_pair_direction,
    second_moments,
    split_directions,
    stage_transitions,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

LAYERS = ["2", "output"]


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """A tanh MLP 3-6-2 whose last Linear has no bias, its bases and parameter layout."""
    net = mlp([3, 6, 2], bias=False)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bases = ib.build_bases(net, x, ["0", *LAYERS], progress=False)
    layout = ParamLayout.from_model(net)
    return {"net": net, "x": x, "bases": bases, "layout": layout}


class Spare(nn.Module):
    """An MLP with a module its forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.spare = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class PairLinear(nn.Linear):
    """A Linear layer that returns its output twice."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        y = super().forward(x)
        return y, y


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = PairLinear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)[0])


def _dirs(layout: ParamLayout, k: int = 2) -> torch.Tensor:
    return torch.randn(k, layout.size, generator=torch.Generator().manual_seed(1)).double()


def _not_reached(s: dict[str, Any]) -> Any:
    net = Spare().double().eval()
    basis = dataclasses.replace(s["bases"][0], name="spare")
    layout = ParamLayout.from_model(net)
    return node_function_jvps(net, s["x"], [basis], _dirs(layout), layout)


def _layout_shape(s: dict[str, Any]) -> Any:
    layout = ParamLayout(("0.weight",), (torch.Size([2, 2]),))
    return node_function_jvps(s["net"], s["x"], s["bases"], torch.ones(4), layout)


def _basis_width(s: dict[str, Any]) -> Any:
    wrong = dataclasses.replace(s["bases"][0], name="2")  # a width-3 basis on a width-6 layer
    return node_function_jvps(s["net"], s["x"], [wrong], _dirs(s["layout"]), s["layout"])


def _nan_jvp(s: dict[str, Any]) -> Any:
    x = s["x"].clone()
    x[3, 1] = float("nan")
    return node_function_jvps(s["net"], x, s["bases"][1:], _dirs(s["layout"]), s["layout"])


def _tuple_stage(s: dict[str, Any]) -> Any:
    net = TupleNet().double().eval()
    stage = GraphStage("a", "b", ("a.weight", "a.bias"))
    bases = ib.build_bases(net, s["x"], ["a", "b", "output"], progress=False)
    layout = ParamLayout.from_model(net, ["a.weight", "a.bias"])
    tangents = split_directions(layout, _dirs(layout))
    return stage_transitions(net, stage, bases[0], bases[1], tangents)


def _wrong_bases_for_stage(s: dict[str, Any]) -> Any:
    stage = GraphStage("2", "output", ("2.weight",))
    tangents = split_directions(s["layout"], _dirs(s["layout"]))
    return stage_transitions(s["net"], stage, s["bases"][0], s["bases"][2], tangents)


def _gram_shape(s: dict[str, Any]) -> Any:
    return second_moments(s["bases"][1], torch.eye(3, dtype=torch.float64))


def _no_bias_for_constant(s: dict[str, Any]) -> Any:
    stage = GraphStage("2", "output", ("2.weight",))
    b_in, b_out = s["bases"][1], s["bases"][2]
    assert b_in.has_constant
    return node_pair_direction(s["net"], stage, b_in, b_out, 1, 0, s["layout"])


def _layout_without_stage(s: dict[str, Any]) -> Any:
    net = mlp([3, 4, 2], act=nn.ReLU)
    layout = ParamLayout.from_model(net, ["2.weight", "2.bias"])
    return mechanism_directions(net, s["x"], layout)


def _edge(s: dict[str, Any], **kw: Any) -> Any:
    return edge_graph_links(s["net"], s["x"], s["bases"], _dirs(s["layout"]), s["layout"], **kw)


CASES: list[tuple[str, Callable[[dict[str, Any]], Any], type[Exception], str]] = [
    # jvp.py
    (
        "layer-not-reached",
        _not_reached,
        DataError,
        r"node layers \['spare'\] were not reached in the forward pass",
    ),
    (
        "layout-shape",
        _layout_shape,
        ShapeError,
        r"parameter '0.weight' has shape \(6, 3\) in the model but \(2, 2\) in the layout",
    ),
    (
        "basis-width",
        _basis_width,
        ShapeError,
        "node layer '2': activations have width 6, the basis expects 3",
    ),
    ("jvp-nan", _nan_jvp, NonFiniteError, "node layer '2': the JVP .* NaN/Inf entries"),
    # stages.py
    (
        "stage-returns-tuple",
        _tuple_stage,
        DataError,
        "module PairLinear returns tuple, not a tensor",
    ),
    ("stage-bases", _wrong_bases_for_stage, DataError, "stage 2 -> output got the bases of 0"),
    (
        "gram-shape",
        _gram_shape,
        ShapeError,
        r"gram of '2' must be \(7, 7\) \(bias-folded.*got \(3, 3\)",
    ),
    (
        "pair-direction-unreachable",
        _no_bias_for_constant,
        DataError,
        r"no parameter change of \['2.weight'\] gives the weight 0 -> 1 alone",
    ),
    # edge.py
    (
        "key-frequencies-2d",
        lambda s: key_frequencies(np.zeros((5, 5))),
        ShapeError,
        r"grid must have shape \(p, p, ..., n\).*got \(5, 5\)",
    ),
    ("edge-top", lambda s: _edge(s, top=0), DataError, "top must be an int >= 1, got 0"),
    # dlr.py, hessian.py
    (
        "graph_dlr-mode",
        lambda s: graph_dlr(s["net"], s["x"], s["bases"], mode="cka"),  # type: ignore[arg-type]
        DataError,
        "mode must be 'gram' or 'projection', got 'cka'",
    ),
    (
        "eigenpairs-k",
        lambda s: hessian_eigenpairs(s["net"], nn.MSELoss(), (s["x"], s["x"][:, :2]), k=0),
        DataError,
        "k must be an int >= 1, got 0",
    ),
    # nullspace.py
    (
        "layout-without-stage",
        _layout_without_stage,
        DataError,
        "parameter '0.weight' of stage 0 is not in the layout",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_our_error_naming_it(setup, call, error, match) -> None:
    with pytest.raises(error, match=match):
        call(setup)


def test_a_module_returning_a_tuple_is_noted_as_no_stage(setup) -> None:
    net = TupleNet().double().eval()
    stages, notes = find_graph_stages(net, setup["x"], ["a", "b", "output"])
    assert [(s.input, s.output) for s in stages] == [("b", "output")]
    assert len(notes) == 1 and "module PairLinear returns tuple, not a tensor" in notes[0]


def test_a_checkpoint_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save([1, 2, 3], folder / "step_0000001.pt")
    with pytest.raises(FormatError, match=r"step_0000001.pt holds no state dict .*\(a list\)"):
        load_series(tmp_path)
