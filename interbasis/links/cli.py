"""``interbasis atlas CHECKPOINT_OR_RUN_DIR --out DIR`` (the application layer, DESIGN §2).

A run directory (``<run>/checkpoints/step_*.pt``) gives the series atlas; a checkpoint file
(a training checkpoint, or a TransformerLens state dict with ``config.yaml`` beside it) the
atlas of one model. The task, its split and the model come from ``experiments`` (imported
here, inside the command, as the CLI layer may). Writes ``atlas.html`` and ``atlas.json``.

A series atlas keeps each finished checkpoint's row in ``OUT/.atlas_rows/`` while it runs
(atomic writes); ``--resume`` reuses the rows found there (the same checkpoint file, data,
settings, versions and thread count), so a run killed part-way and restarted with
``--resume`` gives the same report as an uninterrupted one. The folder is removed once the
report is written.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interbasis.distributed import get_shard
from interbasis.links.atlas import (
    AtlasData,
    AtlasSettings,
    model_report,
    series_report,
    write_atlas,
)
from interbasis.links.edge import FourierGrid
from interbasis.links.report import check_writable
from interbasis.spectral_edge import ATTENTION_WEIGHTS


def default_node_layers(model: nn.Module) -> list[str]:
    """Node layers that make every weight layer a graph stage where the model allows it.

    Transformer (TransformerLens names): ``blocks.{i}.ln1``, ``blocks.{i}.ln2`` for every
    block, then ``unembed`` and ``output``. MLP (``layers.{k}`` / ``acts.{k}``): the input of
    every ``layers.{k}`` and of every ``acts.{k}`` (pre-activations), then ``output``.
    """
    names = dict(model.named_modules())
    if "unembed" in names:
        n_blocks = sum(1 for n in names if n.count(".") == 1 and n.startswith("blocks."))
        blocks = [f"blocks.{i}.{ln}" for i in range(n_blocks) for ln in ("ln1", "ln2")]
        return [*blocks, "unembed", "output"]
    layers = sorted((n for n in names if n.startswith("layers.")), key=lambda n: int(n[7:]))
    out = []
    for i, layer in enumerate(layers):
        out.append(layer)
        if f"acts.{i}" in names:
            out.append(f"acts.{i}")
    return [*out, "output"]


def default_edge_params(model: nn.Module) -> str:
    """Spectral-edge parameters: the attention weights if the model has any, else every
    parameter named ``*weight`` (an MLP's weight matrices)."""
    names = [n for n, _ in model.named_parameters()]
    if any(re.search(ATTENTION_WEIGHTS, n) for n in names):
        return ATTENTION_WEIGHTS
    return r"(^|\.)weight$"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interbasis atlas", description=__doc__.split("\n")[0])
    p.add_argument("target", help="run directory (checkpoints/step_*.pt) or checkpoint file")
    p.add_argument("--out", required=True, help="report directory (atlas.html, atlas.json)")
    p.add_argument("--layers", nargs="+", default=None, help="node layers (default: see docs)")
    p.add_argument("--data", default="train", choices=["train", "test", "all"])
    p.add_argument("--max-samples", type=int, default=None, help="graph / D_LR inputs")
    p.add_argument("--hessian-samples", type=int, default=1024, help="loss samples (Hessian)")
    p.add_argument("--k", type=int, default=5, help="top Hessian eigenpairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random", type=int, default=8, help="random control directions")
    p.add_argument("--max-checkpoints", type=int, default=12)
    p.add_argument("--window", type=int, default=10, help="spectral-edge window (updates)")
    p.add_argument(
        "--edge-params", default=None, help="regex of the spectral-edge parameters (see docs)"
    )
    p.add_argument("--no-grid", action="store_true", help="no Fourier labels over Z_p^2")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"reuse the checkpoint rows an interrupted run left in OUT/{ROWS_DIR}",
    )
    return p


HESSIAN_BATCH = 256  # samples per batch of the atlas's Hessian data
ROWS_DIR = ".atlas_rows"  # finished checkpoint rows of a series atlas (removed at the end)
# temporary files of the atomic writers (interbasis.io.atomic_write, links.report)
_TEMP_FILE = re.compile(r"\.(atlas\.(json|html)\..+\.tmp|atlas-probe\..+)")


def _remove_stale_temps(out: Path) -> None:
    """Temporary files a killed earlier run left in the report directory."""
    for folder, pattern in ((out, _TEMP_FILE), (out / ROWS_DIR, re.compile(r"\..+\.tmp"))):
        for path in folder.iterdir() if folder.is_dir() else []:
            if path.is_file() and pattern.fullmatch(path.name):
                path.unlink(missing_ok=True)


def atlas_data(
    task: Any,
    data: str = "train",
    *,
    max_samples: int | None = None,
    hessian_samples: int = 1024,
    grid: bool = True,
) -> AtlasData:
    """The atlas's data from a task of ``experiments.tasks`` (duck-typed, not imported).

    Graph / D_LR inputs: the ``data`` split (``train``, ``test`` or ``all``), at most
    ``max_samples``; Hessian: the first ``hessian_samples`` of the train split with the task's
    loss (cross-entropy for classification, else MSE); Fourier grid: all pairs of a modular
    task whose inputs are the full ``Z_p^2`` grid (``a``-major, tokens ``(a, b, =)``).
    """
    split = {"train": task.train_idx, "test": task.test_idx, "all": None}[data]
    inputs = task.inputs if split is None else task.inputs[split]
    inputs = inputs[:max_samples] if max_samples else inputs
    idx = task.train_idx[:hessian_samples]
    classification = task.is_classification
    desc: dict[str, Any] = {
        "task": task.name, "data": data, "n_inputs": int(inputs.shape[0]),
        "loss": "cross-entropy" if classification else "mse",
        "hessian_data": "train split", "n_hessian_samples": int(idx.numel()),
    }  # fmt: skip
    fourier = grid_inputs = None
    p = task.info.get("p")
    if p and grid and task.inputs.ndim == 2 and task.inputs.shape[0] == p * p:
        grid_inputs = task.inputs
        fourier = FourierGrid(task.inputs[:, 0].numpy(), task.inputs[:, 1].numpy(), int(p))
        desc["fourier_grid"] = f"all pairs of Z_{p}^2"
    loss = F.cross_entropy if classification else F.mse_loss
    # both losses average over their batch: the Hessian's data may be cut into batches, which
    # the ranks of a process group split (the same Hessian to round-off)
    return AtlasData(
        inputs, loss, (task.inputs[idx], task.targets[idx]), grid_inputs, fourier, desc,
        loss_batch_size=HESSIAN_BATCH,
    )  # fmt: skip


def atlas_command(argv: Sequence[str] | None = None) -> int:
    """Run ``interbasis atlas``; returns the exit status (errors are printed, status 1)."""
    from experiments.checkpoint_io import load_checkpoint, task_for_checkpoint
    from graphs import GraphError
    from interbasis.errors import InterbasisError
    from interbasis.links.series import load_series

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    rank = get_shard().rank  # under torchrun every rank computes its share, rank 0 writes
    out = Path(args.out)
    created = not out.exists()
    try:
        check_writable(out)  # fail before any work
        if rank == 0:
            _remove_stale_temps(out)
        target = Path(args.target)
        # a directory is a run unless it holds a single checkpoint file (rib's layout); an
        # empty one gets load_series's message ("no checkpoints in ...")
        is_run = target.is_dir() and (
            (target / "checkpoints").exists() or not any(target.glob("*.pt"))
        )
        series = load_series(target, loader=load_checkpoint) if is_run else None
        model = series.model(len(series) - 1) if series is not None else load_checkpoint(target)
        data = atlas_data(
            task_for_checkpoint(target), args.data, max_samples=args.max_samples,
            hessian_samples=args.hessian_samples, grid=not args.no_grid,
        )  # fmt: skip
        layers = tuple(args.layers or default_node_layers(model))
        settings = AtlasSettings(
            layers, k=args.k, seed=args.seed, window=args.window, n_random=args.random,
            max_checkpoints=args.max_checkpoints,
            edge_params=args.edge_params or default_edge_params(model),
        )  # fmt: skip
        if series is not None:
            report, figures = series_report(
                series, data, settings, progress=lambda m: print(m, file=sys.stderr),
                cache_dir=out / ROWS_DIR, resume=args.resume,
            )  # fmt: skip
        else:
            report, figures = model_report(model, data, settings)
        report["title"] = f"interbasis atlas of {target.name}"
        report["settings"] = {"target": str(target), **report["settings"]}
        html_path, json_path = write_atlas(report, figures, args.out)
        if rank == 0:
            shutil.rmtree(out / ROWS_DIR, ignore_errors=True)
    except (InterbasisError, GraphError, OSError) as err:
        if created and rank == 0 and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no trace of a report that was not written
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
    if rank == 0:
        print(f"wrote {html_path} and {json_path} in {time.time() - t0:.1f} s")
    return 0
