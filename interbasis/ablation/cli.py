"""``interbasis ablate CHECKPOINT --layers ... --out DIR``: ablation curves as CSV + PNG.

Bases of the node layers (plus ``"output"``) are built on the checkpoint's train split
(``--build-samples``), in each basis of ``--bases``; then accuracy (classification) or R²
(regression) is evaluated on ``--data`` against the number of non-constant directions kept
(one layer at a time, :func:`interbasis.ablation.ablation_curve`). Writes
``ablation_curves.csv`` (basis, layer, n_kept, n_ablated, value, baseline) and
``ablation_curves.png``. The checkpoint and its task come from ``experiments`` (imported
inside the command, as the CLI layer may).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DEFAULT_COUNTS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interbasis ablate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="TransformerLens state dict (config.yaml beside it) or "
                   "training checkpoint")  # fmt: skip
    p.add_argument("--layers", nargs="+", required=True, help="node layers to ablate (module "
                   "names in forward order; not output)")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--bases", nargs="+", default=["interaction", "pca", "neuron"],
                   choices=["interaction", "pca", "neuron"])  # fmt: skip
    p.add_argument("--data", default="train", choices=["train", "test", "all"])
    p.add_argument("--build-samples", type=int, default=None, help="train inputs for the bases")
    p.add_argument("--counts", type=int, nargs="+", default=list(DEFAULT_COUNTS),
                   help="directions kept")  # fmt: skip
    p.add_argument("--mode", default="zero", choices=["zero", "mean"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="of the ablated forward passes (bases are always float64)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _plot(rows: list[dict[str, Any]], layers: Sequence[str], ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for kind in dict.fromkeys(r["basis"] for r in rows):
            pts = sorted((r["n_kept"], r["value"]) for r in rows
                         if r["basis"] == kind and r["layer"] == layer)  # fmt: skip
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=kind)
        ax.set_xscale("symlog", linthresh=16)
        ax.set_title(layer)
        ax.set_xlabel("non-constant directions kept")
    axes[0, 0].set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def ablate_command(argv: Sequence[str] | None = None) -> int:
    """Run ``interbasis ablate``; returns the exit status (errors printed, status 1)."""
    from experiments.checkpoint_io import load_checkpoint, task_for_checkpoint
    from graphs import GraphError
    from interbasis.ablation.curves import ablation_curve
    from interbasis.build import build_bases
    from interbasis.errors import InterbasisError

    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if any(c < 0 for c in args.counts):
        parser.error(f"--counts must be >= 0, got {args.counts}")
    if "output" in args.layers:
        parser.error('--layers: "output" cannot be ablated (it is what the metric reads)')
    if args.build_samples is not None and args.build_samples < 2:
        parser.error(f"--build-samples must be >= 2, got {args.build_samples}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        model = load_checkpoint(Path(args.checkpoint)).eval()
        task = task_for_checkpoint(Path(args.checkpoint))
        build = task.train_inputs[: args.build_samples]
        data = task.split(args.data)
        metric = "accuracy" if task.is_classification else "r2"
        dtype = torch.float32 if args.dtype == "float32" else torch.float64
        rows: list[dict[str, Any]] = []
        for kind in args.bases:
            bases = build_bases(model, build, [*args.layers, "output"], basis=kind,
                                progress=False)  # fmt: skip
            curve = ablation_curve(
                model, data, bases, args.layers, args.counts, metric, count="kept",
                mode=args.mode, dtype=dtype, batch_size=args.batch_size,
            )  # fmt: skip
            rows += [{"basis": kind, **{k: v for k, v in r.items() if k != "curve"}}
                     for r in curve.rows()]  # fmt: skip
            print(f"{kind}: {time.time() - t0:.1f} s", file=sys.stderr)
        _write_csv(rows, out / "ablation_curves.csv")
        _plot(rows, args.layers, metric, out / "ablation_curves.png")
    except (InterbasisError, GraphError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {out / 'ablation_curves.csv'} and {out / 'ablation_curves.png'} "
          f"in {time.time() - t0:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(ablate_command())
