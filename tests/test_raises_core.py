"""Bad inputs to the core pipeline (issue 19): every guard of build / capture / data / edges /
bases / sources / distributed / stage cache raises our error naming what was wrong.

Most rows call the public API (``build_bases``, ``build_graph``, ``output_jacobian_gram``,
``Sources``, ``Shard``, ...) on a tiny float64 MLP; a few guards that the public API checks
earlier (defensive ones inside the pipeline) are called directly, which says so in their id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from nets import PositionMixer, mlp
from torch import nn

import interbasis as ib
from interbasis.basis import neuron_basis, pca_basis
from interbasis.build import final_basis_of, output_jacobian_gram, prepare
from interbasis.capture import select_output
from interbasis.data import iter_batches
from interbasis.distributed import DistributedError, Shard, spawn, unit_range
from interbasis.edges import functional_edges, gauss_legendre, squared_edges, weight_edges
from interbasis.errors import (
    DataError,
    FormatError,
    NodeLayerError,
    NonFiniteError,
    ShapeError,
    WriteError,
)
from interbasis.jacobians import section_jacobian_gram
from interbasis.sources import Sources, check_keep
from interbasis.stage_cache import CacheDir, StageCache, _load, open_cache
from interbasis.train_mode import check_train_mode

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["0", "2", "output"]  # mlp([3, 4, 2]): Linear "0", Tanh "1", Linear "2"


def net() -> nn.Sequential:
    return mlp([3, 4, 2])


def x(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, dtype=torch.float64)


def bases(**kw: Any) -> Any:
    return ib.build_bases(net(), x(), NAMES, progress=False, **kw)


def graph(**kw: Any) -> Any:
    return ib.build_graph(net(), x(), NAMES, progress=False, **kw)


def run_of(model: nn.Module | None = None, names: list[str] | None = None) -> Any:
    return prepare(model or net(), x(), names or NAMES, progress=False)


# --- models whose forward pass breaks a rule -------------------------------------------------
class Returns(nn.Module):
    """A linear layer ``lin`` whose model output is ``wrap(lin(x))``."""

    def __init__(self, wrap: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.wrap = wrap
        self.eval()

    def forward(self, inp: torch.Tensor) -> Any:
        return self.wrap(self.lin(inp))


class Unbatched(nn.Module):
    """``lin`` receives one sample without its batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.eval()

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.lin(inp[0]).expand(inp.shape[0], 2)


class AnyWidth(nn.Module):
    """``head`` reads the first 3 features of inputs of any width (``first`` sees them all)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Identity()
        self.head = nn.Linear(3, 2).double()
        self.eval()

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.head(self.first(inp)[:, :3])


class Skips(nn.Module):
    """``unused`` is never called; ``second`` only for batches of more than one sample."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 3).double()
        self.second = nn.Linear(3, 2).double()
        self.unused = nn.Linear(3, 3).double()
        self.eval()

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.first(inp))
        return self.second(h) if inp.shape[0] > 1 else h[:, :2]


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], Any]
    error: type[Exception]
    match: str


CASES = [
    # build.py: options of build_bases / build_graph, checked before any work
    Case(
        "model-not-a-module",
        lambda: ib.build_bases(lambda v: v, x(), NAMES),
        TypeError,
        "model must be a torch.nn.Module, got function",
    ),
    Case(
        "dtype-integer",
        lambda: bases(dtype=torch.int64),
        ValueError,
        "dtype must be a floating torch dtype or None, got torch.int64",
    ),
    Case(
        "output-not-callable",
        lambda: bases(output="logits"),
        TypeError,
        "output must be a callable .*got 'logits'",
    ),
    Case("device-meta", lambda: bases(device="meta"), DataError, 'device="meta" holds no data'),
    Case(
        "keep-positions-unknown-layer",
        lambda: bases(keep_positions={"9": [0]}),
        NodeLayerError,
        "keep_positions names '9', which is not a node layer",
    ),
    Case(
        "keep-positions-not-ints",
        lambda: bases(keep_positions={"0": [0.5]}),
        ValueError,
        r"keep_positions\['0'\] must be integers, got \[0.5\]",
    ),
    Case(
        "feature-dim-wrong-type",
        lambda: bases(feature_dim="last"),
        TypeError,
        "feature_dim must be an int or a dict .*got 'last'",
    ),
    Case(
        "feature-dim-value-not-int",
        lambda: bases(feature_dim={"0": 1.5}),
        TypeError,
        r"feature_dim\['0'\] must be an int, got 1.5",
    ),
    Case("basis-unknown", lambda: bases(basis="svd"), ValueError, "basis must be .*got 'svd'"),
    Case("scope-unknown", lambda: bases(scope="wide"), ValueError, "scope must be .*got 'wide'"),
    Case(
        "scope-global-with-pca",
        lambda: bases(basis="pca", scope="global"),
        ValueError,
        "scope=\"global\" applies to the interaction basis only; basis='pca'",
    ),
    Case(
        "final-basis-unknown",
        lambda: bases(final_basis="svd"),
        ValueError,
        "final_basis must be .*got 'svd'",
    ),
    Case(
        "truncation-negative",
        lambda: bases(truncation=-1.0),
        ValueError,
        "truncation must be .*got -1.0",
    ),
    Case("center-not-bool", lambda: bases(center=1), TypeError, "center must be True or False"),
    Case(
        "center-without-fold-bias",
        lambda: bases(fold_bias=False),
        ValueError,
        "center=True needs fold_bias=True",
    ),
    Case(
        "fold-bias-without-center",
        lambda: bases(center=False),
        ValueError,
        "fold_bias=True needs center=True",
    ),
    Case(
        "train-mode-unknown",
        lambda: bases(train_mode="train"),
        DataError,
        "train_mode must be .*got 'train'",
    ),
    Case(
        "train-mode-direct",
        lambda: check_train_mode(None),
        DataError,
        "train_mode must be .*got None",
    ),
    Case(
        "width-changes-between-batches",
        lambda: ib.build_bases(
            AnyWidth(),
            [x(), torch.randn(8, 4, dtype=torch.float64)],
            ["first", "head", "output"],
            progress=False,
        ),
        DataError,
        "node layer 'first' has width 4 in batch 1 but 3 before",
    ),
    Case(
        "out-map-wrong-rows",
        lambda: output_jacobian_gram(net(), x(), "2", out_map=torch.eye(3)),
        DataError,
        r"out_map must have shape \(2, k\), got \(3, 3\)",
    ),
    Case(
        "direct-injectable-output",
        lambda: run_of().injectable("output"),
        NodeLayerError,
        "'output' is the model output; nothing comes after it",
    ),
    Case(
        "direct-final-basis-unknown",
        lambda: final_basis_of(_with_grams(run_of()), "output", "svd", True, "auto"),
        ValueError,
        "final_basis must be .*got 'svd'",
    ),
    Case(
        "node-layer-never-called",
        lambda: ib.build_bases(Skips(), x(), ["first", "unused", "output"], progress=False),
        NodeLayerError,
        r"node layers \['unused'\] were never called in the forward pass",
    ),
    # graph_build.py
    Case(
        "bases-for-other-layers",
        lambda: graph(bases=ib.build_bases(net(), x(), ["2", "output"], progress=False)),
        ShapeError,
        r"got 2 bases for 3 node layers \['0', '2', 'output'\]",
    ),
    Case(
        "edges-unknown",
        lambda: graph(edges="cosine"),
        DataError,
        "edges must be one of .*got 'cosine'",
    ),
    Case(
        "graph-one-layer",
        lambda: ib.build_graph(net(), x(), ["0"], progress=False),
        ShapeError,
        r"a graph needs at least two node layers, got \['0'\]",
    ),
    Case(
        "edge-sources-with-functional",
        lambda: graph(edges="functional", edge_sources=Sources(positions=1)),
        DataError,
        "edge_sources applies to edges=\"squared\", not edges='functional'",
    ),
    Case(
        "edge-sources-hidden",
        lambda: graph(edge_sources=Sources(hidden=2)),
        DataError,
        r"edge_sources=Sources\(hidden=2\) is not supported",
    ),
    # capture.py: node-layer names and what the model receives and returns
    Case(
        "node-layer-not-a-string",
        lambda: ib.build_bases(net(), x(), [0, "output"]),
        NodeLayerError,
        "node layer names must be strings, got 0",
    ),
    Case(
        "batch-empty-tuple",
        lambda: ib.build_bases(net(), [()], NAMES, progress=False),
        DataError,
        r"a batch is an empty tuple; expected \(inputs, ...\)",
    ),
    Case(
        "batch-mapping-without-tensors",
        lambda: ib.build_bases(net(), [{"ids": [1, 2]}], NAMES, progress=False),
        DataError,
        r"a batch is a mapping without tensors \(keys \['ids'\]\)",
    ),
    Case(
        "batch-mapping-ragged",
        lambda: ib.build_bases(net(), [{"a": x(4), "b": x(3)}], NAMES, progress=False),
        DataError,
        r"must share their first \(batch\) dimension; got shapes .*'b': \(3, 3\)",
    ),
    Case(
        "module-input-without-batch-dim",
        lambda: ib.build_bases(Unbatched(), x(), ["lin", "output"], progress=False),
        DataError,
        r"input of module 'lin' has no batch dimension: \(3,\)",
    ),
    Case(
        "output-mapping-without-tensors",
        lambda: ib.build_bases(Returns(lambda y: {"n": 1}), x(), ["lin", "output"], progress=False),
        DataError,
        r"returns dict with no tensor entry \(keys \['n'\]\); pass output=",
    ),
    Case(
        "output-tuple-without-tensors",
        lambda: ib.build_bases(Returns(lambda y: (1, "a")), x(), ["lin", "output"], progress=False),
        DataError,
        "returns a tuple without tensors; pass output=",
    ),
    Case(
        "output-not-a-tensor",
        lambda: ib.build_bases(
            Returns(lambda y: y.sum().item()), x(), ["lin", "output"], progress=False
        ),
        DataError,
        "the model returns float, not a tensor",
    ),
    Case(
        "output-integer-dtype",
        lambda: ib.build_bases(
            Returns(lambda y: y.argmax(-1, keepdim=True)), x(), ["lin", "output"], progress=False
        ),
        DataError,
        "the model output has dtype torch.int64",
    ),
    Case(
        "direct-select-output-not-a-tensor",
        lambda: select_output(None),
        DataError,
        "the model returns NoneType, not a tensor",
    ),
    # data.py
    Case(
        "batch-empty",
        lambda: ib.build_bases(net(), [torch.zeros(0, 3)], NAMES, progress=False),
        DataError,
        r"batch 0 is empty \(shape \(0, 3\)\)",
    ),
    Case(
        "batch-on-meta",
        lambda: ib.build_bases(net(), [torch.empty(4, 3, device="meta")], NAMES, progress=False),
        DataError,
        "batch 0 lies on the meta device",
    ),
    Case(
        "data-not-iterable",
        lambda: ib.build_bases(net(), 3.5, NAMES, progress=False),
        DataError,
        "data must be a tensor or an iterable of batches, got float",
    ),
    Case(
        "direct-iter-batches-batch-size",
        lambda: list(iter_batches(x(), 0, torch.device("cpu"), torch.float64)),
        DataError,
        "batch_size must be a positive integer, got 0",
    ),
    # sources.py
    Case(
        "sources-seed-negative",
        lambda: Sources(seed=-1),
        DataError,
        r"Sources\(seed=...\) must be a non-negative integer, got -1",
    ),
    Case(
        "sources-positions-zero",
        lambda: Sources(positions=0),
        DataError,
        r"Sources\(positions=...\) must be None or a positive integer, got 0",
    ),
    Case(
        "keep-positions-empty",
        lambda: ib.build_bases(
            PositionMixer().eval(),
            torch.randn(6, 4, 5, dtype=torch.float64),
            ["first", "second", "output"],
            keep_positions={"first": []},
            progress=False,
        ),
        DataError,
        "keep_positions for 'first' is empty",
    ),
    Case(
        "keep-positions-twice",
        lambda: ib.build_bases(
            PositionMixer().eval(),
            torch.randn(6, 4, 5, dtype=torch.float64),
            ["first", "second", "output"],
            keep_positions={"first": [1, -3]},
            progress=False,
        ),
        DataError,
        r"keep_positions for 'first' lists a position twice: \[1, -3\]",
    ),
    Case(
        "keep-positions-out-of-range",
        lambda: check_keep(torch.tensor([4]), 4, "first"),
        DataError,
        r"keep_positions for 'first' is \[4\], but the layer has 4 positions",
    ),
    # basis.py
    Case(
        "pca-truncation-text",
        lambda: pca_basis("h", torch.zeros(2), torch.eye(2), truncation="1e-3"),
        DataError,
        "truncation must be \"auto\" or a number >= 0, got '1e-3'",
    ),
    Case(
        "pca-truncation-none",
        lambda: pca_basis("h", torch.zeros(2), torch.eye(2), truncation=None),
        DataError,
        'truncation must be "auto" or a number >= 0, got None',
    ),
    Case(
        "pca-gram-not-square",
        lambda: pca_basis("h", torch.zeros(2), torch.eye(3)),
        ShapeError,
        r"node layer 'h': activation Gram has shape \(3, 3\), expected \(2, 2\)",
    ),
    Case(
        "neuron-gram-not-square",
        lambda: neuron_basis("h", torch.zeros(2), torch.ones(2, 1), fold_bias=True),
        ShapeError,
        r"node layer 'h': activation Gram has shape \(2, 1\)",
    ),
    # distributed.py
    Case(
        "shard-rank-not-int",
        lambda: Shard(rank=1.0),
        TypeError,
        "rank must be an integer, got 1.0",
    ),
    Case(
        "shard-rank-out-of-range",
        lambda: Shard(rank=2, world=2),
        DataError,
        "need 0 <= rank < world and world >= 1, got rank=2, world=2",
    ),
    Case(
        "shard-split-unknown",
        lambda: Shard(split_over="rows"),
        DataError,
        "split_over must be one of .*got 'rows'",
    ),
    Case(
        "unit-range-negative",
        lambda: unit_range(-1, 0, 1),
        DataError,
        "n_units must be an integer >= 0, got -1",
    ),
    Case(
        "direct-sum-optional-none",
        lambda: Shard().sum_optional(None, 2),
        DataError,
        "Shard.sum_optional: t is None on a single-rank shard",
    ),
    Case(
        "direct-reduce-jacobian-gram-none",
        lambda: Shard().reduce_jacobian_gram(None),
        DataError,
        "Shard.reduce_jacobian_gram: acc is None on a single-rank shard",
    ),
    # stage_cache.py
    Case(
        "cache-every-zero",
        lambda: CacheDir("c", every=0),
        DataError,
        r"CacheDir\(every=...\) must be a positive integer, got 0",
    ),
    Case(
        "cache-dir-not-a-path",
        lambda: graph(cache_dir=123),
        TypeError,
        "cache_dir must be a path or a CacheDir, got 123",
    ),
    # edges.py
    Case(
        "direct-gauss-legendre-zero",
        lambda: gauss_legendre(0),
        DataError,
        "n_points must be an integer >= 1, got 0",
    ),
    Case(
        "functional-with-keep-positions",
        lambda: ib.build_graph(
            PositionMixer().eval(),
            torch.randn(6, 4, 5, dtype=torch.float64),
            ["first", "second", "output"],
            edges="functional",
            keep_positions={"second": [-1]},
            progress=False,
        ),
        DataError,
        "edges=\"functional\" does not support keep_positions .*'first'",
    ),
]


def _with_grams(run: Any) -> Any:
    from interbasis.build import accumulate_activation_grams

    accumulate_activation_grams(run, check_cuts=False)
    return run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_clear_error(case: Case) -> None:
    with pytest.raises(case.error, match=case.match):
        case.call()


# --- guards that need a little set-up -----------------------------------------------------
def _section_and_bases(width_in: int | None = None) -> tuple[Any, Any, Any]:
    """Section "0" -> "2" of the tiny MLP and neuron bases of its two layers."""
    run = _with_grams(run_of())
    g_in, g_out = run.grams["0"], run.grams["2"]
    d = width_in or g_in.dim
    b_in = neuron_basis("0", torch.zeros(d, dtype=torch.float64), torch.eye(d), fold_bias=True)
    b_out = neuron_basis("2", g_out.mean, g_out.covariance, fold_bias=True)
    return run.section("0", "2"), b_in, b_out


def test_edges_refuse_a_basis_of_another_width() -> None:
    section, b_in, b_out = _section_and_bases(width_in=5)
    with pytest.raises(DataError, match="basis of '0' has width 5 but the activations of '0' "
                       "have width 3"):  # fmt: skip
        squared_edges(section, [x()], b_in, b_out)


def test_edges_refuse_non_finite_weights() -> None:
    section, b_in, b_out = _section_and_bases()
    b_in.C[0, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite edge weights between '0' and '2'"):
        squared_edges(section, [x()], b_in, b_out)


def test_functional_edges_refuse_zero_points() -> None:
    section, b_in, b_out = _section_and_bases()
    with pytest.raises(DataError, match="n_points must be an integer >= 1, got 0"):
        functional_edges(section, [x()], b_in, b_out, n_points=0)


def test_weight_edges_refuse_positions_that_change() -> None:
    """An affine section (a linear map per position) fed sequences of two lengths."""
    model = nn.Sequential(nn.Identity(), nn.Linear(5, 3).double(), nn.Identity()).eval()
    b_in = neuron_basis("0", torch.zeros(5, dtype=torch.float64), torch.eye(5), fold_bias=True)
    b_out = neuron_basis("2", torch.zeros(3, dtype=torch.float64), torch.eye(3), fold_bias=True)
    batches = [torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)]
    run = prepare(model, batches, ["0", "2"], progress=False)
    with pytest.raises(DataError, match="batch 1 of '0' has 6 positions, the Jacobian 4"):
        weight_edges(run.section("0", "2"), batches, b_in, b_out)


def test_weight_edges_refuse_a_section_that_bends_after_the_first_batch() -> None:
    """A ReLU net is affine on a first batch that stays in one region (so the early check in
    build_graph passes) and not on the next: weight_edges names that batch."""
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(1, 2).double()).eval()
    first = torch.linspace(1.0, 2.0, 6, dtype=torch.float64)[:, None]  # all in the linear part
    mixed = torch.linspace(-2.0, 2.0, 6, dtype=torch.float64)[:, None]
    with pytest.raises(DataError, match=r"'0' -> '2' is not affine on the data \(batch 1\)"):
        ib.build_graph(model, [first, mixed], NAMES, edges="weight", progress=False)


def test_weight_edges_are_refused_before_any_pass_over_the_data(monkeypatch) -> None:
    """Issue 19: a non-affine section fails on the first batch, before the Grams pass (and
    so before the Jacobian pass of the bases), not after the whole expensive pass."""
    import interbasis.graph_build as gb

    def no_pass(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Grams pass ran before the options were checked")

    monkeypatch.setattr(gb, "accumulate_activation_grams", no_pass)
    with pytest.raises(DataError, match=r"edges=\"weight\" needs an affine section, but '0' -> "
                       r"'2' is not affine on the first batch"):  # fmt: skip
        graph(edges="weight")


def test_section_whose_output_module_is_not_reached() -> None:
    """A data-dependent branch skips the section's output module on a one-sample batch."""
    model = Skips()
    run = prepare(model, x(), ["first", "second"], progress=False)
    section = run.section("first", "second")
    v, layout = section.capture_input(x(1))
    with pytest.raises(NodeLayerError, match="module 'second' was not reached after 'first'"):
        section.run(x(1), v, layout)


def test_jacobian_gram_of_no_batches() -> None:
    """Direct call (the pipeline refuses empty data before): a clear error, not None."""
    run = run_of()
    with pytest.raises(DataError, match="data holds no batches"):
        section_jacobian_gram(run.section("0", "2"), [], torch.eye(2, dtype=torch.float64))


def test_section_refuses_an_unknown_mode_and_an_out_map_of_another_width() -> None:
    run = run_of()
    section = run.section("0", "2")
    v, layout = section.capture_input(x())
    with pytest.raises(ValueError, match="mode must be one of .*got 'fast'"):
        next(section.jacobians(x(), v, layout, torch.eye(2), mode="fast"))
    with pytest.raises(DataError, match="out_map has 3 rows but '2' has width 4"):
        next(section.jacobians(x(), v, layout, torch.eye(3, dtype=torch.float64)))


# --- stage cache --------------------------------------------------------------------------
def test_stage_cache_recomputes_a_file_of_another_version(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, {"model": "m"})
    cache.cached("grams", {"a": 1}, lambda _: {"v": torch.ones(1)})
    (path,) = tmp_path.glob("grams-*.pt")
    torch.save({"format": 999, "value": {"v": torch.zeros(1)}}, path)  # a future version
    with pytest.raises(FormatError, match=f"stage cache file {path} was not written by this"):
        _load(path)
    value, fresh = cache.cached("grams", {"a": 1}, lambda _: {"v": torch.full((1,), 2.0)})
    assert fresh and float(value["v"]) == 2.0  # recomputed, not the stale zeros
    assert cache.log == [("grams", "computed"), ("grams", "computed")]


def test_stage_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    with pytest.raises(WriteError, match=f"cache_dir '{blocker}' cannot be used as the stage "
                       "cache directory"):  # fmt: skip
        graph(cache_dir=blocker)
    with pytest.raises(WriteError, match="cache_dir"):
        open_cache(blocker / "sub", net(), lambda: [x()], {})


# --- spawn --------------------------------------------------------------------------------
def test_spawn_names_the_ranks_that_did_not_finish() -> None:
    """``spawn`` stops waiting after ``timeout`` and names the ranks still running (here the
    timeout is shorter than starting a process)."""
    import operator

    with pytest.raises(DistributedError, match=r"ranks \[0\] did not finish within 0.01 s"):
        spawn(operator.add, 1, timeout=0.01)
