"""Benchmark: ablation curves on mod-add, 3 node layers × 20 counts (issue 20, Speed).

Run:  python benchmarks/bench_ablation.py [--threads 2] [--dtype float32]

Bases of ``blocks.0.ln1``, ``blocks.0.ln2``, ``unembed`` (+ ``output``) are built once on
``--build-samples`` of rib's train split (timed separately); then
:func:`interbasis.ablation.ablation_curve` evaluates accuracy on all 113² pairs for 20 counts
of kept directions per layer, one layer at a time (60 ablated forward passes, plus the clean
one per batch). The target of issue 20 is under 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import torch

import interbasis as ib
from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task
from interbasis.ablation import ablation_curve

LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed"]
COUNTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32, 48, 64, 96, 128]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--build-samples", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4096)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, task = load_rib_modadd().eval(), rib_modadd_task()
    t0 = time.perf_counter()
    bases = ib.build_bases(model, task.train_inputs[: args.build_samples], [*LAYERS, "output"],
                           progress=False)  # fmt: skip
    t_build = time.perf_counter() - t0
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    t0 = time.perf_counter()
    curve = ablation_curve(model, (task.inputs, task.targets), bases, LAYERS, COUNTS, "accuracy",
                           count="kept", dtype=dtype, batch_size=args.batch_size)  # fmt: skip
    t_curve = time.perf_counter() - t0
    print(f"bases ({args.build_samples} train inputs, float64): {t_build:.1f} s")
    print(f"ablation curves, {len(LAYERS)} layers x {len(COUNTS)} counts on {len(task.inputs)} "
          f"inputs ({args.dtype}, {args.threads} threads): {t_curve:.1f} s")  # fmt: skip
    for layer in LAYERS:
        acc = ", ".join(
            f"{k}:{v:.3f}" for k, v in zip(curve.n_kept[layer], curve.values[layer], strict=True)
        )
        print(f"  {layer}: {acc}")


if __name__ == "__main__":
    main()
