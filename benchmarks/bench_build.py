"""Whole mod-add build (Grams, interaction bases, squared edges; 4 node layers, float64).

Target (graph issue): <= 13 s wall and < 2 GiB peak memory on the 2-core CI machine for
rib's train split of 3 830 inputs (rib itself: 26 s, 2.1 GiB there). Prints wall and CPU
seconds and the peak resident memory of this process; run it on an otherwise idle machine.

    python benchmarks/bench_build.py [--batch-size N] [--memory-budget MiB] [--cache MiB]
    python benchmarks/bench_build.py --repeat 2 --data-multiple 2   # memory vs dataset size
    python benchmarks/bench_build.py --device cuda --repeat 3       # GPU throughput

Also prints the throughput (inputs per second of the whole build).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task
from interbasis import build_graph

LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--memory-budget", type=int, default=None, help="MiB per VJP chunk")
    p.add_argument("--cache", type=int, default=None, help="MiB of cached Jacobians")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-multiple", type=int, default=1, help="repeat the train split k times")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (accumulation in float64)")
    p.add_argument("--tune-allocator", action="store_true", help="interbasis.performance")
    args = p.parse_args()
    if args.tune_allocator:
        from interbasis.performance import tune_allocator

        print("tune_allocator:", tune_allocator())
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_rib_modadd()
    x = rib_modadd_task().train_inputs.repeat(args.data_multiple, 1)
    kwargs: dict[str, object] = {"device": args.device}
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size
    if args.memory_budget:
        kwargs["memory_budget"] = args.memory_budget * 2**20
    if args.cache is not None:
        kwargs["jacobian_cache"] = args.cache * 2**20
    for _ in range(args.repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        graph = build_graph(model, x, LAYERS, dtype=torch.float64, progress=False, **kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(
            f"inputs {len(x)}  threads {torch.get_num_threads()}  {kwargs}  "
            f"wall {wall:.1f} s  cpu {cpu:.1f} s  {len(x) / wall:.0f} inputs/s  "
            f"peak RSS {peak:.2f} GiB  "
            f"nodes {[layer.size for layer in graph.layers]}"
        )


if __name__ == "__main__":
    main()
