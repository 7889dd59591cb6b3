"""Exact vs stochastic builds of sequence transformers: time, peak memory, error, growth.

The model is the scale issue's 2-layer TransformerLens-format transformer (d_model 128, 4 heads,
d_mlp 512, ReLU, no LayerNorm; random weights, seeded), node layers ``blocks.0.ln1``,
``blocks.1.ln1``, ``unembed``, ``output``, all positions kept until the unembed (our
transformer reads the logits at the last position). Inputs are rib's train split of
(a + b) mod 113 (3 positions) or, for longer contexts, seeded random token sequences.

Each setting runs in its own process (one thread, float64) so that peak memory (max RSS) is
per build. Prints one row per setting and the fitted growth exponents of time in N, P and d.

    python benchmarks/bench_scale.py              # the issue's four rows, exact and S=1
    python benchmarks/bench_scale.py --quick      # the base row only
    python benchmarks/bench_scale.py --sweep-S    # error, time vs hidden S in {1, 4, 16, 64}
    python benchmarks/bench_scale.py --minilm     # all-MiniLM-L6-v2: exact vs hidden S (needs [hf])

``--minilm`` builds the graph of the pretrained all-MiniLM-L6-v2 (``experiments.minilm_graph``,
float32 model, float64 sums) from the input of its last block to the pooled sentence
embedding, on ``--minilm-n`` corpus sequences of 32 tokens: the bases (Grams and M, where
the sources act; no edges) exactly (384 output units per batch) and with
``Sources(hidden=S)`` for S in {1, 4, 16, 64}, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

LAYERS = ["blocks.0.ln1", "blocks.1.ln1", "unembed", "output"]
ROWS = {  # name: (N, P, d_model)
    "base": (480, 3, 128),
    "2x data": (960, 3, 128),
    "8 positions": (480, 8, 128),
    "2x width": (480, 3, 256),
}


def build_one(
    n: int, p: int, d: int, positions: int | None, seed: int, hidden: int | None = None
) -> dict:
    import torch

    import interbasis as ib
    from experiments.checkpoint_io import rib_modadd_task
    from experiments.transformer import Transformer, TransformerConfig

    torch.set_num_threads(1)
    cfg = TransformerConfig(
        n_layers=2, d_model=d, n_heads=4, d_head=d // 4, d_mlp=4 * d, n_ctx=max(p, 3),
        d_vocab=114, d_vocab_out=113, act_fn="relu", seed=0,
    )  # fmt: skip
    model = Transformer(cfg).eval()
    if p == 3:
        x = rib_modadd_task().train_inputs[:n]
    else:
        x = torch.randint(0, 114, (n, p), generator=torch.Generator().manual_seed(0))
    src = ib.Sources(positions=positions, hidden=hidden, seed=seed) if positions else None
    edge_src = ib.Sources(positions=positions, seed=seed) if positions else None
    t0 = time.perf_counter()
    g = ib.build_graph(model, x, LAYERS, sources=src, edge_sources=edge_src, progress=False)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "eigenvalues": [layer.eigenvalues.tolist() for layer in g.layers],
        "edges": [e.tolist() for e in g.edges],
        "rse": g.metadata["estimator"]["relative_standard_error"],
    }


def build_minilm(n: int, hidden: int | None, seed: int) -> dict:
    import torch

    import interbasis as ib
    from experiments.minilm_graph import load_minilm
    from experiments.text_corpus import text_corpus

    torch.set_num_threads(1)
    model = load_minilm()
    ids, _ = text_corpus(n, seq_len=32, seed=0)
    src = ib.Sources(hidden=hidden, seed=seed) if hidden else None
    t0 = time.perf_counter()
    bases = ib.build_bases(model, ids, ["bert.encoder.layer.5", "output"],
                           dtype=torch.float32, sources=src, progress=False)  # fmt: skip
    return {
        "seconds": time.perf_counter() - t0,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "eigenvalues": [b.eigenvalues.tolist() for b in bases],
    }


def run_minilm(n: int, hidden: int | None, seed: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--one-minilm", json.dumps([n, hidden, seed])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def minilm_table(n: int) -> None:
    exact = run_minilm(n, None)
    print(f"MiniLM layer.5 -> output, {n} x 32 tokens, float32 model, one thread")
    print(f"{'sources':>12s} {'s':>7s} {'GiB':>5s} {'top-10 Λ err':>12s}")
    print(f"{'exact':>12s} {exact['seconds']:7.1f} {exact['peak_gib']:5.2f} {'-':>12s}")
    for S in (1, 4, 16, 64):
        r = run_minilm(n, S)
        err = top_error(exact, r, layers=1)
        print(f"{'hidden=' + str(S):>12s} {r['seconds']:7.1f} {r['peak_gib']:5.2f} {err:12.3%}")


def run(
    n: int, p: int, d: int, positions: int | None, seed: int = 0, hidden: int | None = None
) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([n, p, d, positions, seed, hidden])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def top_error(exact: dict, est: dict, k: int = 10, layers: int = 2) -> float:
    """Largest relative error of the top-k Λ over the first ``layers`` (interaction) layers."""
    worst = 0.0
    for a, b in zip(exact["eigenvalues"][:layers], est["eigenvalues"][:layers], strict=True):
        a, b = [v for v in a if v == v][:k], [v for v in b if v == v][:k]
        worst = max(worst, *(abs(x - y) / abs(x) for x, y in zip(a, b, strict=False)))
    return worst


def edge_error(exact: dict, est: dict) -> float:
    """Relative Frobenius error of the edges of the first section (same-size bases only)."""
    import numpy as np

    a, b = np.array(exact["edges"][0]), np.array(est["edges"][0])
    if a.shape != b.shape:
        return float("nan")
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def exponent(xs: list[float], ts: list[float]) -> float:
    return math.log(ts[1] / ts[0]) / math.log(xs[1] / xs[0])


def sweep_S() -> None:
    """positions=1 with S combinations of the hidden directions, on the 8-position row."""
    n, p, d = ROWS["8 positions"]
    exact = run(n, p, d, None)
    for S in (1, 4, 16, 64):
        errs, secs = [], []
        for seed in range(3):
            r = run(n, p, d, 1, seed, hidden=S)
            errs.append(top_error(exact, r))
            secs.append(r["seconds"])
        print(
            f"positions=1, hidden={S:3d} (8 positions): {sum(secs) / 3:6.1f} s, "
            f"top-10 Λ error {sum(errs) / 3:.3%} (mean of 3 seeds)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="the base row only")
    ap.add_argument("--sweep-S", action="store_true", help="only the hidden-S sweep (8 positions)")
    ap.add_argument("--minilm", action="store_true", help="only the MiniLM table")
    ap.add_argument("--minilm-n", type=int, default=32, help="MiniLM sequences")
    ap.add_argument("--one-minilm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(build_one(*json.loads(args.one))))
        return
    if args.one_minilm:
        print(json.dumps(build_minilm(*json.loads(args.one_minilm))))
        return
    if args.minilm:
        minilm_table(args.minilm_n)
        return
    if args.sweep_S:
        sweep_S()
        return
    rows = {"base": ROWS["base"]} if args.quick else ROWS
    results = {}
    head = f"{'setting':12s} {'N':>5s} {'P':>3s} {'d':>4s} | {'exact s':>8s} {'GiB':>5s} | "
    print(head + f"{'S=1 s':>7s} {'GiB':>5s} {'speed-up':>8s} {'top-10 Λ err':>12s} edge err")
    for name, (n, p, d) in rows.items():
        exact, s1 = run(n, p, d, None), run(n, p, d, 1)
        results[name] = (exact, s1)
        print(
            f"{name:12s} {n:5d} {p:3d} {d:4d} | {exact['seconds']:8.1f} {exact['peak_gib']:5.2f} | "
            f"{s1['seconds']:7.1f} {s1['peak_gib']:5.2f} {exact['seconds'] / s1['seconds']:7.1f}x "
            f"{top_error(exact, s1):12.3%} {edge_error(exact, s1):8.3f}"
        )
    if len(results) == 4:
        for mode, i in (("exact", 0), ("S=1", 1)):
            t = {k: v[i]["seconds"] for k, v in results.items()}
            print(
                f"growth ({mode}): N^{exponent([480, 960], [t['base'], t['2x data']]):.2f} "
                f"P^{exponent([3, 8], [t['base'], t['8 positions']]):.2f} "
                f"d^{exponent([128, 256], [t['base'], t['2x width']]):.2f}"
            )


if __name__ == "__main__":
    main()
