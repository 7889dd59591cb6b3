"""Faithfulness of the mod-add graph: ablation curves and edges needed (issue 20).

On the shipped rib checkpoint (1-layer ReLU transformer, (a + b) mod 113), bases of
``blocks.0.ln1``, ``blocks.0.ln2``, ``unembed`` (and ``output``, neuron basis) are built in the
interaction, PCA and neuron bases on rib's train split (float64, centred). Then:

* **ablation curves** (:func:`interbasis.ablation.ablation_curve`, one layer at a time, zero
  ablation, forward passes in float32 as rib's ablation config): accuracy on all 113² pairs
  and on rib's train split against the number of non-constant directions *kept* (the
  constant direction is always kept and not counted; rib counts it, so rib's n = ours + 1);
* **directions needed**: the fewest kept directions with accuracy >= 0.999, per layer/basis;
* **edges needed** (:func:`interbasis.ablation.edges_needed`): per section, the fewest edges
  of the graph in that basis keeping train-split accuracy within 1 % (0.01) of the
  unablated model, by log-midpoint bisection.

    python -m experiments.ablation_modadd --quick      # seconds (small data, one section)
    python -m experiments.ablation_modadd              # minutes

Writes ``<out>/ablation_modadd.json``, ``ablation_modadd_curves.csv`` and
``ablation_modadd.png``. See docs/faithfulness.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import interbasis as ib
from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task
from interbasis.ablation import ablation_curve, edges_needed

LAYERS = ("blocks.0.ln1", "blocks.0.ln2", "unembed")
NODE_LAYERS = (*LAYERS, "output")
BasisName = Literal["interaction", "pca", "neuron"]
BASES: tuple[BasisName, ...] = ("interaction", "pca", "neuron")
RIB_ANCHOR = {"blocks.0.ln1": 13, "blocks.0.ln2": 17, "unembed": 9}  # rib's n, constant included
HIGH = 0.999  # "reaches >= 0.999 accuracy"
CHANCE = 1 / 113


@dataclass(frozen=True)
class Settings:
    n_build: int  # train inputs the bases and graphs are built on
    n_eval: int | None  # inputs evaluated (None = all pairs / the whole train split)
    counts: tuple[int, ...]  # directions kept
    edge_sections: tuple[int, ...]  # sections for edges_needed
    edge_tolerance: float
    edge_bases: tuple[BasisName, ...]  # bases whose graphs get edges_needed
    n_edge_eval: int | None  # train inputs for edges_needed (None = the whole split)


QUICK = Settings(128, 512, (0, 2, 8, 32, 128), (1,), 0.01, ("interaction",), 128)
FULL = Settings(
    3830, None, (*range(0, 21), 24, 28, 32, 40, 48, 64, 96, 128), (0, 1, 2), 0.01, BASES, None
)


def _first(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if n is None else (x[:n], y[:n])


def directions_needed(kept: list[int], values: list[float], level: float) -> int | None:
    """Fewest kept directions from which the accuracy stays >= ``level`` (None if never)."""
    for i in range(len(kept)):
        if all(v >= level for v in values[i:]):
            return kept[i]
    return None


def run(s: Settings, out: Path) -> dict[str, Any]:
    model, task = load_rib_modadd().eval(), rib_modadd_task()
    build = task.train_inputs[: s.n_build]
    evals = {
        "all": _first(task.inputs, task.targets, s.n_eval),
        "train": _first(task.train_inputs, task.train_targets, s.n_eval),
    }
    result: dict[str, Any] = {"settings": asdict(s), "curves": {}, "needed": {}, "edges": {}}
    rows: list[dict[str, Any]] = []
    for kind in BASES:
        started = time.time()
        bases = ib.build_bases(model, build, NODE_LAYERS, basis=kind, progress=False)
        result["curves"][kind] = {}
        result.setdefault("sizes", {})[kind] = {b.name: b.n_nodes for b in bases}
        for split, data in evals.items():
            t0 = time.time()
            curve = ablation_curve(
                model, data, bases, LAYERS, s.counts, "accuracy", count="kept",
                dtype=torch.float32, batch_size=4096,
            )  # fmt: skip
            seconds = time.time() - t0
            per = {
                layer: {"kept": curve.n_kept[layer], "accuracy": curve.values[layer].tolist()}
                for layer in LAYERS
            }
            result["curves"][kind][split] = dict(layers=per, baseline=curve.baseline,
                                                 seconds=round(seconds, 2))  # fmt: skip
            for r in curve.rows():
                rows.append({"basis": kind, "split": split, **r})
            result["needed"].setdefault(kind, {})[split] = {
                layer: directions_needed(p["kept"], p["accuracy"], HIGH) for layer, p in per.items()
            }
            print(f"{kind} {split}: {seconds:.1f} s, needed {result['needed'][kind][split]}",
                  flush=True)  # fmt: skip
        edges: dict[str, Any] = {}
        result["edges"][kind] = edges
        if kind not in s.edge_bases:
            continue
        graph = ib.build_graph(model, build, NODE_LAYERS, basis=kind, bases=bases,
                               progress=False)  # fmt: skip
        edge_data = _first(task.train_inputs, task.train_targets, s.n_edge_eval)
        for sec in s.edge_sections:
            need = edges_needed(
                model, edge_data, graph, s.edge_tolerance, bases=bases, section=sec,
                metric="accuracy", dtype=torch.float32, batch_size=4096,
            )  # fmt: skip
            for name in need.needed:
                edges[name] = dict(
                    needed=need.needed[name],
                    n_edges=need.n_edges[name],
                    baseline=need.baseline,
                    evaluated={str(k): v for k, v in need.evaluated[name].items()},
                )
        print(f"{kind}: edges needed { {k: v['needed'] for k, v in edges.items()} }, "
              f"{time.time() - started:.0f} s", flush=True)  # fmt: skip
    write_csv(rows, out / "ablation_modadd_curves.csv")
    return result


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def plot(result: dict[str, Any], path: Path) -> None:
    splits = list(next(iter(result["curves"].values())))
    fig, axes = plt.subplots(len(splits), len(LAYERS), figsize=(4 * len(LAYERS), 3.2 * len(splits)),
                             squeeze=False, sharey=True)  # fmt: skip
    for r, split in enumerate(splits):
        for c, layer in enumerate(LAYERS):
            ax = axes[r, c]
            for kind, per in result["curves"].items():
                p = per[split]["layers"][layer]
                ax.plot(p["kept"], p["accuracy"], marker=".", label=kind)
            ax.axvline(RIB_ANCHOR[layer] - 1, color="grey", ls=":", lw=1)
            ax.axhline(CHANCE, color="grey", lw=0.5)
            ax.set_xscale("symlog", linthresh=20)
            ax.set_title(f"{layer} ({split})")
            ax.set_xlabel("non-constant directions kept")
            if c == 0:
                ax.set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def table(result: dict[str, Any]) -> str:
    """Markdown: directions kept for >= 0.999 (all pairs / train) and edges needed."""
    lines = ["| basis | layer | directions for ≥ 0.999 (all / train) | edges needed (of) |",
             "|---|---|---|---|"]  # fmt: skip
    for kind in result["curves"]:
        for layer in LAYERS:
            need = [result["needed"][kind][sp][layer] for sp in result["curves"][kind]]
            e = result["edges"].get(kind, {}).get(layer)
            edges = f"{e['needed']} ({e['n_edges']})" if e else "–"
            lines.append(f"| {kind} | {layer} | {' / '.join(map(str, need))} | {edges} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, one section")
    parser.add_argument("--out", default="results/ablation_modadd", help="output directory")
    parser.add_argument("--figures", default=None, help="also copy the PNG here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-edges", action="store_true", help="curves only (no edges_needed)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"cannot create --out {out}: {err}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        settings = QUICK if args.quick else FULL
        result = run(replace(settings, edge_bases=()) if args.no_edges else settings, out)
    finally:
        torch.set_num_threads(threads)
    result["settings"]["quick"] = args.quick
    tmp = out / "ablation_modadd.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "ablation_modadd.json")
    plot(result, out / "ablation_modadd.png")
    print(table(result))
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "ablation_modadd.png", Path(args.figures) / "ablation_modadd.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
