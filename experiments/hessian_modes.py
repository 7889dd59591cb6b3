"""Seed 000: flat directions in weight space are high-frequency modes in function space.

Width-20 tanh MLPs with 1, 2 and 3 hidden layers (1-20-1: 61 parameters, 1-20-20-1: 481,
1-20-20-20-1: 901) are trained with MSE and full-batch Adam on ``x^2`` and ``sin(5x)``,
``x ~ U[-1, 1]`` (the experiments harness). For each net we take the exact float64 Hessian
of the training loss, its eigenpairs ``(λ_i, v_i)`` and the eigenvector functions
``δf_i = J v_i`` by a forward-mode JVP on a grid, and report: the spectrum and its numerical
floor (``max|λ| · P · eps64``: eigenvectors below it are arbitrary vectors of a near-null
space), the frequency (spectral centroid) of every ``δf_i`` against ``|λ_i|``, the similarity
of leading modes across depth, negative eigenvalues and how the Gauss–Newton part and the
residual part ``H - GGN`` split them, and — once, as a caution — what float32 or finite
differences make of tail modes.

``python -m experiments.hessian_modes --quick --out /tmp/hm`` runs in seconds;
``python -m experiments.hessian_modes --out results/hessian_modes --publish docs/figures``
is the full run (about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from experiments.train import TrainConfig, build_task, train
from interbasis.curvature import (
    eigenvector_functions,
    eigh_descending,
    ggn_matrix,
    hessian_matrix,
    numerical_floor,
    sign_changes,
)
from interbasis.plotting.curvature import (
    plot_eigenvector_functions,
    plot_frequency_vs_eigenvalue,
    plot_spectrum,
)

N_LEADING = 5  # leading modes compared across depth
N_SHOWN = 4  # first / last eigenvector functions drawn per depth


def train_net(task: str, depth: int, args: argparse.Namespace, out: Path) -> tuple[Any, Any, dict]:
    """Train a width-20 tanh MLP with ``depth`` hidden layers; return model, task, metrics."""
    cfg = TrainConfig(
        task=task,
        model="mlp",
        d_hidden=[20] * depth,
        act_fn="tanh",
        optimizer="adam",
        weight_decay=0.0,
        lr=args.lr,
        betas=(0.9, 0.999),
        warmup_steps=0,
        loss="mse",
        steps=args.steps,
        eval_every=max(1, args.steps // 10),
        progress=False,
        threads=1,
        n_samples=args.n_samples,
        frac_train=0.8,
        seed=args.seed,
        data_seed=args.seed,
    )
    result = train(cfg, out / "train" / f"{task}_d{depth}")
    return result.model, build_task(cfg), result.metrics


def analyse(model: torch.nn.Module, task: Any, grid: torch.Tensor) -> dict[str, Any]:
    """Exact Hessian / GGN spectra and eigenvector functions of one trained net."""
    x, y = (t.to(torch.float64) for t in task.split("train"))
    H = hessian_matrix(model, F.mse_loss, (x, y))
    G = ggn_matrix(model, F.mse_loss, (x, y))
    pairs = eigh_descending(H)
    lam, vecs = pairs.values, pairs.vectors
    P = H.shape[0]
    floor = numerical_floor(lam, P)
    order = torch.argsort(lam.abs(), descending=True)  # seed 000 sorts by |λ|
    ef = eigenvector_functions(model, grid, vecs[:, order], eigenvalues=lam[order])
    # frequency=True (the default) always returns them, or raises DataError for a grid that
    # is not 1-D and uniform: the casts only tell mypy
    frequency, n_sign = cast(torch.Tensor, ef.frequency), cast(torch.Tensor, ef.sign_changes)
    mags = lam[order].abs()
    above = (mags > floor).numpy()
    freq = frequency.numpy()
    ok = above & np.isfinite(freq)
    rho = spearmanr(mags.numpy()[ok], freq[ok]).statistic if ok.sum() > 2 else float("nan")
    rho_all_ok = np.isfinite(freq)
    rho_all = spearmanr(mags.numpy()[rho_all_ok], freq[rho_all_ok]).statistic
    neg = lam < -floor
    R = H - G
    vn = vecs[:, neg]
    ggn_part = torch.einsum("pi,pq,qi->i", vn, G, vn)
    res_part = torch.einsum("pi,pq,qi->i", vn, R, vn)
    ggn_eigs = eigh_descending(G).values
    # leading eigenvalues that the GGN reproduces to 1 % (consecutive from the top)
    close = ((lam - ggn_eigs).abs() <= 0.01 * lam.abs()).tolist()
    matched = next((i for i, c in enumerate(close) if not c), P)
    ok_idx = np.flatnonzero(ok)  # positions (in |λ| order) of modes above the floor
    stats = {
        "n_params": P,
        "floor": floor,
        "lambda_max": float(lam[0]),
        "lambda_min": float(lam[-1]),
        "n_above_floor": int(above.sum()),
        "n_negative": int((lam < 0).sum()),
        "n_negative_above_floor": int(neg.sum()),
        "sum_abs_negative_above_floor": float(lam[neg].abs().sum()),
        "negative_modes_ggn_part": float(ggn_part.sum()),
        "negative_modes_residual_part": float(res_part.sum()),
        "ggn_lambda_min": float(ggn_eigs[-1]),
        "residual_lambda_min": float(torch.linalg.eigvalsh(R)[0]),
        "residual_rel_frobenius": float(torch.linalg.norm(R) / torch.linalg.norm(H)),
        "n_leading_matched_by_ggn_1pct": matched,
        "abs_lambda_of_max_freq_mode": float(mags[ok_idx[np.nanargmax(freq[ok])]]),
        "abs_lambda_rank_quantile_of_max_freq_mode": float(ok_idx[np.nanargmax(freq[ok])] / P),
        "freq_max_above_floor": float(np.nanmax(freq[ok])),
        "freq_median_above_floor": float(np.nanmedian(freq[ok])),
        "freq_max_all": float(np.nanmax(freq)),
        "freq_median_all": float(np.nanmedian(freq)),
        "sign_changes_max_above_floor": int(n_sign.numpy()[ok].max()),
        "spearman_abs_lambda_vs_freq_above_floor": float(rho),
        "spearman_abs_lambda_vs_freq_all": float(rho_all),
    }
    return {
        "stats": stats,
        "ef": ef,
        "lam_sorted": lam[order],
        "vecs_sorted": vecs[:, order],
        "lam": lam,
        "floor": floor,
        "above": above,
    }


def leading_similarity(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """|cos| of δf_i between two nets (sign-aligned), for the first N_LEADING modes."""
    out = []
    for i in range(N_LEADING):
        fa, fb = a[i].reshape(-1), b[i].reshape(-1)
        out.append(abs(float(fa @ fb / (fa.norm() * fb.norm()))))
    return out


def caution(model: torch.nn.Module, res: dict[str, Any], grid: torch.Tensor) -> dict[str, Any]:
    """Tail modes (smallest |λ|) by float64 JVP, float64 and float32 finite differences."""
    V = res["vecs_sorted"][:, -3:]
    f64 = eigenvector_functions(model, grid, V, a=1e-3)
    f32 = eigenvector_functions(model, grid, V, a=1e-3, dtype=torch.float32)
    # a is given, so both carry finite differences: the casts only tell mypy
    fd64, fd32 = (
        cast(torch.Tensor, f64.finite_difference),
        cast(torch.Tensor, f32.finite_difference),
    )
    return {
        "abs_lambda": res["lam_sorted"][-3:].abs().tolist(),
        "sign_changes_jvp_float64": f64.sign_changes.tolist()
        if f64.sign_changes is not None
        else [],
        "sign_changes_fd_float64": sign_changes(fd64).tolist(),
        "sign_changes_fd_float32": sign_changes(fd32).tolist(),
        "rms_jvp": f64.amplitude.tolist(),
        "curves": (
            f64.jvp[-1, :, 0],
            fd64[-1, :, 0],
            fd32[-1, :, 0],
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.hessian_modes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="results/hessian_modes")
    parser.add_argument("--quick", action="store_true", help="x^2, depths 1-2, 200 steps")
    parser.add_argument("--publish", default=None, help="also copy figures + JSON here")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-samples", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tasks: tuple[str, ...] = ("x2", "sin5x")
    depths: tuple[int, ...] = (1, 2, 3)
    if args.quick:
        tasks, depths = ("x2",), (1, 2)
        args.steps, args.n_samples = 200, 128
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = torch.linspace(-1, 1, 401, dtype=torch.float64)[:, None]
    report: dict[str, Any] = {
        "config": {
            "tasks": tasks,
            "depths": depths,
            "steps": args.steps,
            "lr": args.lr,
            "n_samples": args.n_samples,
            "width": 20,
            "act": "tanh",
            "optimizer": "adam (full batch)",
            "grid": "linspace(-1, 1, 401)",
            "seed": args.seed,
        }
    }
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for task in tasks:
        for depth in depths:
            model, t, metrics = train_net(task, depth, args, out)
            res = analyse(model, t, grid)
            res["model"] = model
            res["stats"].update(
                train_loss=metrics.get("train_loss"), test_loss=metrics.get("test_loss")
            )
            results[(task, depth)] = res
            print(json.dumps({"task": task, "depth": depth, **res["stats"]}), flush=True)
    for task in tasks:
        sims = {}
        for i, da in enumerate(depths):
            for db in depths[i + 1 :]:
                sims[f"{da}-{db}"] = leading_similarity(
                    results[(task, da)]["ef"].jvp, results[(task, db)]["ef"].jvp
                )
        report[task] = {
            "per_depth": {str(d): results[(task, d)]["stats"] for d in depths},
            "leading_mode_abs_cos": sims,
        }
        print(json.dumps({"task": task, "leading_mode_abs_cos": sims}), flush=True)
    deepest = (tasks[-1], depths[-1])
    warn = caution(results[deepest]["model"], results[deepest], grid)
    curves = warn.pop("curves")
    report["caution"] = {"task": deepest[0], "depth": deepest[1], **warn}
    print(json.dumps({"caution": report["caution"]}), flush=True)
    figures = make_figures(results, tasks, depths, grid, curves, out)
    (out / "hessian_modes.json").write_text(json.dumps(report, indent=1))
    if args.publish:
        dest = Path(args.publish)
        dest.mkdir(parents=True, exist_ok=True)
        for f in [*figures, out / "hessian_modes.json"]:
            shutil.copy(f, dest / f.name)
    return 0


def make_figures(
    results: dict,
    tasks: Sequence[str],
    depths: Sequence[int],
    grid: torch.Tensor,
    curves: tuple[torch.Tensor, ...],
    out: Path,
) -> list[Path]:
    paths = []
    for task in tasks:
        fig, axes = plt.subplots(
            len(depths),
            2 * N_SHOWN,
            figsize=(2 * N_SHOWN * 1.5, 1.5 * len(depths) + 0.4),
            squeeze=False,
        )
        for r, depth in enumerate(depths):
            res = results[(task, depth)]
            n = res["ef"].jvp.shape[0]
            idx = [*range(N_SHOWN), *range(n - N_SHOWN, n)]
            plot_eigenvector_functions(axes[r], grid, res["ef"], idx, floor=res["floor"])
            axes[r, 0].set_ylabel(f"{depth} hidden", fontsize=8)
        fig.suptitle(
            f"{task}: first and last {N_SHOWN} eigenvector functions (by |λ|), JVP float64",
            fontsize=9,
        )
        fig.tight_layout()
        paths.append(out / f"hessian_modes_functions_{task}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.4), squeeze=False)
    for c, task in enumerate(tasks):
        for depth in depths:
            res = results[(task, depth)]
            plot_spectrum(axes[0, c], res["lam"], res["floor"], label=f"{depth} hidden")
            plot_frequency_vs_eigenvalue(
                axes[1, c],
                res["lam_sorted"],
                res["ef"].frequency,
                res["floor"],
                label=f"{depth} hidden",
            )
        axes[0, c].set_title(f"{task}: Hessian spectrum (red: λ<0, dashed: floor)", fontsize=8)
        axes[1, c].set_title(f"{task}: frequency of δf vs |λ| (dashed: floor)", fontsize=8)
        axes[0, c].legend(fontsize=7)
        axes[1, c].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "hessian_modes_frequency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    xs = grid[:, 0].numpy()
    left.plot(xs, curves[0].numpy(), lw=1.5, label="JVP float64")
    left.plot(xs, curves[1].numpy(), "--", lw=1, label="finite diff. float64 (a=1e-3)")
    right.plot(
        xs, curves[2].numpy(), lw=0.6, color="tab:red", label="finite diff. float32 (a=1e-3)"
    )
    left.set_title("smallest-|λ| mode: float64 routes agree", fontsize=8)
    right.set_title("the same mode in float32: rounding noise", fontsize=8)
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.set_xlabel("x")
    fig.tight_layout()
    paths.append(out / "hessian_modes_caution.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


if __name__ == "__main__":
    sys.exit(main())
