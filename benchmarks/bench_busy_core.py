"""Small linear algebra with the other core busy: two torch threads against one (issue 19).

On a loaded 2-core machine, OpenMP's second thread waits for a core that is taken, and
small-matrix work that takes milliseconds on one thread can take seconds on two. The library
runs such work inside :func:`interbasis.performance.single_thread`. This script keeps one
core busy with a spinning subprocess and times, with ``torch.set_num_threads(2)``:

- ``eigh`` of a 128 x 128 symmetric matrix (the size of a node layer's Gram), 50 times;
- :func:`interbasis.jacobian_spectra.layer_jacobians` of a 4-layer width-64 MLP on 256
  inputs (the library wraps it in ``single_thread``; the two-thread column patches that
  out to show what it avoids);

each on two threads, and inside ``single_thread()``.

    python benchmarks/bench_busy_core.py [--busy N]

``--busy N`` starts N load processes (default 1; 0 for an idle machine), each a torch job
on two threads (``--load torch``, default: what a training run or a second test process
does) or a Python spin loop (``--load spin``).

Prints seconds per case. Run it on an otherwise idle machine (the busy process is the load).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from interbasis.jacobian_spectra import chain, layer_jacobians
from interbasis.performance import single_thread

SPIN = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"
# a training-like load: torch matmuls on two threads (another torch job on the machine)
TORCH_JOB = (
    "import time, torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\n"
    "end = time.time() + 600\nwhile time.time() < end:\n    a = torch.tanh(a @ a) \n"
)


@contextlib.contextmanager
def busy_cores(n: int, kind: str) -> Iterator[None]:
    """``n`` load processes (``kind`` "spin" or "torch") for the duration of the block."""
    code = SPIN if kind == "spin" else TORCH_JOB
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    time.sleep(0.5 if procs else 0.0)
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best of ``repeat`` wall times of ``fn()``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--busy", type=int, default=1, help="load processes (default 1)")
    p.add_argument(
        "--load",
        choices=("spin", "torch"),
        default="torch",
        help="a Python spin loop, or a torch job on two threads (default)",
    )
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(128, 128, generator=g, dtype=torch.float64)
    sym = a @ a.T

    def eighs() -> None:
        for _ in range(50):
            torch.linalg.eigh(sym)

    torch.manual_seed(0)
    widths = [64, 64, 64, 64]
    layers: list[nn.Module] = []
    for w_in, w_out in itertools.pairwise(widths):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    mlp = nn.Sequential(*layers, nn.Linear(64, 10)).double().eval()
    x = torch.randn(256, 64, generator=g, dtype=torch.float64)

    def jacobians() -> None:
        layer_jacobians(mlp, x)

    def jacobians_two_threads() -> None:
        saved = chain.single_thread
        chain.single_thread = lambda active=True: contextlib.nullcontext()  # type: ignore[assignment,return-value]
        try:
            layer_jacobians(mlp, x)
        finally:
            chain.single_thread = saved

    def bare(fn: Callable[[], None]) -> Callable[[], None]:
        return fn

    def one_thread(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with single_thread():
                fn()

        return run

    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, load: {args.busy} x {args.load}")
    print("| case | 2 threads (s) | single_thread (s) | ratio |\n|---|---|---|---|")
    cases = (
        ("eigh 128x128 x50", bare(eighs), one_thread(eighs)),
        ("layer_jacobians MLP", jacobians_two_threads, jacobians),
    )
    with busy_cores(args.busy, args.load):
        for name, two_fn, one_fn in cases:
            two, one = timed(two_fn), timed(one_fn)
            print(f"| {name} | {two:.4f} | {one:.4f} | {two / one:.1f} |", flush=True)


if __name__ == "__main__":
    main()
