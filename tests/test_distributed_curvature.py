"""Curvature, D_LR and the atlas on torch.distributed (issue 22, "Past one machine").

Two gloo processes are spawned by :func:`interbasis.distributed.spawn` (with a timeout, so a
hang fails instead of blocking); each worker computes everything of one group at once, and
the tests compare it with the same computation in this (single) process. Worker functions
live at module level so that the spawned processes can import them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import mlp, write_trajectory
from torch import nn

from interbasis.curvature import (
    CurvatureTracker,
    GGNOperator,
    HessianOperator,
    ggn_matrix,
    hessian_matrix,
    hutchinson,
    kfac_factors,
    lanczos,
)
from interbasis.distributed import DistributedError, Shard, spawn
from interbasis.errors import DataError
from interbasis.links import AtlasData, AtlasSettings, layer_activations, model_report
from interbasis.richness import RichnessTracker, collect_features, d_lr

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TIMEOUT = 180.0  # seconds for a spawned group (importing torch twice takes ~10 s here)
TOL = 1e-10  # float64 sums in another order: round-off is ~1e-15 relative


def rel(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|`` (the absolute difference when ``b`` is zero)."""
    x, y = (np.asarray(v.detach() if isinstance(v, torch.Tensor) else v) for v in (a, b))
    assert x.shape == y.shape, (x.shape, y.shape)
    scale = float(np.abs(y).max()) if y.size else 0.0
    diff = float(np.abs(x - y).max()) if y.size else 0.0
    return diff / scale if scale else diff


# --- curvature and D_LR: one group computes everything -------------------------------------
SIZES = {"odd": [5, 7, 9, 8, 11], "one": [40]}  # 5 batches: 3 + 2; 1 batch: rank 1 empty


def _data(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    return list(zip(x.split(SIZES[name]), y.split(SIZES[name]), strict=True))


def _curvature(name: str) -> dict[str, Any]:
    """Every curvature quantity of the 3-6-2 tanh MLP (P = 38) on data ``name``."""
    net, data = mlp([3, 6, 2]), _data(name)
    V = torch.from_numpy(np.random.default_rng(0).standard_normal((38, 5)))
    hess = HessianOperator(net, F.mse_loss, data, chunk_size=2)  # 3 chunks of columns
    top = lanczos(hess, 3)
    ggn = GGNOperator(net, F.mse_loss, data)
    trace = hutchinson(hess, n_samples=6, seed=3)
    factors = kfac_factors(net, F.mse_loss, data)
    tracker = CurvatureTracker(F.mse_loss, data, k=2, every=1)
    tracker.on_train_begin(net, torch.optim.SGD(net.parameters(), lr=0.1))
    return {
        "H": hessian_matrix(net, F.mse_loss, data),
        "HV": hess.matmat_torch(V),
        "Hv": torch.from_numpy(hess @ V[:, 0].numpy()),
        "GV": ggn.matmat_torch(V),
        "GGN": ggn_matrix(net, F.mse_loss, data),
        "top": top.values,
        "top_vectors": top.vectors,
        "ggn_top": lanczos(ggn, 2, which="LA").values,
        "products": top.n_products,
        "trace": torch.tensor([trace.trace, trace.trace_sq, trace.sum_diag_sq]),
        "diagonal": trace.diagonal,
        "G": torch.cat([f.G.reshape(-1) for f in factors.values()]),
        "K": torch.cat([f.K.reshape(-1) for f in factors.values()]),
        "tracked": torch.tensor(tracker.history[0]["eigenvalues"]),
    }


def _richness(batch_size: int) -> dict[str, Any]:
    """D_LR's features (7 chunks of 8: 4 + 3 on two ranks; or 1 chunk: rank 1 empty)."""
    net = mlp([3, 8, 4], seed=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    labels = torch.arange(50) % 3
    phi, out = collect_features(net, x, "2", batch_size=batch_size)
    tracker = RichnessTracker({"a": (x, labels)}, feature_module="2", batch_size=batch_size)
    acts = layer_activations(net, x, ["0", "2"], batch_size=batch_size)
    return {
        "phi": phi,
        "out": out,
        "d_lr": torch.tensor([d_lr(phi, out), d_lr(phi, out, mode="projection")]),
        "record": tracker.measure(net),
        "acts": torch.cat([acts["0"], acts["2"], acts["output"]], dim=1),
    }


class RaisesOnRank1(nn.Module):
    """A loss that fails on rank 1's batch of 7 samples (inside the Hessian products)."""

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1 and out.shape[0] == 7:
            raise ValueError("bad batch on rank 1")
        return F.mse_loss(out, y)


def _errors(rank: int) -> dict[str, str]:
    """The errors every rank sees (each call is a collective that all ranks leave)."""
    out = {}
    op = HessianOperator(mlp([3, 6, 2]), RaisesOnRank1(), _data("odd"))
    try:
        op.matmat_torch(torch.ones(38))
    except Exception as err:
        out["raising"] = f"{type(err).__name__}: {err}"
    try:  # rank 1 was given fewer batches
        HessianOperator(mlp([3, 6, 2]), F.mse_loss, _data("odd")[: 5 - rank])
    except Exception as err:
        out["different"] = f"{type(err).__name__}: {err}"
    return out


def group_worker(rank: int, world: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {
        "curvature": {name: _curvature(name) for name in SIZES},
        "richness": {b: _richness(b) for b in (8, 64)},
        "errors": _errors(rank),
    }


@pytest.fixture(scope="module")
def group() -> list[dict[str, Any]]:
    return spawn(group_worker, 2, timeout=TIMEOUT)


@pytest.mark.parametrize("name", list(SIZES))
def test_hessian_and_ggn_on_two_ranks_equal_one_process(group, name: str) -> None:
    """Matvecs, dense matrices, Lanczos, Hutchinson, K-FAC factors and the tracker: every
    rank gets the one-process values to 1e-10 (uneven shards, and an empty one)."""
    want = _curvature(name)
    for got in group:
        for key in ("H", "HV", "Hv", "GV", "GGN", "top", "ggn_top", "trace", "diagonal", "G",
                    "K", "tracked"):  # fmt: skip
            assert rel(got["curvature"][name][key], want[key]) < TOL, key
        overlap = (got["curvature"][name]["top_vectors"].T @ want["top_vectors"]).abs()
        assert rel(overlap, torch.eye(3)) < TOL  # the same eigenvectors (up to sign)
    a, b = (g["curvature"][name] for g in group)
    assert a["products"] == b["products"]  # the ranks ran Lanczos in lockstep
    assert torch.equal(a["top_vectors"], b["top_vectors"])  # bit for bit on both ranks


@pytest.mark.parametrize("batch_size", [8, 64])
def test_dlr_features_are_gathered_in_sample_order(group, batch_size: int) -> None:
    want = _richness(batch_size)
    for got in group:
        r = got["richness"][batch_size]
        for key in ("phi", "out", "acts"):
            assert torch.equal(r[key], want[key]), key  # gathered rows: the same bits
        assert rel(r["d_lr"], want["d_lr"]) < TOL
        assert r["record"].keys() == want["record"].keys()
        for key, value in want["record"].items():
            assert math.isclose(r["record"][key], value, rel_tol=TOL, abs_tol=TOL), key


def test_a_failing_rank_and_different_data_stop_every_rank(group) -> None:
    first, second = (g["errors"] for g in group)
    assert second["raising"] == "ValueError: bad batch on rank 1"
    assert first["raising"].startswith(
        "DistributedError: stage 'Hessian-vector products' failed on another rank (rank 1: "
        "ValueError: bad batch on rank 1)"
    )
    for message in (first["different"], second["different"]):
        assert message.startswith("DistributedError: curvature data: the ranks hold different")


def test_process_group_arguments_are_checked() -> None:
    net, data = mlp([3, 6, 2]), _data("odd")
    with pytest.raises(DistributedError, match="process_group was given but"):
        HessianOperator(net, F.mse_loss, data, process_group=object())
    units = Shard(split_over="units")
    with pytest.raises(DataError, match="process_group is a Shard with split_over='units'"):
        collect_features(net, data[0][0], "2", process_group=units)
    # Shard() is this process alone: the same as no group
    alone = hessian_matrix(net, F.mse_loss, data, process_group=Shard())
    assert torch.equal(alone, hessian_matrix(net, F.mse_loss, data))


# --- the atlas ----------------------------------------------------------------------------
ATLAS_LAYERS = ("0", "1", "2", "3", "4", "output")


def _atlas() -> tuple[dict[str, Any], dict[str, bytes]]:
    """The atlas of a 2-5-5-1 ReLU MLP on 2500 inputs: 3 build batches of 1024 (2 + 1)."""
    net = mlp([2, 5, 5, 1], act=nn.ReLU)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(2500, 2, generator=g, dtype=torch.float64) - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    # the Hessian data in 4 batches of 64, 64, 64, 8: the ranks split them (2 + 2)
    data = AtlasData(x, F.mse_loss, (x[:200], y[:200]), loss_batch_size=64)
    settings = AtlasSettings(ATLAS_LAYERS, k=2, n_edge=2, n_random=2, stability_seeds=(0, 1))
    return model_report(net, data, settings)


SERIES_SETTINGS = AtlasSettings(
    ATLAS_LAYERS, k=2, n_edge=2, n_random=1, stability_seeds=(0,), window=2,
    edge_params=r"(^|\.)weight$",
)  # fmt: skip


def _load(path: Path) -> nn.Module:
    net = mlp([2, 5, 5, 1], act=nn.ReLU)
    net.load_state_dict(torch.load(path, weights_only=True))
    return net


def _run_dir(run: Path) -> Path:
    """Three checkpoints of the 2-5-5-1 ReLU MLP along a made-up trajectory."""
    return write_trajectory(run, mlp([2, 5, 5, 1], act=nn.ReLU))


def _series(run: Path, cache: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The atlas of the run on 1100 inputs (build batches of 1024 and 76: one per rank)."""
    from interbasis.links import load_series, series_report

    g = torch.Generator().manual_seed(6)
    x = 2 * torch.rand(1100, 2, generator=g, dtype=torch.float64) - 1
    data = AtlasData(x, F.mse_loss, (x[:100], x[:100, :1] * x[:100, 1:]))
    said: list[str] = []
    report, _ = series_report(
        load_series(run, loader=_load), data, SERIES_SETTINGS, progress=said.append,
        cache_dir=cache,
    )  # fmt: skip
    return report, said


def atlas_worker(rank: int, world: int, out_dir: str) -> dict[str, Any]:
    import torch.distributed as dist

    import interbasis.links.atlas as atlas

    torch.set_num_threads(1)
    sub = dist.new_group([0, 1])  # a group other than the default one: refused
    tiny = AtlasData(torch.zeros(2, 2), F.mse_loss, (torch.zeros(2, 2), torch.zeros(2, 1)))
    try:
        model_report(mlp([2, 1]), tiny, AtlasSettings(("0", "output")), process_group=sub)
        refused = ""
    except DataError as err:
        refused = str(err)
    report, figures = _atlas()
    calls = []
    real = atlas.write_files

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(rank)
        return real(*args, **kwargs)

    atlas.write_files = recording  # type: ignore[assignment]
    paths = atlas.write_atlas(report, figures, Path(out_dir) / "atlas")
    listing = sorted(p.name for p in (Path(out_dir) / "atlas").iterdir())  # rank 0 has written
    real_row = atlas.atomic_write
    rows: list[int] = []

    def recording_row(*args: Any, **kwargs: Any) -> Any:
        rows.append(rank)
        return real_row(*args, **kwargs)

    atlas.atomic_write = recording_row  # type: ignore[assignment]
    cache = Path(out_dir) / "rows"
    series, said = _series(Path(out_dir) / "run", cache)
    again, said_again = _series(Path(out_dir) / "run", cache)  # resumed: the rows are cached
    return {"report": report, "figures": sorted(figures), "writes": calls, "paths": paths,
            "listing": listing, "refused": refused, "series": series, "again": again,
            "said": said, "said_again": said_again, "rows": rows}  # fmt: skip


def _close(got: Any, want: Any, tol: float = 1e-8, where: str = "report") -> None:
    """Equal structure and strings; numbers to ``tol`` relative (``tol * 1e-4`` absolute, for
    the round-off-sized eigenvalues of the null space); NaN equals NaN."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _close(got[key], want[key], tol, f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _close(a, b, tol, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=tol, abs_tol=tol * 1e-4) or (
            math.isnan(got) and math.isnan(want)
        ), (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.fixture(scope="module")
def atlas_group(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("distributed_atlas")
    _run_dir(out / "run")
    return out, spawn(atlas_worker, 2, (str(out),), timeout=TIMEOUT)


def test_atlas_on_two_ranks_equals_one_process_and_rank_0_writes(atlas_group) -> None:
    out, results = atlas_group
    out = out / "atlas"
    want, figures = _atlas()
    for got in results:
        assert "process_group must be None or the default group" in got["refused"]
        _close(got["report"], want)
        assert got["figures"] == sorted(figures)
        assert got["paths"] == (out / "atlas.html", out / "atlas.json")
        assert got["listing"] == ["atlas.html", "atlas.json"]  # rank 1 waited for rank 0
    assert [r["writes"] for r in results] == [[0], []]  # only rank 0 wrote
    _close(results[1]["report"], results[0]["report"], tol=0.0)  # the ranks agree exactly
    assert want["hessian"]["block"]["method"] == "dense"  # every view ran
    assert want["hessian"]["null_space"]["nullity"] > 0 and want["graph"]["n_modules"] >= 1


def test_series_on_two_ranks_equals_one_process_and_rank_0_writes_the_rows(
    atlas_group, tmp_path: Path
) -> None:
    out, results = atlas_group
    want, said = _series(_run_dir(tmp_path / "run"))
    assert said == ["checkpoint step 0", "checkpoint step 10", "checkpoint step 20"]
    for got in results:
        _close(got["series"], want)
        _close(got["again"], want)  # from the cached rows
    _close(results[1]["series"], results[0]["series"], tol=0.0)
    first, second = results
    assert first["said"] == said and second["said"] == []  # progress on rank 0 only
    assert first["said_again"][:2] == ["checkpoint step 0 (cached)", "checkpoint step 10 (cached)"]
    assert first["rows"] == [0, 0] and second["rows"] == []  # 2 rows (not the last), rank 0
    assert sorted(p.name for p in (out / "rows").iterdir()) == [
        "step_0000000.json",
        "step_0000010.json",
    ]


def test_atlas_hessian_data_cut_into_batches_gives_the_same_hessian() -> None:
    """A mean-reduced loss: ``sum_b (n_b / N) H_b`` over batches of ``loss_batch_size`` is the
    Hessian of the whole batch, so the ranks may split the atlas's Hessian data."""
    from interbasis.curvature import hessian_matrix

    torch.manual_seed(0)
    model = mlp([3, 5, 4]).double()
    x, y = torch.randn(23, 3, dtype=torch.float64), torch.randint(0, 4, (23,))
    whole = AtlasData(x, F.cross_entropy, (x, y))
    cut = AtlasData(x, F.cross_entropy, (x, y), loss_batch_size=6)
    batches = cut.hessian_data()
    assert [b[0].shape[0] for b in batches] == [6, 6, 6, 5]
    assert whole.hessian_data() is whole.loss_data  # loss_batch_size=None: one batch
    H_whole = hessian_matrix(model, F.cross_entropy, whole.hessian_data())
    H_cut = hessian_matrix(model, F.cross_entropy, batches)
    assert rel(H_cut, H_whole) < 1e-12
