"""Benchmark: training throughput of the 1-layer mod-113 transformer at batch 10 000 (issue 4).

Run:  python benchmarks/bench_train.py [--steps 20] [--threads N] [--device cpu|cuda]

The model is rib's checkpoint architecture (d_model 128, 4 heads, d_mlp 512, ReLU, no
normalisation). Exactly 10 000 of the 113² pairs are training data, so every step of both
paths processes 10 000 examples. Prints steps per wall second and per CPU second (the latter
is robust to other load on a shared machine) of (a) a bare forward + backward + AdamW loop on
one fixed batch and (b) the full harness (`experiments.train.train`, with one evaluation and
one checkpoint at the end), so the harness overhead is visible. Neither path has a
per-example Python loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from experiments.train import TrainConfig, build_model_for, build_task, loss_sum, make_optimizer
from experiments.train import train as run_training


def bare_loop(cfg: TrainConfig, steps: int, device: torch.device) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second of this process)."""
    task = build_task(cfg)
    model = build_model_for(cfg, task).to(device)
    opt = make_optimizer(cfg, model)
    x, y = (t[: cfg.batch_size].to(device) for t in task.split("train"))

    def step() -> None:
        loss = loss_sum(cfg, task, model(x), y) / len(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (allocator, kernels)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(frac_train=10_000.5 / 113**2, batch_size=10_000, steps=args.steps)
    cfg.eval_every, cfg.device, cfg.threads, cfg.progress = 0, args.device, args.threads, False
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={cfg.batch_size} "
        f"train examples={len(build_task(cfg).train_idx)}"
    )
    wall, cpu = bare_loop(cfg, args.steps, device)
    print(f"bare loop:    {wall:8.3f} steps/s wall, {cpu:8.3f} steps per CPU-second")
    c0 = time.process_time()
    with tempfile.TemporaryDirectory() as out:
        result = run_training(cfg, out)  # includes one final evaluation and checkpoint
    cpu = args.steps / (time.process_time() - c0)
    print(f"full harness: {result.steps_per_s:8.3f} steps/s wall, {cpu:8.3f} steps per CPU-second")
    print("(wall time counts other processes on a shared machine; CPU time is this process's)")


if __name__ == "__main__":
    main()
