"""Benchmark: Hessian-vector products and Lanczos top-20 (issue 8, Speed).

Run:  python benchmarks/bench_curvature.py [--width 128] [--n 2048] [--repeats 5] [--threads 1]

Model: MLP 8-W-W-4 (tanh), MSE on N random samples, float64 (our default). Prints

1. the time of one HVP (``HessianOperator``, reverse-over-reverse ``vjp(grad)``) and of a
   block of 20 HVPs (one vmapped call), each relative to one gradient evaluation of the same
   loss — both the same ``functional_call`` path (``torch.func.grad``) and plain
   ``loss.backward()`` on the module — target ≤ 3x;
2. Lanczos top-20 eigenvalues (``lanczos``: scipy ARPACK on our operator) against curvlinops'
   ``HessianLinearOperator`` + the same ``eigsh`` call (when curvlinops is installed), with
   the number of products and the largest relative eigenvalue difference between the two.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh

from interbasis.curvature import HessianOperator, lanczos


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = args.width
    model = torch.nn.Sequential(
        torch.nn.Linear(8, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.Tanh(),
        torch.nn.Linear(w, 4),
    ).double()  # fmt: skip
    x, y = torch.randn(args.n, 8, dtype=torch.float64), torch.randn(args.n, 4, dtype=torch.float64)
    op = HessianOperator(model, F.mse_loss, (x, y), chunk_size=args.k)
    P = op.shape[0]
    obj = op.objective
    grad_fn = torch.func.grad(lambda t: obj.batch_loss(t, x, y))

    def module_grad() -> None:
        model.zero_grad()
        F.mse_loss(model(x), y).backward()

    v = torch.randn(P, 1, dtype=torch.float64)
    V = torch.randn(P, args.k, dtype=torch.float64)
    t_grad = best_of(lambda: grad_fn(obj.theta), args.repeats)
    t_module = best_of(module_grad, args.repeats)
    t_hvp = best_of(lambda: op.matmat_torch(v), args.repeats)
    t_block = best_of(lambda: op.matmat_torch(V), args.repeats)
    print(f"model 8-{w}-{w}-4 tanh, P={P}, N={args.n}, float64, threads={args.threads}")
    print(f"gradient (torch.func.grad, functional_call): {t_grad * 1e3:8.2f} ms")
    print(f"gradient (module loss.backward):             {t_module * 1e3:8.2f} ms")
    print(f"one HVP:            {t_hvp * 1e3:8.2f} ms = {t_hvp / t_grad:5.2f}x func grad, "
          f"{t_hvp / t_module:5.2f}x module grad")  # fmt: skip
    print(f"{args.k} HVPs (vmapped): {t_block * 1e3:8.2f} ms = {t_block / args.k / t_grad:5.2f}x "
          f"func grad per HVP")  # fmt: skip

    t0 = time.perf_counter()
    ours = lanczos(op, args.k, tol=1e-10)
    t_ours = time.perf_counter() - t0
    print(f"Lanczos top-{args.k} (ours):       {t_ours:7.2f} s, {ours.n_products} HVPs")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import curvlinops
    except ImportError:
        print(
            "curvlinops not installed: no comparison (pip install --no-deps curvlinops-for-pytorch)"
        )
        return
    ref = curvlinops.HessianLinearOperator(
        model, torch.nn.MSELoss(), list(model.parameters()), [(x, y)]
    )
    scipy_ref = ref.to_scipy()
    t0 = time.perf_counter()
    vals = eigsh(scipy_ref, k=args.k, which="LA", tol=1e-10)[0]
    t_ref = time.perf_counter() - t0
    vals = np.sort(vals)[::-1]
    diff = np.abs(vals - ours.values.numpy()).max() / np.abs(vals).max()
    print(
        f"Lanczos top-{args.k} (curvlinops): {t_ref:7.2f} s; "
        f"ratio ours/curvlinops {t_ours / t_ref:.2f}"
    )
    print(f"max |λ_ours - λ_curvlinops| / λ_max = {diff:.2e}")


if __name__ == "__main__":
    main()
