"""Wall time of distributed builds with 1 and 2 gloo processes, and the all-reduce overhead.

Runs the mod-add build (the shipped checkpoint, 3 node layers) and a 2-layer sequence build
in ``world`` processes spawned on this machine (:func:`interbasis.distributed.spawn`), each
with one torch thread; times are measured inside the ranks, from a barrier after the imports
to the end of the build, so process start-up is not counted. The all-reduce overhead is the
time of the float64 all-reduces a build makes (Grams, M, edges of the mod-add widths).
Needs the build wiring (``build_graph(..., process_group=)``).

    python benchmarks/bench_distributed.py [--worlds 1 2] [--repeats 3] [--samples 3830]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from interbasis import build_graph
from interbasis.distributed import get_shard, spawn

SEQ_LAYERS = ["blocks.0", "blocks.1", "head", "output"]


class Mix(nn.Module):
    def __init__(self, p: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(p, p) / p**0.5)
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(torch.einsum("st,btd->bsd", self.mix, x)))


class SeqNet(nn.Module):
    def __init__(self, p: int = 16, d: int = 32) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Mix(p, d, d), Mix(p, d, d)])
        self.head = nn.Linear(d, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _case(which: str, samples: int) -> tuple[nn.Module, torch.Tensor, list[str]]:
    if which == "modadd":
        from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task

        x = rib_modadd_task().train_inputs[:samples]
        return load_rib_modadd(), x, ["blocks.0.ln2", "unembed", "output"]
    torch.manual_seed(0)
    return SeqNet().double().eval(), torch.randn(samples // 4, 16, 32).double(), SEQ_LAYERS


def build_worker(
    rank: int, world: int, which: str, samples: int, repeats: int
) -> list[tuple[float, float]]:
    """``(wall, CPU)`` seconds of each repeat on this rank."""
    torch.set_num_threads(1)
    model, data, layers = _case(which, samples)
    shard = get_shard()
    times = []
    for _ in range(repeats):
        shard.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        build_graph(model, data, layers, dtype=torch.float64, device="cpu", batch_size=256,
                    progress=False)  # fmt: skip
        cpu = time.process_time() - cpu
        shard.barrier()
        times.append((time.perf_counter() - start, cpu))
    return times


def reduce_worker(rank: int, world: int, repeats: int) -> float:
    """Seconds for one build's worth of all-reduces at the mod-add widths."""
    shard = get_shard()
    # Grams of 3 layers (129, 129, 113 wide), 2 M's, 2 edge matrices, counts and flags
    tensors = [torch.randn(d, d, dtype=torch.float64) for d in (129, 129, 113, 129, 129)]
    tensors += [torch.randn(114, 129, dtype=torch.float64), torch.randn(113, 114)]
    shard.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        for t in tensors:
            shard.sum(t)
        for _ in range(20):  # scalars: counts, spreads, stage status
            shard.any(False)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=3830)
    args = p.parse_args()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, 1 thread per rank, load average {load:.1f} on "
          f"{os.cpu_count()} cores")  # fmt: skip
    for which in ("modadd", "seq"):
        base = None
        for world in args.worlds:
            per_rank = spawn(build_worker, world, (which, args.samples, args.repeats), 3600)
            runs = list(zip(*per_rank, strict=True))  # per repeat: (wall, cpu) of each rank
            best = min(runs, key=lambda r: max(w for w, _ in r))
            wall = max(w for w, _ in best)  # the slowest rank
            cpu = sum(c for _, c in best)  # all ranks together
            base = base or (wall, cpu)
            print(f"{which:7s} world {world}: {wall:7.2f} s wall (best of {args.repeats}), "
                  f"speed-up {base[0] / wall:4.2f}x; CPU {cpu:6.2f} s over all ranks "
                  f"({cpu / base[1]:4.2f}x of one process)")  # fmt: skip
    for world in [w for w in args.worlds if w > 1]:
        t = max(spawn(reduce_worker, world, (50,), 600))
        print(f"all-reduces of one mod-add build, world {world}: {t * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
