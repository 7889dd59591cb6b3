"""Spectral-edge functional modes over Z_p², measured against random directions (seed 003).

Protocol (the seed's, issue 10): a 2-layer pre-norm transformer (d = 128, 4 heads,
d_mlp = 256, GELU) trained with AdamW (lr 1e-3, wd 1.0, betas (0.9, 0.98)), batch 512,
clip 1.0, on 50 % of the pairs of Z_97² (a, b ≠ 0 for mul). A :class:`SpectralEdgeTracker`
snapshots the attention weights every 100 steps and keeps the last 20 updates (centred); a
second tracker keeps the thesis variant (W = 10, uncentred). Training stops ``--post-grok``
steps after grokking (test acc ≥ 0.95) or at ``--max-steps``. Two windows are analysed: the
one at grokking and the final one. For each, the edge v_1..v_3, the bulk v_4..v_8 and 8 random
unit directions are pushed through the network (ε = 0.005‖θ‖, h = input of ln_final), and
the concentration F of f_v and of Δh is measured under the a+b, a−b, a·b and discrete-log
groupings on the test pairs, beside the 2-D Fourier split, and the edge is ablated.

    python -m experiments.spectral_edge_modes --op add mul --seeds 5 --docs docs
    python -m experiments.spectral_edge_modes --quick            # seconds, small p

Every stage is resumable: training continues from its latest checkpoint and finished analyses
are kept (results/spectral_edge/<op>_s<seed>/analysis.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.checkpoint_io import list_checkpoints
from experiments.spectral_edge_report import (
    MULTITASK_OPS,
    N_EDGE,
    N_RECORD,
    OPS,
    WINDOWS,
    figures,
    table,
    write_docs,
)
from experiments.tasks import Task
from experiments.train import TrainConfig, build_task, train
from interbasis import Callback
from interbasis.spectral_edge import (
    SpectralEdgeTracker,
    ablate_directions,
    dlog_grid,
    flatten_params,
    fourier_concentration,
    fourier_split_2d,
    functional_mode,
    group_keys,
    group_means,
    random_directions,
)


class WindowSnapshots(Callback):
    """Model state and the tracker's top directions at two moments: when the first window is
    full (``first``: steps 0 … every·W, the grokking transition when it is early) and at the
    first evaluation with test accuracy ≥ threshold (``grok``: the window ending there)."""

    def __init__(self, tracker: SpectralEdgeTracker, threshold: float) -> None:
        self.tracker, self.threshold = tracker, threshold
        self.snaps: dict[str, dict[str, Any]] = {}

    def _take(self, name: str, step: int, model: torch.nn.Module) -> None:
        spec = self.tracker.spectrum()
        self.snaps[name] = {
            "step": step,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "directions": spec.directions[: min(N_RECORD, spec.rank)].cpu().clone(),
            "sigma": spec.sigma[:N_RECORD].tolist(),
        }

    def on_step(self, step: int, model: torch.nn.Module, opt: Any, batch: Any) -> None:
        if "first" not in self.snaps and self.tracker.n_updates == self.tracker.window:
            self._take("first", step, model)

    def on_eval(self, step: int, model: torch.nn.Module, metrics: dict[str, Any]) -> None:
        hit = (metrics.get("test_acc") or 0.0) >= self.threshold
        if "grok" not in self.snaps and hit and self.tracker.n_updates >= 2:
            self._take("grok", step, model)

    def state_dict(self) -> dict[str, Any]:
        return {"snaps": self.snaps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snaps = dict(state["snaps"])


def train_config(op: str, seed: int, args: argparse.Namespace, steps: int) -> TrainConfig:
    common: dict[str, Any] = dict(
        task=op,
        ops=list(MULTITASK_OPS),
        p=args.p,
        frac_train=0.5,
        data_seed=seed,
        nonzero=op == "mul",
        n_layers=2,
        act_fn="gelu",
        normalization_type="LN",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1.0,
        betas=(0.9, 0.98),
        warmup_steps=0,
        grad_clip=1.0,
        batch_size=512,
        steps=steps,
        seed=seed,
        eval_every=args.every,
        checkpoint_every=args.chunk // 2 or None,
        grok_threshold=args.grok_threshold,
        progress=False,
    )
    if args.quick:
        common.update(d_model=32, n_heads=2, d_head=16, d_mlp=64, lr=3e-3, n_layers=1)
    else:
        common.update(d_model=128, n_heads=4, d_head=32, d_mlp=256)
    return TrainConfig(**common)


def trackers(args: argparse.Namespace) -> list[Callback]:
    """Seed tracker (W = 20 centred), thesis tracker (W = 10 uncentred), window snapshots.

    The seed tracker's history starts at 3 updates, so that grokking before the first full
    window still has a "before" in the gradient / weight-decay split.
    """
    thr = args.grok_threshold
    seed_tracker = SpectralEdgeTracker(
        every=args.every,
        window=args.window,
        n_edge=N_EDGE,
        n_record=N_RECORD,
        grok_threshold=thr,
        min_updates=3,
    )
    thesis = SpectralEdgeTracker(
        every=args.every, window=args.window // 2, center=False, n_record=N_RECORD
    )
    return [seed_tracker, thesis, WindowSnapshots(seed_tracker, thr)]


def run_training(op: str, seed: int, args: argparse.Namespace, run_dir: Path) -> tuple[Any, list]:
    """Train in chunks until ``post_grok`` steps after grokking (or ``max_steps``)."""
    target = args.chunk
    while True:
        cbs = trackers(args)
        result = train(train_config(op, seed, args, target), run_dir, cbs, resume=True)
        for _, path in list_checkpoints(run_dir)[:-1]:  # resuming needs only the latest
            path.unlink()
        grok = result.grokking_step
        if result.step >= args.max_steps or (
            grok is not None and result.step >= grok + args.post_grok
        ):
            return result, cbs
        target = max(target, result.step) + args.chunk


def grid_inputs(task: Task, op: str, sub_op: str, p: int) -> dict[str, Any]:
    """Tokens of every pair of Z_p² for ``sub_op`` and a mask of the task's test pairs."""
    a, b = (t.ravel() for t in torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
    test = task.test_inputs
    extra: list[torch.Tensor] = []
    if op == "multitask":
        tok = p + 1 + MULTITASK_OPS.index(sub_op)
        test = test[test[:, 2] == tok]
        extra = [torch.full_like(a, tok)]
    tokens = torch.stack([a, b, *extra, torch.full_like(a, p)], dim=1)
    mask = np.zeros(p * p, dtype=bool)
    mask[(test[:, 0] * p + test[:, 1]).numpy()] = True
    return {"tokens": tokens, "a": a.numpy(), "b": b.numpy(), "test": mask}


def measure(delta: torch.Tensor, grid: dict[str, Any], p: int, pairs: str) -> dict[str, Any]:
    """Concentrations and 2-D splits of f_v = ‖Δh‖² and of Δh for K directions."""
    f = (delta**2).sum(-1).numpy()  # (K, p²)
    dh = delta.numpy()  # (K, p², d)
    a, b = grid["a"], grid["b"]
    use = grid["test"] if pairs == "test" else np.ones_like(grid["test"])
    out: dict[str, Any] = {"F": {}, "F_dh": {}, "peak": {}, "power": {}}
    for g in ("sum", "diff", "prod", "dlog"):
        m = use & (a != 0) & (b != 0) if g in ("prod", "dlog") else use
        keys, n = group_keys(a[m], b[m], p, g)
        conc = [fourier_concentration(group_means(fk[m], keys, n)) for fk in f]
        out["F"][g] = [c.F for c in conc]
        out["peak"][g] = [c.peak for c in conc]
        out["power"][g] = [c.power.tolist() for c in conc]
        out["F_dh"][g] = [fourier_concentration(group_means(d[m], keys, n)).F for d in dh]
    out["split"] = [fourier_split_2d(fk.reshape(p, p)).as_dict() for fk in f]
    out["split_dh"] = [fourier_split_2d(d.reshape(p, p, -1)).as_dict() for d in dh]
    out["split_dh_dlog"] = [
        fourier_split_2d(dlog_grid(d.reshape(p, p, -1), p)).as_dict() for d in dh
    ]
    out["heat"] = f.reshape(-1, p, p)
    return out


def analyse_window(model, layout, dirs, task, op, args, seed) -> dict[str, Any]:
    """All measures for one window: edge + bulk (``dirs`` (k ≤ 8, n)) and random controls."""
    rand = random_directions(layout.size, args.n_random, seed=10_000 + seed)
    all_dirs = torch.cat([dirs.to(torch.float64), rand])
    res: dict[str, Any] = {"ops": {}}
    for sub in MULTITASK_OPS if op == "multitask" else (op,):
        grid = grid_inputs(task, op, sub, args.p)
        delta = functional_mode(model, layout, all_dirs, grid["tokens"], kind="delta")
        res["ops"][sub] = measure(delta, grid, args.p, args.pairs)
    x, y = task.test_inputs, task.test_targets

    def acc(m: torch.nn.Module) -> float:
        return float((m(x).argmax(-1) == y).double().mean())

    abl = ablate_directions(model, layout, dirs[:N_EDGE], acc, n_random=args.n_random, seed=seed)
    res["ablation"] = {
        "baseline": abl.baseline,
        "edge": abl.edge,
        "removed_norm": abl.removed_norm,
        "random_subspace": abl.random_subspace.tolist(),
        "random_equal_norm": abl.random_equal_norm.tolist(),
    }
    theta = flatten_params(model, layout)
    res["theta_norm"] = float(theta.norm())
    res["cos_theta"] = (all_dirs @ theta / theta.norm()).abs().tolist()  # |cos(v, θ)|
    return res


def analyse_run(op: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    result, (tracker, thesis, snaps) = run_training(op, seed, args, run_dir)
    task = build_task(train_config(op, seed, args, 1))
    hist = tracker.history
    out: dict[str, Any] = {
        "op": op,
        "seed": seed,
        "p": args.p,
        "steps": result.step,
        "grok_step": result.grokking_step,
        "final_test_acc": result.metrics.get("test_acc"),
        "window_span": args.every * args.window,
        "history": {k: np.asarray(v).tolist() for k, v in hist.items()},
        "thesis_history": {k: np.asarray(v).tolist() for k, v in thesis.history.items()},
        "windows": {},
    }
    final = tracker.spectrum()
    windows = {
        name: (snap["state"], snap["directions"], snap["sigma"], snap["step"])
        for name, snap in snaps.snaps.items()
    }
    windows["final"] = (
        None,
        final.directions[: min(N_RECORD, final.rank)],
        final.sigma[:N_RECORD].tolist(),
        result.step,
    )
    for name in WINDOWS:
        if name not in windows or windows[name][1].shape[0] <= N_EDGE:
            continue  # no bulk direction: too few updates in that window
        state, dirs, sigma, step = windows[name]
        model = result.model
        if state is not None:
            model = type(result.model)(result.model.cfg)
            model.load_state_dict(state)
            model.eval()
        w = analyse_window(model, tracker.layout, dirs, task, op, args, seed)
        w.update(step=step, sigma=sigma, gap23=sigma[1] / sigma[2], n_dirs=int(dirs.shape[0]))
        th = [i for i, s in enumerate(out["thesis_history"]["step"]) if s <= step]
        if th:
            w["thesis_k_star"] = out["thesis_history"]["k_star"][th[-1]]
            w["thesis_max_gap"] = float(np.nanmax(out["thesis_history"]["gap_ratio"][th[-1]]))
        out["windows"][name] = w
    figures(out, run_dir)
    for w in out["windows"].values():
        for m in w["ops"].values():
            m.pop("heat")
    (run_dir / "analysis.json").write_text(json.dumps(out))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.spectral_edge_modes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--op", nargs="+", choices=OPS, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; quick 1)")
    parser.add_argument("--p", type=int, default=None, help="modulus (default 97; quick 13)")
    parser.add_argument("--quick", action="store_true", help="small p and model, seconds")
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/spectral_edge[/quick]"
    )
    parser.add_argument("--docs", type=Path, default=None, help="write the table and figures here")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--post-grok", type=int, default=2000, help="steps after grokking")
    parser.add_argument("--chunk", type=int, default=None, help="steps between stop checks")
    parser.add_argument("--every", type=int, default=None, help="snapshot interval (100)")
    parser.add_argument("--window", type=int, default=None, help="updates per window (20)")
    parser.add_argument("--n-random", type=int, default=8)
    parser.add_argument("--pairs", choices=("test", "all"), default=None)
    parser.add_argument("--grok-threshold", type=float, default=0.95, help="test accuracy")
    parser.add_argument("--analyse-only", action="store_true", help="only rebuild the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defaults: dict[str, Any]
    if args.quick:
        defaults = dict(
            op=["add"],
            seeds=1,
            p=13,
            out=Path("results/spectral_edge/quick"),
            max_steps=200,
            chunk=200,
            every=20,
            window=10,
            pairs="all",
        )
    else:
        defaults = dict(
            op=["add", "mul"],
            seeds=5,
            p=97,
            out=Path("results/spectral_edge"),
            max_steps=30000,
            chunk=1000,
            every=100,
            window=20,
            pairs="test",
        )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for op in args.op:
        for seed in range(args.seeds):
            run_dir = args.out / f"{op}_s{seed}"
            done = run_dir / "analysis.json"
            if done.is_file():
                results.append(json.loads(done.read_text()))
            elif not args.analyse_only:
                results.append(analyse_run(op, seed, args, run_dir))
                r = results[-1]
                print(
                    f"[spectral_edge] {op} seed {seed}: {r['steps']} steps, grok {r['grok_step']}"
                )
    text = table(results)
    (args.out / "table.md").write_text(text)
    print(text)
    if args.docs is not None:
        write_docs(results, text, args.op, args.out, args.docs, args.p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
