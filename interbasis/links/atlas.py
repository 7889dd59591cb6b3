"""The atlas: one model (or one training run) seen through every view, as HTML + JSON.

:func:`model_report` builds the interaction graph of a model and links it to the Hessian
(:mod:`.hessian`: eigenvector energy per module, curvature masses; the Hessian block of the
graph's weight layers; the behavioural null space attributed to degeneracy mechanisms), to
D_LR (:mod:`.dlr`) and to parameter directions (:mod:`.edge`: the spectral edge of a run, or
the top Hessian eigenvectors of a lone checkpoint, against random directions).
:func:`series_report` adds the time axis of a run (:mod:`.series`): per checkpoint graph
size, modules and their stability, D_LR, top Hessian eigenvalues and the spectral gap, with
the memorisation and grokking steps marked; the deep dive is on the last checkpoint.
:func:`write_atlas` renders the report (:mod:`.report`) and writes ``atlas.html`` and
``atlas.json`` all-or-nothing.

Every number the HTML shows is a value of the report dictionary, which is the JSON.

Models in train mode follow :mod:`interbasis.train_mode`, applied once per model at the entry
point (``train_mode="eval"``: the eval-mode function of a copy, with one warning; ``"error"``:
refused; ``"keep"``: as it is); the caller's model and buffers are never changed.
:func:`series_report` with ``cache_dir`` stores each finished checkpoint's row there (atomic
writes), so a run killed part-way and restarted with the same ``cache_dir`` reuses them and
gives the same report as an uninterrupted run.

Distributed (``process_group``: ``None`` for the initialised default group, if any, or that
group itself): every rank runs the whole atlas in lockstep — the bases and graphs are built
data-parallel, the Hessians all-reduced, D_LR's activations all-gathered, the rest (modules,
figures, directions) computed identically — so every rank returns the same report; only rank
0 writes files (:func:`write_atlas`, the cached rows), and the others wait for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interbasis.curvature import ParamLayout
from interbasis.distributed import Shard, get_shard
from interbasis.distributed_ops import default_group_only
from interbasis.errors import DataError
from interbasis.io import atomic_write
from interbasis.links.jvp import Layout
from interbasis.links.report import (
    HTML_NAME,
    JSON_NAME,
    check_writable,
    render,
    viewer_page,
    write_files,
)
from interbasis.links.sections import (
    AtlasData,
    AtlasSettings,
    dlr_section,
    edge_section,
    graph_section,
    hessian_section,
)
from interbasis.links.series import CheckpointSeries, ModelSummary, spectral_gaps, summarize_model
from interbasis.links.stages import find_graph_stages
from interbasis.spectral_edge import select_parameters
from interbasis.train_mode import TRAIN_MODES, TrainMode, analysed_model

__all__ = ["AtlasData", "AtlasSettings", "model_report", "render", "series_report", "write_atlas"]


def _figures(report: dict[str, Any], s: ModelSummary, n_dir: int) -> dict[str, bytes]:
    from graphs import draw_graph
    from interbasis.plotting.links import (
        figure_png,
        plot_dlr,
        plot_edge_movement,
        plot_hessian_shares,
    )

    figures = {"graph": figure_png(draw_graph(s.graph.with_modules(s.partition)).figure)}
    figures["graph_viewer"] = viewer_page(s.graph.with_modules(s.partition))
    for key, block in (
        ("hessian", report["hessian"]["full"]),
        ("block", report["hessian"]["block"]),
    ):
        if block:
            lams = [r["lambda"] for r in block["rows"]]
            figures[key] = figure_png(plot_hessian_shares(lams, block["columns"], block["shares"]))
    d = report["dlr"]
    figures["dlr"] = figure_png(
        plot_dlr(
            {r["layer"]: r["d_lr_nodes"] for r in d["layers"]},
            {r["layer"]: r["d_lr_neurons"] for r in d["layers"]},
            {r["module"]: r["d_lr"] for r in d["modules"]},
        )
    )
    e = report["edge"]
    match = [r.get("match") for r in e["rows"]] if "controls" in e else None
    figures["edge"] = figure_png(
        plot_edge_movement(
            [r["direction"] for r in e["rows"]][:n_dir], e["modules"], e["module_moved"][:n_dir],
            match[:n_dir] if match else None, match[n_dir:] if match else None,
        )
    )  # fmt: skip
    return figures


def settings_record(data: AtlasData, settings: AtlasSettings) -> dict[str, Any]:
    """Every setting, seed and version of an atlas (the report's ``settings``)."""
    from interbasis import __version__

    return {
        **data.description,
        **settings.as_dict(),
        "interbasis_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def check_atlas_train_mode(train_mode: object) -> None:
    """``train_mode`` must be one of ``"eval"``, ``"error"``, ``"keep"`` (DataError if not)."""
    if not isinstance(train_mode, str) or train_mode not in TRAIN_MODES:
        raise DataError(
            f'train_mode must be "eval", "error" or "keep" (interbasis.train_mode), '
            f"got {train_mode!r}"
        )


def _policy_quietly(model: nn.Module, train_mode: TrainMode) -> nn.Module:
    """:func:`analysed_model` without its warning (for the checkpoints after the first)."""
    if model.training and train_mode == "eval":
        return copy.deepcopy(model).eval()
    return analysed_model(model, train_mode, "atlas")  # "error" raises, "keep" passes


def model_report(
    model: nn.Module,
    data: AtlasData,
    settings: AtlasSettings,
    *,
    summary: ModelSummary | None = None,
    directions: torch.Tensor | None = None,
    direction_layout: Layout | None = None,
    direction_source: str = "",
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Report dictionary and PNG figures of one model (module docstring).

    ``directions`` ``(k, P)`` in ``direction_layout`` (e.g. spectral-edge directions);
    default: the top ``settings.n_edge`` Hessian eigenvectors. ``train_mode``: the policy for
    a model in train mode (:mod:`interbasis.train_mode`), applied once here: every view then
    sees the same (eval-mode copy of the) model and none warns again. ``summary``, when
    given, must be of that model. ``process_group``: ``None`` (the initialised default group,
    if any) or the default group (module docstring); every rank must call this function.

    Raises
    ------
    DataError
        ``train_mode`` not one of "eval", "error", "keep"; a model in train mode with
        ``train_mode="error"``; a ``process_group`` other than the default group.
    """
    check_atlas_train_mode(train_mode)
    default_group_only(process_group, "the atlas")
    model = analysed_model(model, train_mode, "atlas")
    s = summary or summarize_model(
        model, data.inputs, settings.node_layers, data.loss_fn, data.hessian_data(), k=settings.k,
        seed=settings.seed, stability_seeds=settings.stability_seeds, tol=settings.lanczos_tol,
        train_mode=train_mode, process_group=process_group,
    )  # fmt: skip
    _, notes = find_graph_stages(model, data.inputs, settings.node_layers, train_mode=train_mode)
    report: dict[str, Any] = {"settings": settings_record(data, settings)}
    report["graph"] = graph_section(s, notes)
    report["graph"].update(d_lr=s.numbers["d_lr"], hessian_top=s.numbers["hessian_top"])
    pg = {"train_mode": train_mode, "process_group": process_group}
    report["hessian"] = hessian_section(model, s, data, settings, **pg)
    report["dlr"] = dlr_section(model, s, data, **pg)
    if directions is None or direction_layout is None:
        directions = s.eigenpairs.vectors[:, : settings.n_edge].T
        direction_layout = ParamLayout.from_model(model)
        direction_source = "top Hessian eigenvectors (no training history)"
    report["edge"] = edge_section(
        model, s, data, settings, directions, direction_layout, direction_source,
        train_mode=train_mode,
    )  # fmt: skip
    return report, _figures(report, s, len(directions))


def _pick(n: int, most: int) -> list[int]:
    """Up to ``most`` evenly spread indices of ``range(n)``, first and last included."""
    if n <= most:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, most)})


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(part, Path):
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(json.dumps(part, sort_keys=True, default=repr).encode())
        h.update(b"\0")
    return h.hexdigest()


def _row_key(
    data: AtlasData, settings: AtlasSettings, train_mode: str, step: int, path: Path
) -> str:
    """What a cached checkpoint row depends on: settings, data, versions, threads, the file."""
    fn = getattr(data.loss_fn, "__qualname__", repr(data.loss_fn))
    record: dict[str, Any] = {"settings": settings_record(data, settings), "train_mode": train_mode}
    record.update(step=step, loss_fn=fn)
    return _digest(record, data.inputs, *data.loss_data, path)


def _cached_row(cache_dir: Path | None, step: int, key: str) -> dict[str, Any] | None:
    """The cached part of checkpoint ``step``'s row if ``cache_dir`` holds it for ``key``."""
    path = cache_dir / f"step_{step:07d}.json" if cache_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable: recompute (and overwrite) it
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    row = entry.get("row")
    return row if isinstance(row, dict) else None


def _store_row(cache_dir: Path, step: int, key: str, row: dict[str, Any], shard: Shard) -> None:
    """Write a checkpoint's row on rank 0 (atomically); the other ranks wait for it."""
    text = json.dumps({"key": key, "row": row}, default=float).encode("utf-8")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    path = cache_dir / f"step_{step:07d}.json"
    with shard.stage(f"write {path}"):
        if shard.rank == 0:
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, write)


def series_report(
    series: CheckpointSeries,
    data: AtlasData,
    settings: AtlasSettings,
    *,
    progress: Callable[[str], None] | None = None,
    train_mode: TrainMode = "eval",
    cache_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    process_group: Any = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Report and figures of a training run: the time axis plus the last checkpoint's atlas.

    ``train_mode``: the policy for checkpoints loaded in train mode (:mod:`interbasis.
    train_mode`), applied once per checkpoint (one warning for the run). ``cache_dir``: every
    finished checkpoint's row (but the last, whose objects the deep dive needs) is written
    there atomically, keyed by the checkpoint file, the data, the settings, the versions and
    the thread count; with ``resume`` rows found there under the same key are reused, so a
    killed run restarted with the same ``cache_dir`` loses none of them and ends with the
    report of an uninterrupted run.

    ``process_group``: ``None`` (the initialised default group, if any) or the default group
    (module docstring): every rank computes every checkpoint's row in lockstep, a cached row
    is used only when every rank finds it, rank 0 alone writes the rows and calls
    ``progress``.

    Raises
    ------
    DataError
        ``train_mode`` not one of "eval", "error", "keep"; a checkpoint in train mode with
        ``train_mode="error"``; a ``process_group`` other than the default group.
    """
    from interbasis.plotting.links import figure_png, plot_series

    check_atlas_train_mode(train_mode)
    default_group_only(process_group, "the atlas")
    shard = get_shard(process_group)
    cache = Path(cache_dir) if cache_dir is not None else None
    gaps = spectral_gaps(series, settings.edge_params, settings.window)
    picked = _pick(len(series), settings.max_checkpoints)
    rows, last, warned = [], None, False
    for i in picked:
        step, is_last = series.steps[i], i == picked[-1]
        key = _row_key(data, settings, train_mode, step, series.paths[i]) if cache else ""
        part = _cached_row(cache, step, key) if resume and not is_last else None
        if not shard.all(part is not None):  # the ranks compute a row together, or none does
            part = None
        if progress and shard.rank == 0:
            progress(f"checkpoint step {step}" + (" (cached)" if part is not None else ""))
        if part is None:
            raw = series.model(i)
            if raw.training and train_mode == "eval" and warned:
                model = _policy_quietly(raw, train_mode)
            else:
                model = analysed_model(raw, train_mode, "atlas")
            warned = warned or raw.training
            s = summarize_model(
                model, data.inputs, settings.node_layers, data.loss_fn, data.hessian_data(),
                k=settings.k, seed=settings.seed, stability_seeds=settings.stability_seeds,
                tol=settings.lanczos_tol, process_group=process_group,
            )  # fmt: skip
            part = {}
            keys = ("graph_size", "assigned_nodes", "edges_90", "n_modules", "stability", "d_lr")
            for name in keys:
                part[name] = s.numbers[name]
            for layer, value in s.numbers["d_lr_layers"].items():
                part[f"d_lr:{layer}"] = value
            for j, lam in enumerate(s.numbers["hessian_top"]):
                part[f"lambda_{j + 1}"] = lam
            if cache is not None and not is_last:
                _store_row(cache, step, key, part, shard)
            last = (model, s)
        rec = series.record(step)
        row: dict[str, Any] = {"step": step, **part}
        row.update(gap=gaps[i].get("gap"), k_star=gaps[i].get("k_star"))
        row.update(train_acc=rec.get("train_acc"), test_acc=rec.get("test_acc"))
        rows.append(row)
    assert last is not None
    model, s = last
    g = gaps[-1]
    layout, dirs, source = None, None, ""
    if "directions" in g:
        layout = select_parameters(model, settings.edge_params)
        dirs, source = g["directions"][: settings.n_edge], f"spectral edge at step {g['step']}"
    report, figures = model_report(
        model, data, settings, summary=s, directions=dirs, direction_layout=layout,
        direction_source=source, train_mode="keep",  # the policy was applied above
        process_group=process_group,
    )  # fmt: skip
    report["series"] = {
        "rows": rows,
        "checkpoints": len(series),
        "memorization_step": series.memorization_step,
        "grokking_step": series.grokking_step,
        "deep_dive_step": series.steps[-1],
    }
    marks = {"memorised": series.memorization_step, "grokked": series.grokking_step}
    figures["series"] = figure_png(plot_series(rows, marks))
    return report, figures


def write_atlas(
    report: dict[str, Any],
    figures: dict[str, bytes],
    out_dir: str | os.PathLike[str],
    *,
    process_group: Any = None,
) -> tuple[Path, Path]:
    """Render and write ``atlas.html`` + ``atlas.json`` into ``out_dir`` (both or neither).

    ``process_group`` (default: the initialised default group, if any): rank 0 alone writes;
    every rank waits for it, raises if it failed, and returns the same two paths.
    """
    shard = get_shard(process_group)
    out = Path(out_dir)
    with shard.stage(f"write atlas {out}"):  # a failed write stops every rank
        if shard.rank == 0:
            check_writable(out)
            write_files(out, render(report, figures), report)
    return out / HTML_NAME, out / JSON_NAME
