"""Foundation speed figures (issue 3): G accumulation and M on the mod-add sections.

1. Streaming G accumulation (``GramAccumulator.update``, float64, centred pairwise merge)
   throughput as a fraction of a bare ``x.T @ x`` of the same shapes (target >= 50 %).
2. M for each section of the shipped mod-add checkpoint (batched VJPs under vmap, chunked;
   the affine fast path on) against a naive loop of one ``torch.autograd.grad`` per output
   unit on the same section and data (target >= 5x faster). Also checks both give the same M.

    python benchmarks/bench_grams.py [--n 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import time
from functools import partial

import torch

from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task
from interbasis import build_bases
from interbasis.build import node_map, prepare
from interbasis.capture import as_positions, capture, run_section
from interbasis.grams import GramAccumulator
from interbasis.jacobians import jacobian_gram

LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gram_throughput(n: int, d: int, batches: int) -> None:
    x = torch.randn(batches, n, d, dtype=torch.float64)

    def accumulate() -> None:
        acc = GramAccumulator(d)
        for b in x:
            acc.update(b)

    def bare() -> None:
        for b in x:
            torch.matmul(b.T, b)

    t_acc, t_bare = best_of(accumulate), best_of(bare)
    print(
        f"G accumulation, {batches} batches of ({n}, {d}) float64: {t_acc * 1e3:.1f} ms vs bare "
        f"matmul {t_bare * 1e3:.1f} ms -> throughput {t_bare / t_acc:.0%} of matmul"
    )


def naive_M(run, inject: str, read: str, out_map: torch.Tensor) -> torch.Tensor:
    """One autograd.grad per output unit over each batch (the reference loop)."""
    module = run.modules[inject]
    d = run.grams[inject].dim
    M = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for x in run.batches():
        acts, layouts = capture(run.model, x, {inject: module})
        f = acts[inject].detach().requires_grad_(True)
        out = as_positions(run_section(run.model, x, (inject, module), f, layouts[inject],
                                       (read, run.modules[read])))  # fmt: skip
        units = out @ out_map.to(out.dtype)  # (b, P_out, k)
        for t in range(units.shape[1]):
            for i in range(units.shape[2]):
                (g,) = torch.autograd.grad(units[:, t, i].sum(), f, retain_graph=True)
                g = g.reshape(-1, g.shape[-1])
                M += g.T @ g
        count += f.shape[0] * as_positions(f).shape[1]
    return M / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1024, help="inputs of rib's train split used for M")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    gram_throughput(4096, 128, 8)
    gram_throughput(4096, 512, 4)

    model = load_rib_modadd()
    x = rib_modadd_task().train_inputs[: args.n]
    bases = {b.name: b for b in build_bases(model, x, LAYERS, progress=False)}
    run = prepare(model, x, LAYERS, progress=False)
    from interbasis.build import accumulate_activation_grams

    accumulate_activation_grams(run, check_cuts=False)
    for inject, read in itertools.pairwise(LAYERS):
        out_map = node_map(bases[read]).to(run.device)
        section = (run.section(inject, read), run.batches, out_map)
        t_fast = best_of(partial(jacobian_gram, *section), 2)
        t_naive = best_of(partial(naive_M, run, inject, read, out_map), 1)
        err = (jacobian_gram(*section) - naive_M(run, inject, read, out_map)).abs().max()
        print(
            f"M {inject} -> {read} ({out_map.shape[1]} output units, {len(x)} inputs): "
            f"{t_fast:.2f} s vs naive per-unit autograd loop {t_naive:.2f} s -> "
            f"{t_naive / t_fast:.1f}x faster (max |difference| {float(err):.2e})"
        )


if __name__ == "__main__":
    main()
