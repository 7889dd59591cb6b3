"""D_LR across grokking: modular division mod 97 with a 2-layer transformer (seed 001 Table 3).

Seed 001 reports D_LR = 0.51 at step 200 (test accuracy 5.2 %) and 0.11 at step 3000
(99.8 %). This script trains the setup (approximated with our TransformerLens-style model,
see docs/richness.md), records D_LR on the train and test sets at every evaluation with
:class:`interbasis.richness.RichnessTracker`, and reports D_LR at the memorisation point
(train accuracy >= 0.99, test accuracy still low) and after grokking.

Usage::

    python -m experiments.dlr_grokking --weight-decay 1.0 --out results/dlr_grokking_wd1
    python -m experiments.dlr_grokking --weight-decay 0 --out results/dlr_grokking_wd0
    python -m experiments.dlr_grokking --report results/dlr_grokking_wd0 results/dlr_grokking_wd1

A killed run continues with ``--resume``. ``--quick`` (seconds, for tests) and
``--preset small`` (p = 31, minutes; it memorises but did not generalise within its 4 000
updates, see docs/richness.md) shrink the setup.

``--model seed001`` (issue 21) trains the seed's own model (:mod:`experiments.seed001_model`)
on its ``[x, op, y, eq]`` data for 3 000 updates; ``--loss``, ``--optimizer``,
``--weight-decay`` and ``--seed`` pick a grid cell (default: the cell closest to the seed's
timeline, :data:`SEED001_DEFAULT`), and ``--grid-report RUN_DIR ...`` writes the grid table
and the Fig. 12-style figure::

    python -m experiments.dlr_grokking --model seed001 --seed 0 --out results/s001_ce_adamw_s0
    python -m experiments.dlr_grokking --model seed001 --grid-report results/s001_*
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
import torch
from torch import nn

from experiments.checkpoint_io import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_training_checkpoint,
)
from experiments.models import Transformer
from experiments.run_dir import read_metrics
from experiments.tasks import Task
from experiments.train import TrainConfig, build_task, train
from interbasis import Callback
from interbasis.plotting.richness import plot_feature_view, plot_richness_history
from interbasis.richness import RichnessTracker, collect_features, feature_view

MEMORISED = 0.99  # train accuracy that counts as memorised (issue 9)
LOW_TEST = 0.5  # ... while test accuracy is still below this
GROKKED = 0.99  # test accuracy that counts as generalised

PRESETS: dict[str, dict[str, Any]] = {
    # seed 001 / teddykoker: div mod 97, 50 % split, width 128, 4 heads, d_mlp 512, GELU, final
    # LN, Adam(W) lr 1e-3, betas (0.9, 0.98), batch 512, 10 warm-up steps, MSE on one-hot.
    "full": dict(p=97, steps=12000, eval_every=100, checkpoint_every=500),
    "small": dict(
        p=31,
        d_model=64,
        n_heads=4,
        d_head=16,
        d_mlp=256,
        lr=3e-3,
        steps=4000,
        eval_every=100,
        checkpoint_every=1000,
        batch_size=None,
    ),
    "quick": dict(
        p=23,
        d_model=32,
        n_heads=2,
        d_head=16,
        d_mlp=64,
        lr=3e-3,
        steps=60,
        eval_every=20,
        checkpoint_every=30,
        batch_size=None,
    ),
}


# Seed 001's own model and data (issue 21): experiments.seed001_model on [x, op, y, eq].
SEED001: dict[str, Any] = dict(
    task="div_seq", model="seed001", p=97, frac_train=0.5, n_layers=2, d_model=128, n_heads=4,
    d_mlp=512, lr=1e-3, betas=(0.9, 0.98), warmup_steps=10, batch_size=512, steps=3000,
    eval_every=100, checkpoint_every=1000, checkpoint_steps=[200, 3000], threads=1,
    progress=False,
)  # fmt: skip
# The grid cell closest to the seed's timeline (docs/richness.md, issue 21 grid): cross-entropy
# with AdamW and weight decay 1 (the seed code's "paper setting", not the seed's MSE).
SEED001_DEFAULT: dict[str, Any] = dict(loss="ce", optimizer="adamw", weight_decay=1.0)


def seed001_config(**overrides: Any) -> TrainConfig:
    """Seed 001's grokking setup on its own model; ``overrides`` pick the grid cell / seed."""
    return TrainConfig(**{**SEED001, **SEED001_DEFAULT, **overrides})


def config(preset: str = "full", weight_decay: float = 1.0, **overrides: Any) -> TrainConfig:
    """The training configuration of a preset (``full`` reproduces the seed's setting)."""
    base: dict[str, Any] = dict(
        task="div", frac_train=0.5, n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512,
        act_fn="gelu", normalization_type="LN", optimizer="adamw", lr=1e-3, betas=(0.9, 0.98),
        warmup_steps=10, loss="mse", batch_size=512, threads=1, progress=False,
    )  # fmt: skip
    return TrainConfig(**{**base, **PRESETS[preset], "weight_decay": weight_decay, **overrides})


class FreezeHeadBias(Callback):
    """Keep ``unembed.b_U`` at zero and out of the update: the seed's head has no bias."""

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        bias = cast(nn.Parameter, model.get_submodule("unembed").b_U)
        with torch.no_grad():
            bias.zero_()
        bias.requires_grad_(False)  # no gradient -> AdamW skips it (update and decay)


def init_like_seed_code(model: Transformer, seed: int) -> None:
    """Re-draw the weights as teddykoker/grokking's PyTorch defaults do (seed 001's code base).

    Embeddings ~ N(0, 1) (``nn.Embedding``); attention in-projections Xavier-uniform with zero
    biases (``nn.MultiheadAttention``); the other ``nn.Linear`` weights and biases
    ~ U(±1/√fan_in); unbiased head. Our TransformerLens default, N(0, (0.8/√d)²) everywhere,
    gives embeddings 14× smaller; with them the model generalises while it memorises (no
    grokking delay, see docs/richness.md).
    """
    d, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    bounds = {  # U(±bound): nn.Linear's default is 1/sqrt(fan_in) for weight and bias
        "W_Q": math.sqrt(6 / (d + 3 * d)),  # Xavier-uniform on the (3d, d) in_proj
        "W_K": math.sqrt(6 / (d + 3 * d)),
        "W_V": math.sqrt(6 / (d + 3 * d)),
        "W_O": 1 / math.sqrt(d),
        "W_in": 1 / math.sqrt(d),
        "b_in": 1 / math.sqrt(d),
        "W_out": 1 / math.sqrt(d_mlp),
        "b_out": 1 / math.sqrt(d_mlp),
        "W_U": 1 / math.sqrt(d),
    }
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("W_E", "W_pos"):
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
            elif leaf in bounds:
                unit = torch.rand(param.shape, generator=gen, dtype=torch.float64) * 2 - 1
                param.copy_(unit * bounds[leaf])
            # attention and head biases stay 0, LayerNorm weights (1, 0)


class SeedCodeInit(Callback):
    """Apply :func:`init_like_seed_code` once, on a fresh start (not again on resume)."""

    def __init__(self, seed: int) -> None:
        self.seed, self.done = seed, False

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self.done:
            init_like_seed_code(cast(Transformer, model), self.seed)
            self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state["done"])


def make_tracker(task: Task, every: int) -> RichnessTracker:
    """D_LR and baselines on the full train and test splits; Φ = the input of ``unembed``."""
    return RichnessTracker(
        {"train": task.split("train"), "test": task.split("test")},
        feature_module="unembed",
        every=every,
    )


def with_metrics(run_dir: Path, history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tracker records merged with the run's ``metrics.jsonl`` record of the same step."""
    metrics = {r["step"]: r for r in read_metrics(run_dir)}
    return [{**metrics.get(r["step"], {}), **r} for r in history]


def run(cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> list[dict[str, Any]]:
    """Train (or resume) one run; write and return ``richness.jsonl`` records per step."""
    out = Path(out_dir)
    task = build_task(cfg)
    tracker = make_tracker(task, cfg.eval_every)
    callbacks: list[Callback] = [tracker]  # seed001 draws the seed code's init itself
    if cfg.model == "transformer":
        callbacks = [SeedCodeInit(cfg.seed), FreezeHeadBias(), tracker]  # order: init first
    train(cfg, out, callbacks=callbacks, resume=resume)
    records = with_metrics(out, tracker.history)
    (out / "richness.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of a run: ``richness.jsonl`` when the run finished, else (a killed or running
    run) the tracker history in its latest checkpoint, merged with ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    done = run_dir / "richness.jsonl"
    if done.is_file():
        return [json.loads(line) for line in done.read_text().splitlines()]
    ckpt = read_training_checkpoint(latest_checkpoint(run_dir))
    names = ckpt["extra"]["callback_names"]
    if "RichnessTracker" not in names:
        raise FileNotFoundError(f"{run_dir}: no richness.jsonl and no RichnessTracker state")
    history = ckpt["extra"]["callbacks"][names.index("RichnessTracker")]["history"]
    return with_metrics(run_dir, history)


def key_points(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """D_LR at the memorisation point, its peak while memorising, after grokking, at the end.

    ``memorisation``: first record with train accuracy >= 0.99 and test accuracy < 0.5.
    ``peak_memorising``: largest test D_LR among records that fit at least half of the train
    set but not half of the test set (after the early plateau, where outputs are nearly
    uniform and D_LR collapses, and before generalisation). ``grokking``: first record with
    test accuracy >= 0.99. Ratios divide a "before" value by the final test D_LR.
    """
    by_step = sorted(records, key=lambda r: r["step"])

    def acc(r: dict[str, Any], split: str) -> float:
        return float(r.get(f"{split}_acc") or 0.0)

    memorised = [r for r in by_step if acc(r, "train") >= MEMORISED and acc(r, "test") < LOW_TEST]
    memorising = [r for r in by_step if acc(r, "train") >= 0.5 and acc(r, "test") < LOW_TEST]
    grok = next((r for r in by_step if acc(r, "test") >= GROKKED), None)
    last = by_step[-1]
    out: dict[str, Any] = {"final": _point(last)}
    before = {}
    if memorised:
        out["memorisation"] = before["memorisation"] = _point(memorised[0])
    if memorising:
        peak = max(memorising, key=lambda r: r["test/d_lr"])
        out["peak_memorising"] = before["peak_memorising"] = _point(peak)
    if grok is not None:
        out["grokking"] = _point(grok)
        for name, point in before.items():
            out[f"test_d_lr_ratio_{name}_to_final"] = point["test/d_lr"] / last["test/d_lr"]
    for step in (200, 2000, 3000, 30000):  # the seed's steps 200 / 3000, as updates or epochs
        match = [r for r in by_step if r["step"] == step]
        if match:
            out[f"step_{step}"] = _point(match[0])
    return out


def _point(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("step", "train_acc", "test_acc", "train/d_lr", "test/d_lr", "test/d_lr_projection",
            "test/s_init", "test/nc1", "test/tr_sigma_w", "param_norm_sq")  # fmt: skip
    return {k: r.get(k) for k in keys}


def spectral_views(run_dir: Path, steps: Sequence[int]) -> dict[str, Any]:
    """Feature views (ρ_k, Π*, Π̂) from the checkpoints nearest to ``steps`` (at or before)."""
    cfg = TrainConfig(**json.loads((run_dir / "run.json").read_text())["config"])
    task = build_task(cfg)
    ckpts = list_checkpoints(run_dir)
    views = {}
    for step in steps:
        before = [(s, path) for s, path in ckpts if s <= step]
        if not before:
            continue
        s, path = before[-1]
        model = load_checkpoint(path)
        phi_tr, _ = collect_features(model, task.train_inputs, "unembed")
        phi_te, out_te = collect_features(model, task.test_inputs, "unembed")
        onehot = nn.functional.one_hot(task.test_targets, out_te.shape[1]).double()
        views[f"step {s}"] = feature_view(phi_tr, phi_te, onehot, out_te)
    return views


def report(run_dirs: Sequence[str | Path], figure_dir: str | Path) -> dict[str, Any]:
    """Figure (accuracies + D_LR per run, spectral views) and JSON of the reported numbers."""
    runs = {}
    for run_dir in map(Path, run_dirs):
        records = load_records(run_dir)
        wd = json.loads((run_dir / "run.json").read_text())["config"]["weight_decay"]
        runs[f"weight decay {wd:g}"] = (run_dir, records)
    n = len(runs)
    fig, axes = plt.subplots(2, max(n, 3), figsize=(5 * max(n, 3), 8), constrained_layout=True)
    summary: dict[str, Any] = {}
    for i, (name, (run_dir, records)) in enumerate(runs.items()):
        points = key_points(records)
        summary[name] = {"run_dir": str(run_dir), **points}
        steps = [r["step"] for r in records]
        marks: dict[str, float] = {
            k: points[k]["step"] for k in ("memorisation", "grokking") if k in points
        }
        plot_richness_history(
            steps,
            {
                "D_LR train": [r["train/d_lr"] for r in records],
                "D_LR test": [r["test/d_lr"] for r in records],
            },
            {
                "train acc": [r["train_acc"] for r in records],
                "test acc": [r["test_acc"] for r in records],
            },
            marks=marks,
            ax=axes[0, i],
        )
        axes[0, i].set_title(f"div mod p, {name}")
    if n < axes.shape[1]:  # a free slot: test-set D_LR of every run on one axis
        for name, (_, records) in runs.items():
            axes[0, n].semilogy([r["step"] for r in records], [r["test/d_lr"] for r in records],
                                label=name)  # fmt: skip
        axes[0, n].set(title="test-set D_LR", xlabel="step (optimizer updates)", ylabel="D_LR")
        axes[0, n].legend(fontsize=8)
        axes[0, n].grid(alpha=0.3)
    for ax in axes[0, n + 1 :]:
        ax.axis("off")
    grokked = [(name, run) for name, run in runs.items() if "grokking" in summary[name]]
    if grokked:
        name, (run_dir, _) = grokked[-1]
        first = summary[name].get("memorisation") or summary[name].get("peak_memorising")
        view_steps = [first["step"], summary[name]["final"]["step"]] if first else []
        views = spectral_views(run_dir, view_steps)
        plot_feature_view(views, max_k=64, axes=list(axes[1, :3]))
        axes[1, 0].set_ylabel(f"{name}: memorisation vs end")
    for ax in axes[1, (3 if grokked else 0) :]:
        ax.axis("off")
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure_dir / "dlr_grokking.png", dpi=110)
    plt.close(fig)
    (figure_dir / "dlr_grokking.json").write_text(json.dumps(summary, indent=1))
    return summary


SEED_TIMELINE = {"train_acc@200": 1.0, "test_acc@200": 0.052, "test_acc@3000": 0.998}
SEED_D_LR = {"200": (0.51, 0.04), "3000": (0.11, 0.01)}  # seed 001 Table 8, mean ± std


def cell_name(cfg: dict[str, Any]) -> str:
    """``"mse / adam wd 0"`` from a run's config."""
    return f"{cfg['loss']} / {cfg['optimizer']} wd {cfg['weight_decay']:g}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def grid_summary(
    run_dirs: Sequence[str | Path], steps: Sequence[int] = (200, 2000, 3000)
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Per grid cell: per-seed records and mean ± std of accuracies and D_LR at ``steps``.

    ``distance`` ranks cells against the seed's timeline (100 % train / 5.2 % test at step 200,
    99.8 % test at 3000): the sum of the absolute gaps of the mean accuracies (1 = missing).
    """
    cells: dict[str, dict[str, Any]] = {}
    for run_dir in map(Path, run_dirs):
        cfg = json.loads((run_dir / "run.json").read_text())["config"]
        cell = cells.setdefault(cell_name(cfg), {"config": cfg, "runs": {}})
        cell["runs"][cfg["seed"]] = (str(run_dir), load_records(run_dir))
    out: dict[str, Any] = {}
    for name, cell in sorted(cells.items()):
        entry: dict[str, Any] = {"seeds": sorted(cell["runs"])}
        for step in steps:
            at = [r for _, recs in cell["runs"].values() for r in recs if r["step"] == step]
            if not at:
                continue
            entry[str(step)] = (
                {"n_seeds": len(at)}
                | {
                    key: _mean_std([float(r[key]) for r in at])
                    for key in ("train_acc", "test_acc", "train/d_lr", "test/d_lr")
                }
                | {"per_seed": [_point(r) for r in at]}
            )
        points = [key_points(recs) for _, recs in cell["runs"].values()]
        memorised = [p["memorisation"] for p in points if "memorisation" in p]
        if memorised:  # first record with train acc >= 0.99 and test acc < 0.5
            entry["memorisation"] = {"n_seeds": len(memorised)} | {
                key: _mean_std([float(m[key]) for m in memorised])
                for key in ("step", "train_acc", "test_acc", "train/d_lr", "test/d_lr")
            }
        entry["distance"] = 0.0
        for key, target in SEED_TIMELINE.items():
            metric, at_step = key.split("@")
            gap = abs(entry[at_step][metric][0] - target) if at_step in entry else 1.0
            entry["distance"] += gap
        out[name] = entry
    return out, cells


def grid_markdown(result: dict[str, Any]) -> str:
    """The docs table of :func:`grid_report`'s result: mean ± std over seeds per cell."""
    lines = [
        "| cell (loss / optimizer, weight decay) | step | seeds | train acc | test acc "
        "| D_LR train | D_LR test |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cell in result["cells"].items():
        for step in ("200", "memorisation", "2000", "3000"):
            if step not in cell:
                continue
            c = cell[step]
            stats = [f"{c[k][0]:.3f} ± {c[k][1]:.3f}"
                     for k in ("train_acc", "test_acc", "train/d_lr", "test/d_lr")]  # fmt: skip
            when = f"memorised ({c['step'][0]:.0f})" if step == "memorisation" else step
            lines.append(f"| {name} | {when} | {c['n_seeds']} | " + " | ".join(stats) + " |")
    lines.append("| seed 001 (Table 8) | 200 / 3000 | ≥ 3 | 1.00 / – | 0.052 / 0.998 | – "
                 "| 0.51 ± 0.04 / 0.11 ± 0.01 |")  # fmt: skip
    return "\n".join(lines)


def grid_report(run_dirs: Sequence[str | Path], figure_dir: str | Path) -> dict[str, Any]:
    """Seed 001 Fig. 12-style figure and ``seed001_grid.json`` (:func:`grid_summary`).

    Top row, one panel per cell: train/test accuracy and D_LR over steps, averaged over the
    cell's runs that reached its last step. Bottom row: the spectral view (ρ_k, Π*, Π̂) of the
    cell closest to the seed's timeline, first seed, at steps 200 and 3000 (its checkpoints).
    """
    summary, cells = grid_summary(run_dirs)
    closest = min(summary, key=lambda k: summary[k]["distance"]) if summary else None
    n = max(len(cells), 3)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 8), constrained_layout=True, squeeze=False)
    for ax, (name, cell) in zip(axes[0], sorted(cells.items()), strict=False):
        runs = [recs for _, recs in cell["runs"].values()]
        last = max(recs[-1]["step"] for recs in runs)
        runs = [recs for recs in runs if recs[-1]["step"] == last]
        steps = sorted(set.intersection(*({r["step"] for r in recs} for recs in runs)))

        def mean(key: str, runs: list = runs, steps: list = steps) -> list[float]:
            return [sum(float(next(r[key] for r in recs if r["step"] == s)) for recs in runs)
                    / len(runs) for s in steps]  # fmt: skip

        plot_richness_history(
            steps,
            {"D_LR train": mean("train/d_lr"), "D_LR test": mean("test/d_lr")},
            {"train acc": mean("train_acc"), "test acc": mean("test_acc")},
            marks={"step 200": 200, "step 3000": 3000},
            ax=ax,
        )
        ax.set_title(f"{name} (mean of {len(runs)} seed{'s' * (len(runs) > 1)})", fontsize=10)
    for ax in axes[0, len(cells) :]:
        ax.axis("off")
    if closest is not None:
        run_dir = Path(cells[closest]["runs"][min(cells[closest]["runs"])][0])
        plot_feature_view(spectral_views(run_dir, [200, 3000]), max_k=99, axes=list(axes[1, :3]))
        axes[1, 0].set_ylabel(f"{closest}, first seed")
    for ax in axes[1, 3 if closest is not None else 0 :]:
        ax.axis("off")
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure_dir / "seed001_grid.png", dpi=110)
    plt.close(fig)
    result = {"closest_to_seed": closest, "seed_timeline": SEED_TIMELINE, "seed_d_lr": SEED_D_LR,
              "cells": summary}  # fmt: skip
    tmp = figure_dir / ".seed001_grid.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(figure_dir / "seed001_grid.json")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.dlr_grokking",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", help="run directory (training mode)")
    parser.add_argument("--model", choices=("transformer", "seed001"), default="transformer",
                        help="seed001: the seed's own model and data (issue 21)")  # fmt: skip
    parser.add_argument("--weight-decay", type=float, help="default 1 (seed001: its cell's)")
    parser.add_argument("--loss", choices=("ce", "mse"), help="seed001 only")
    parser.add_argument("--optimizer", choices=("adam", "adamw"), help="seed001 only")
    parser.add_argument("--seed", type=int, default=0, help="seed001: init and batch order")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--steps", type=int, help="override the preset's number of updates")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--report", nargs="+", metavar="RUN_DIR", help="report on finished runs")
    parser.add_argument("--grid-report", nargs="+", metavar="RUN_DIR",
                        help="seed001 grid: table JSON and Fig. 12-style figure")  # fmt: skip
    parser.add_argument("--figure-dir", default="docs/figures")
    args = parser.parse_args(argv)
    if args.grid_report:
        result = grid_report(args.grid_report, args.figure_dir)
        print(json.dumps({k: v["distance"] for k, v in result["cells"].items()}, indent=1))
        print(f"closest to the seed's timeline: {result['closest_to_seed']}")
        print(grid_markdown(result))
        return 0
    if args.report:
        print(json.dumps(report(args.report, args.figure_dir), indent=1))
        return 0
    if not args.out:
        parser.error("--out is required unless --report is given")
    preset = "quick" if args.quick else args.preset
    if args.model == "seed001":
        cell = {"loss": args.loss, "optimizer": args.optimizer, "weight_decay": args.weight_decay}
        cell = {k: v for k, v in cell.items() if v is not None}
        cfg = seed001_config(**cell, seed=args.seed, device=args.device)
    else:
        wd = 1.0 if args.weight_decay is None else args.weight_decay
        cfg = config(preset, wd, device=args.device)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    print(json.dumps({"config": asdict(cfg)}))
    records = run(cfg, args.out, resume=args.resume)
    print(json.dumps(key_points(records), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
