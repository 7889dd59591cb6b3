"""The atlas of a modular-addition grokking run and of the shipped rib checkpoint (issue 12).

1. Train add mod p (a 1-layer transformer, AdamW with weight decay, full batch) with
   checkpoints, a setting that memorises first and generalises much later (grokking) on a
   CPU (experiments.md's setting: add mod 23, 70 % train, d = 32, AdamW lr 3e-3, weight decay
   1; 6 000 full-batch steps, a checkpoint every 250).
2. The atlas of the run (:func:`interbasis.links.series_report`): per checkpoint graph size,
   modules and stability, D_LR, top Hessian eigenvalues and the spectral gap on one time axis,
   and the deep dive of the last checkpoint (Hessian ↔ modules, D_LR ↔ modules, spectral
   edge ↔ nodes with Fourier labels over Z_p^2, against random directions).
3. The atlas of the shipped rib checkpoint (:func:`interbasis.links.model_report`; no
   training history, so its directions are the top Hessian eigenvectors).

    python -m experiments.atlas_modadd --quick      # tiny run and settings, under a minute
    python -m experiments.atlas_modadd              # the full run (minutes)
    python -m experiments.atlas_modadd --figures docs/figures   # also write links_*.png

Writes ``<out>/run`` (the training run; rerunning resumes it), ``<out>/atlas_run`` and
``<out>/atlas_rib`` (``atlas.html`` + ``atlas.json`` each) and ``<out>/atlas_modadd.json``
(the time-axis table and the key numbers of both deep dives). See docs/links.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.checkpoint_io import (
    RIB_MODADD_CHECKPOINT,
    load_checkpoint,
    load_rib_modadd,
    rib_modadd_task,
    task_for_checkpoint,
)
from experiments.train import quick_config, train
from interbasis.links import AtlasSettings, load_series, model_report, series_report, write_atlas
from interbasis.links.cli import atlas_data, default_node_layers

RIB_LAYERS = ("blocks.0.ln1", "blocks.0.ln2", "unembed", "output")
QUICK_RIB_LAYERS = ("blocks.0.ln2", "unembed", "output")


def run_config(quick: bool) -> Any:
    """The training configuration (experiments.md's grokking setting; tiny for --quick)."""
    if quick:
        return quick_config(
            frac_train=0.7, steps=120, eval_every=40, checkpoint_every=40, threads=1,
            progress=False,
        )  # fmt: skip
    return quick_config(
        frac_train=0.7, steps=6000, eval_every=50, checkpoint_every=250, threads=1,
        progress=False,
    )  # fmt: skip


def settings_for(layers: Sequence[str], quick: bool) -> AtlasSettings:
    if quick:
        return AtlasSettings(
            tuple(layers), k=2, stability_seeds=(0, 1), n_edge=2, n_random=2, top_nodes=3,
            max_checkpoints=3, lanczos_tol=1e-6,
        )  # fmt: skip
    return AtlasSettings(tuple(layers), k=5, n_random=8, max_checkpoints=12)


def atlas_of_run(out: Path, quick: bool) -> dict[str, Any]:
    """Train (or resume) the run and write its atlas; returns the report."""
    run_dir = out / "run"
    cfg = run_config(quick)
    t0 = time.time()
    result = train(cfg, run_dir, resume=True)
    print(f"run: step {result.step}, grokking step {result.grokking_step}, "
          f"memorised at {result.memorization_step}, {time.time() - t0:.1f} s")  # fmt: skip
    series = load_series(run_dir, loader=load_checkpoint)
    model = series.model(len(series) - 1)
    data = atlas_data(task_for_checkpoint(run_dir), "train", hessian_samples=1024)
    settings = settings_for(default_node_layers(model), quick)
    report, figures = series_report(series, data, settings, progress=print)
    report["title"] = f"interbasis atlas of the add mod {cfg.p} run"
    report["settings"] = {"target": str(run_dir), **report["settings"]}
    write_atlas(report, figures, out / "atlas_run")
    report["_figures"] = figures
    return report


def atlas_of_rib(out: Path, quick: bool) -> dict[str, Any]:
    """The atlas of the shipped checkpoint (rib's train split; fewer inputs for --quick)."""
    model = load_rib_modadd()
    task = rib_modadd_task()
    layers = QUICK_RIB_LAYERS if quick else RIB_LAYERS
    data = atlas_data(
        task, "train", max_samples=128 if quick else None,
        hessian_samples=64 if quick else 512, grid=not quick,
    )  # fmt: skip
    report, figures = model_report(model, data, settings_for(layers, quick))
    report["title"] = "interbasis atlas of the shipped rib checkpoint (add mod 113)"
    report["settings"] = {"target": str(RIB_MODADD_CHECKPOINT), **report["settings"]}
    write_atlas(report, figures, out / "atlas_rib")
    report["_figures"] = figures
    return report


def key_numbers(report: dict[str, Any]) -> dict[str, Any]:
    """What docs/links.md quotes from one deep dive."""
    h, e = report["hessian"], report["edge"]
    out: dict[str, Any] = {
        "graph": {k: report["graph"][k] for k in ("graph_size", "n_modules", "stability")},
        "hessian_full": [
            {k: r[k] for k in ("lambda", "coverage", "top_module", "top_share", "outside")}
            for r in h["full"]["rows"]
        ],
        "dlr": report["dlr"],
        "edge": [
            {k: r.get(k) for k in ("direction", "top_module", "mode_frequency", "match")}
            for r in e["rows"]
        ],
        "edge_controls": e.get("controls"),
    }
    if h["block"]:
        b = h["block"]
        keep = ("n_params", "method", "trace", "floor", "zero_count", "zero_invisible", "mass")
        out["hessian_block"] = {k: b.get(k) for k in keep}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run and settings (seconds)")
    p.add_argument("--out", type=Path, default=None, help="default results/atlas_modadd[/quick]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--figures", type=Path, default=None, help="also write links_*.png here")
    p.add_argument("--skip-rib", action="store_true", help="only the training run's atlas")
    args = p.parse_args(argv)
    out = args.out or Path("results/atlas_modadd" + ("/quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        run = atlas_of_run(out, args.quick)
        rib = None if args.skip_rib else atlas_of_rib(out, args.quick)
    finally:
        torch.set_num_threads(threads)
    summary = {
        "series": run["series"],
        "run": key_numbers(run),
        "rib": key_numbers(rib) if rib else None,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "atlas_modadd.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(_table(run["series"]["rows"]))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        names = {"series": "links_series", "block": "links_hessian_block", "edge": "links_edge",
                 "dlr": "links_dlr"}  # fmt: skip
        for key, name in names.items():
            if key in run["_figures"]:
                (args.figures / f"{name}.png").write_bytes(run["_figures"][key])
        if rib:
            for key, name in (("block", "links_rib_hessian_block"), ("dlr", "links_rib_dlr")):
                if key in rib["_figures"]:
                    (args.figures / f"{name}.png").write_bytes(rib["_figures"][key])
    print(f"wrote {out} in {summary['seconds']} s")
    return 0


def _table(rows: Sequence[dict[str, Any]]) -> str:
    cols = ["step", "train_acc", "test_acc", "graph_size", "n_modules", "stability", "d_lr",
            "lambda_1", "gap"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.get(c) for c in cols]
        lines.append("| " + " | ".join("" if v is None else f"{v:.4g}" for v in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
