"""The train-mode policy (interbasis.train_mode) in the richness, spectral-edge and links views.

For a tiny MLP with batch norm and one with dropout, both in train mode, every entry point that
runs a model must: by default warn once and give exactly the result of the same call on
``copy.deepcopy(model).eval()``; refuse the model with ``train_mode="error"``; refuse an
unknown ``train_mode``; and leave the caller's parameters, buffers (running statistics,
``num_batches_tracked``) and mode bit-identical.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import interbasis as ib
from interbasis.curvature import ParamLayout
from interbasis.errors import DataError
from interbasis.links import (
    edge_graph_links,
    find_graph_stages,
    graph_dlr,
    hessian_eigenpairs,
    hessian_graph_links,
    layer_activations,
    mechanism_directions,
    node_function_jvps,
    node_functions,
    node_pair_direction,
    split_directions,
    stage_transitions,
    summarize_model,
)
from interbasis.links.jvp import float64_copy
from interbasis.links.nullspace import behavioural_null_space
from interbasis.links.sections import (
    AtlasData,
    AtlasSettings,
    dlr_section,
    edge_section,
    hessian_section,
)
from interbasis.richness import RichnessTracker, collect_features
from interbasis.spectral_edge import ablate_directions, functional_mode, select_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

LAYERS = ["0", "3", "output"]
TRAIN_WARNING = "is in train mode; analysing its eval-mode function"


def _bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def _dropout_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 2))


KINDS = ("batchnorm", "dropout")


@pytest.fixture(scope="module")
def contexts() -> dict[str, dict[str, Any]]:
    """One context per model kind, built on first use (see :func:`_context`)."""
    return {}


def _ctx(contexts: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    if kind not in contexts:
        contexts[kind] = _context(kind)
    return contexts[kind]


@pytest.fixture(scope="module", params=KINDS)
def ctx(request: pytest.FixtureRequest, contexts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return _ctx(contexts, request.param)


def _context(kind: str) -> dict[str, Any]:
    """A float64 net in train mode (batch-norm statistics already moved) and what the views
    need, all built from an eval-mode copy."""
    torch.manual_seed(0)
    net = (_bn_net() if kind == "batchnorm" else _dropout_net()).double().train()
    x = torch.randn(64, 3, dtype=torch.float64)
    y = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            net(x + 0.5)  # running statistics away from their initial values
    ref = copy.deepcopy(net).eval()
    bases = ib.build_bases(ref, x, LAYERS, progress=False)
    layout = ParamLayout.from_model(ref)
    pairs, _ = hessian_eigenpairs(ref, nn.MSELoss(), (x, y), k=3)
    stages, _ = find_graph_stages(ref, x, LAYERS)
    assert [(s.input, s.output) for s in stages] == [("3", "output")]
    edge_layout = select_parameters(ref, r"^0\.weight$")
    return {
        "kind": kind,
        "net": net,
        "x": x,
        "y": y,
        "bases": bases,
        "layout": layout,
        "dirs": torch.randn(2, layout.size, dtype=torch.float64),
        "pairs": pairs,
        "stage": stages[0],
        "edge_layout": edge_layout,
        "edge_dirs": torch.randn(2, edge_layout.size, dtype=torch.float64),
        "membership": {"3:1": 0, "3:2": 0, "output:1": 0, "output:2": 1},
    }


def _tracker(c: dict[str, Any], model: nn.Module, **kw: Any) -> list[dict[str, float]]:
    labels = c["y"].argmax(dim=1)
    tracker = RichnessTracker({"x": (c["x"], labels)}, feature_module="3", every=1, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: a step changes nothing
    tracker.on_train_begin(model, opt)
    tracker.on_step(1, model, opt, (c["x"], c["y"]))
    return tracker.history


def _ablate(c: dict[str, Any], model: nn.Module, **kw: Any) -> Any:
    x = c["x"]
    return ablate_directions(
        model,
        c["edge_layout"],
        c["edge_dirs"][:1],
        lambda m: float(m(x).square().mean()),
        n_random=2,
        **kw,
    )


def _summary(c: dict[str, Any], model: nn.Module, **kw: Any) -> Any:
    s = summarize_model(
        model, c["x"], LAYERS, nn.MSELoss(), (c["x"], c["y"]), k=2, stability_seeds=(0,), **kw
    )
    return s.numbers, s.eigenpairs


def _section(c: dict[str, Any], model: nn.Module, which: str, **kw: Any) -> Any:
    if "summary" not in c:  # any summary will do: the sections rerun the model
        ref = copy.deepcopy(c["net"]).eval()
        loss = (c["x"], c["y"])
        c["summary"] = summarize_model(
            ref, c["x"], LAYERS, nn.MSELoss(), loss, k=2, stability_seeds=(0,)
        )
    s = c["summary"]
    data = AtlasData(c["x"], nn.MSELoss(), (c["x"], c["y"]))
    settings = AtlasSettings(node_layers=tuple(LAYERS), k=2, n_random=2)
    if which == "dlr":
        return dlr_section(model, s, data, **kw)
    if which == "hessian":
        return hessian_section(model, s, data, settings, **kw)
    dirs = c["dirs"]
    return edge_section(model, s, data, settings, dirs, c["layout"], "test", **kw)


Entry = Callable[..., Any]
# (id, call(ctx, model, **train_mode), model kinds it applies to)
ENTRIES: list[tuple[str, Entry, tuple[str, ...]]] = [
    ("collect_features", lambda c, m, **kw: collect_features(m, c["x"], "3", **kw), ()),
    ("RichnessTracker", _tracker, ()),
    (
        "functional_mode",
        lambda c, m, **kw: functional_mode(
            m, c["edge_layout"], c["edge_dirs"], c["x"], kind="delta", readout="3", **kw
        ),
        (),
    ),
    ("ablate_directions", _ablate, ()),
    ("float64_copy", lambda c, m, **kw: float64_copy(m, **kw)(c["x"]).detach(), ()),
    ("layer_activations", lambda c, m, **kw: layer_activations(m, c["x"], ["0", "3"], **kw), ()),
    ("graph_dlr", lambda c, m, **kw: graph_dlr(m, c["x"], c["bases"], c["membership"], **kw), ()),
    ("node_functions", lambda c, m, **kw: node_functions(m, c["x"], c["bases"], **kw), ()),
    (
        "node_function_jvps",
        lambda c, m, **kw: node_function_jvps(m, c["x"], c["bases"], c["dirs"], c["layout"], **kw),
        (),
    ),
    (
        "edge_graph_links",
        lambda c, m, **kw: edge_graph_links(
            m, c["x"], c["bases"], c["dirs"], c["layout"], c["membership"], **kw
        ),
        (),
    ),
    ("find_graph_stages", lambda c, m, **kw: find_graph_stages(m, c["x"], LAYERS, **kw), ()),
    (
        "stage_transitions",
        lambda c, m, **kw: stage_transitions(
            m,
            c["stage"],
            c["bases"][1],
            c["bases"][2],
            split_directions(c["layout"], c["dirs"]),
            **kw,
        ),
        (),
    ),
    (
        "node_pair_direction",
        lambda c, m, **kw: node_pair_direction(
            m, c["stage"], c["bases"][1], c["bases"][2], 1, 1, c["layout"], **kw
        ),
        (),
    ),
    (
        "hessian_eigenpairs",
        lambda c, m, **kw: hessian_eigenpairs(m, nn.MSELoss(), (c["x"], c["y"]), k=3, **kw),
        (),
    ),
    (
        "hessian_graph_links",
        lambda c, m, **kw: hessian_graph_links(
            m,
            c["x"],
            c["bases"],
            [c["stage"]],
            c["pairs"].values,
            c["pairs"].vectors,
            c["layout"],
            c["membership"],
            **kw,
        ),
        (),
    ),
    (
        "mechanism_directions",
        lambda c, m, **kw: mechanism_directions(m, c["x"], **kw),
        ("dropout",),  # a Linear/ReLU chain (dropout is skipped); batch norm is not
    ),
    (
        "behavioural_null_space",
        lambda c, m, **kw: behavioural_null_space(m, c["x"], **kw),
        ("dropout",),
    ),
    ("summarize_model", _summary, ()),
    ("dlr_section", lambda c, m, **kw: _section(c, m, "dlr", **kw), ()),
    ("hessian_section", lambda c, m, **kw: _section(c, m, "hessian", **kw), ()),
    ("edge_section", lambda c, m, **kw: _section(c, m, "edge", **kw), ()),
]
# every (model kind, entry) pair the entry applies to
CASES = [
    pytest.param(kind, name, call, id=f"{kind}-{name}")
    for name, call, kinds in ENTRIES
    for kind in KINDS
    if not kinds or kind in kinds
]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"
    assert all(m.training for m in model.modules()), "the model's mode changed"


def assert_same(a: Any, b: Any, where: str = "result") -> None:
    """Exact (bit-for-bit) equality of nested results; NaN equals NaN."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.parametrize(("kind", "name", "call"), CASES)
def test_default_analyses_an_eval_copy_with_one_warning(contexts, kind, name, call) -> None:
    ctx = _ctx(contexts, kind)
    net = ctx["net"]
    before = _state(net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = call(ctx, net)
    policy = [w for w in caught if "is in train mode" in str(w.message)]
    assert len(policy) == 1, [str(w.message) for w in policy]
    assert issubclass(policy[0].category, UserWarning)
    assert TRAIN_WARNING in str(policy[0].message)
    _assert_unchanged(net, before)
    assert_same(got, call(ctx, copy.deepcopy(net).eval()), name)
    _assert_unchanged(net, before)


@pytest.mark.parametrize(("kind", "name", "call"), CASES)
def test_error_refuses_a_train_mode_model(contexts, kind, name, call) -> None:
    ctx = _ctx(contexts, kind)
    net = ctx["net"]
    before = _state(net)
    with pytest.raises(DataError, match=r"\(Sequential\) is in train mode"):
        call(ctx, net, train_mode="error")
    _assert_unchanged(net, before)


@pytest.mark.parametrize(("kind", "name", "call"), CASES)
def test_an_unknown_train_mode_is_refused_before_any_warning(contexts, kind, name, call) -> None:
    ctx = _ctx(contexts, kind)
    net = ctx["net"]
    before = _state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the policy's warning would come first otherwise
        with pytest.raises(ValueError, match=r"train_mode must be .*got 'train'"):
            call(ctx, net, train_mode="train")
    _assert_unchanged(net, before)


def test_an_eval_mode_model_gives_no_warning_and_is_used_as_it_is(ctx) -> None:
    ref = copy.deepcopy(ctx["net"]).eval()
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phi, _ = collect_features(ref, ctx["x"], "3", train_mode="error")
        functional_mode(ref, ctx["edge_layout"], ctx["edge_dirs"][0], ctx["x"], readout="3")
    assert not ref.training and phi.shape == (64, 6)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "call",
    [
        lambda c, m: collect_features(m, c["x"], "3", train_mode="keep"),
        lambda c, m: _tracker(c, m, train_mode="keep"),
        lambda c, m: functional_mode(
            m, c["edge_layout"], c["edge_dirs"], c["x"], readout="3", dtype=None, train_mode="keep"
        ),
        lambda c, m: _ablate(c, m, train_mode="keep"),
        lambda c, m: layer_activations(m, c["x"], ["3"], train_mode="keep"),
    ],
    ids=["collect_features", "RichnessTracker", "functional_mode", "ablate", "layer_activations"],
)
def test_keep_runs_train_mode_without_touching_the_callers_buffers(ctx, call) -> None:
    net = ctx["net"]
    before = _state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "keep" does not warn
        call(ctx, net)
    _assert_unchanged(net, before)


def test_keep_uses_the_train_mode_function() -> None:
    """With batch norm in train mode the features use the batch statistics."""
    torch.manual_seed(1)
    net = _bn_net().double().train()
    x = torch.randn(32, 3, dtype=torch.float64)
    phi, _ = collect_features(net, x, "3", train_mode="keep")
    with torch.no_grad():
        twin = copy.deepcopy(net)
        want = twin[2](twin[1](twin[0](x)))
    torch.testing.assert_close(phi, want, rtol=0, atol=0)
    assert not torch.equal(phi, collect_features(copy.deepcopy(net).eval(), x, "3")[0])


def test_tracker_warns_once_per_tracker_and_keeps_the_model_training() -> None:
    torch.manual_seed(2)
    net = _dropout_net().double().train()
    x = torch.randn(16, 3, dtype=torch.float64)
    tracker = RichnessTracker({"x": x}, feature_module="3", every=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.on_train_begin(net, opt)
        for step in (1, 2, 3):
            tracker.on_step(step, net, opt, (x,))
    assert sum("is in train mode" in str(w.message) for w in caught) == 1
    assert net.training and [r["step"] for r in tracker.history] == [0, 1, 2, 3]
    first = tracker.history[1]["x/d_lr"]
    assert all(r["x/d_lr"] == first for r in tracker.history[1:])  # deterministic: dropout off
