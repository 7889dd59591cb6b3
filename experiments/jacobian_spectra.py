"""Deep Jacobian spectra of random and trained ReLU MLPs (seed 002, issue 11).

Part A (random, theory check): bias-free He-initialised ReLU MLPs of width n and depth up to
``separation_depth``. Measured: ``log σ_k(J_{0:l})`` vs ``l`` against the masked closed form
``λ_k = ½[log(4/n) + E_K ψ((K-k+1)/2)]`` (slope), QR (Benettin) exponents, and the separation
``σ_1/σ_2`` vs depth.

Part B (depth sweep, init vs trained): MLPs with ``depth`` hidden ReLU layers of width n, He
initialisation, trained by ``experiments.train`` on ``two_tasks`` (2 -> 2 regression).
Measured at init and after training: consecutive-factor alignment ``|<u_1(J_{0:l}),
v_1(J_{l:L})>|`` and efficiency vs their random baselines, shared-basis alignment, QR
exponents of the hidden chain, and principal angles between the top Jacobian directions and
the top interaction-basis (and PCA) directions per layer (``build_bases(scope="global")``).

    python -m experiments.jacobian_spectra              # full run, minutes of CPU
    python -m experiments.jacobian_spectra --quick      # seconds
    python -m experiments.jacobian_spectra --figures docs/figures

Writes ``<out>/jacobian_spectra.json`` and the figures; training runs are cached in ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import interbasis as ib
from experiments.checkpoint_io import list_checkpoints, load_checkpoint
from experiments.models import MLP, MLPConfig
from experiments.train import TrainConfig, build_task, train
from interbasis.jacobian_spectra import (
    alignment_profile,
    basis_directions,
    depth_fit,
    direction_angles,
    gaussian_lyapunov,
    interaction_basis_angles,
    jacobian_input_directions,
    layer_jacobians,
    log_singular_values,
    lyapunov_exponents,
    masked_gaussian_lyapunov,
    principal_angles,
    random_overlap_baseline,
    rotation_baseline,
)
from interbasis.plotting.jacobian_spectra import (
    plot_alignment,
    plot_basis_angles,
    plot_log_singular_values,
    plot_separation,
)


@dataclass(frozen=True)
class Settings:
    width: int
    separation_depth: int  # depth of the random nets of part A
    n_nets: int
    n_inputs: int
    k: int
    depths: tuple[int, ...]  # hidden layers of the trained nets (part B)
    train_steps: int
    n_samples: int
    lr: float
    link_k: int
    n_link: int  # inputs used for the Jacobians and the bases of part B
    seed: int = 0


QUICK = Settings(32, 12, 2, 4, 3, (2, 4), 20, 128, 1e-3, 2, 64)
FULL = Settings(64, 128, 32, 4, 8, (2, 4, 8, 16, 32), 2000, 1024, 1e-3, 2, 256)


def he_init(model: nn.Module, gen: torch.Generator) -> None:
    """Weights ``N(0, 2/fan_in)``, biases 0 (in place)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = torch.randn(module.weight.shape, generator=gen, dtype=torch.float64)
                module.weight.copy_(w * (2 / module.in_features) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()


class HeInit(ib.Callback):
    """Re-initialise a fresh run with He weights (not a resumed one: its optimizer has state)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not optimizer.state:
            he_init(model, torch.Generator().manual_seed(self.seed))


# ---- part A: random nets ---------------------------------------------------------------------


def random_part(s: Settings) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    gen = torch.Generator().manual_seed(s.seed)
    n, depth = s.width, s.separation_depth
    log_sigma, per_net = [], []
    for i in range(s.n_nets):
        cfg = MLPConfig(n, [n] * depth, n, "relu", bias=False, seed=s.seed + i)
        model = MLP(cfg).double()
        he_init(model, gen)
        x = torch.randn(s.n_inputs, n, generator=gen, dtype=torch.float64)
        jac = layer_jacobians(model, x)
        log_sigma.append(log_singular_values(jac.factors[:-1], s.k))  # gated layers only
        res = lyapunov_exponents(jac.factors[:-1], s.k, burn_in=5, generator=gen)
        per_net.append(res.exponents)
        del jac
    ls = np.concatenate(log_sigma, axis=1)  # (depth, nets·inputs, k)
    depths = np.arange(1, depth + 1)
    theory = masked_gaussian_lyapunov(n, s.k)
    lo = depth // 4
    slope, intercept = depth_fit(depths[lo:], ls[lo:].mean(1))
    offset = (ls[lo:].mean(1) - theory * depths[lo:, None]).mean(0)
    sep = np.exp(ls[:, :, 0] - ls[:, :, 1])  # (depth, samples)
    qr = np.array(per_net)
    marks = [d for d in (8, 16, 32, 64, 100, 128) if d <= depth]
    numbers = {
        "width": n,
        "depth": depth,
        "n_nets": s.n_nets,
        "n_inputs": s.n_inputs,
        "lyapunov_masked_theory": theory.tolist(),
        "lyapunov_effective_variance_theory": gaussian_lyapunov(n, s.k).tolist(),
        "lyapunov_qr": qr.mean(0).tolist(),
        "lyapunov_qr_stderr_over_nets": (qr.std(0, ddof=1) / np.sqrt(len(qr))).tolist(),
        "fit_depth_range": [int(depths[lo]), depth],
        "fitted_slope": slope.tolist(),
        "fitted_intercept": intercept.tolist(),
        "offset_at_theory_slope": offset.tolist(),
        "separation_median": {d: float(np.median(sep[d - 1])) for d in marks},
        "separation_geometric_mean": {d: float(np.exp(np.log(sep[d - 1]).mean())) for d in marks},
        "separation_mean": {d: float(sep[d - 1].mean()) for d in marks},
    }
    curves = {
        "depths": depths,
        "log_sigma": ls.mean(1),
        "theory": theory,
        "offset": offset,
        "sep": sep,
    }
    return numbers, curves


# ---- part B: depth sweep, init vs trained ----------------------------------------------------


def train_net(s: Settings, depth: int, out: Path) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    cfg = TrainConfig(
        task="two_tasks",
        model="mlp",
        n_samples=s.n_samples,
        frac_train=0.8,
        d_hidden=[s.width] * depth,
        act_fn="relu",
        optimizer="adam",
        weight_decay=0.0,
        lr=s.lr,
        steps=s.train_steps,
        eval_every=max(1, s.train_steps // 4),
        checkpoint_steps=[0],
        seed=s.seed,
        threads=1,
        progress=False,
    )
    run_dir = out / f"train_depth{depth}"
    result = train(cfg, run_dir, callbacks=[HeInit(s.seed + depth)], resume=True)
    step0 = dict(list_checkpoints(run_dir))[0]  # saved after HeInit, before the first update
    init = load_checkpoint(step0)
    metrics = {k: result.metrics.get(k) for k in ("train_loss", "test_loss")}
    return init, result.model, {"steps": result.step, **metrics}


def measure(model: nn.Module, x: torch.Tensor, s: Settings, depth: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(s.seed)
    model = model.double()
    x = x[: s.n_link].double()
    jac = layer_jacobians(model, x)
    prof, base = alignment_profile(jac), rotation_baseline(jac, gen)
    mid = jac.depth // 2
    out: dict[str, Any] = {
        "consecutive_overlap": float(np.nanmean(prof.consecutive)),
        "consecutive_overlap_rotation_baseline": float(np.nanmean(base.consecutive)),
        "efficiency": float(np.nanmean(prof.efficiency)),
        "efficiency_rotation_baseline": float(np.nanmean(base.efficiency)),
        "right_shared_mid": float(prof.right_shared[:, mid, 0].mean()),
        "right_shared_profile": [None, *prof.right_shared[:, 1:, 0].mean(0).tolist()],
        "separation_io": float(np.median(prof.separation[:, -1])),
    }
    hidden = jac.factors[1:-1]
    if len(hidden) >= 2:
        res = lyapunov_exponents(hidden, min(4, s.k), generator=gen)
        out["hidden_lyapunov_qr"] = res.exponents.tolist()
        out["hidden_lyapunov_stderr"] = res.stderr.tolist()
    names = [f"layers.{l}" for l in range(1, depth + 1)]
    for kind in ("interaction", "pca"):
        # global scope: M^l from the model output's functions, i.e. E[J_{l:L}^T J_{l:L}]
        # (PCA has no M, so no global scope)
        if kind == "interaction":
            bases = ib.build_bases(model, x, [*names, "output"], kind, scope="global",
                                   progress=False)  # fmt: skip
        else:
            bases = ib.build_bases(model, x, [*names, "output"], kind, progress=False)
        angles = interaction_basis_angles(jac, bases[:-1], k=s.link_k)
        out[f"angles_deg_{kind}"] = [float(np.degrees(angles[n].mean())) for n in names]
        if kind == "interaction":
            out["angles_deg_gram_weighted_max"] = gram_weighted_check(model, x, jac, bases, s)
    return out


def gram_weighted_check(
    model: nn.Module, x: torch.Tensor, jac: Any, bases: list[ib.Basis], s: Settings
) -> float:
    """Largest angle (deg) between G^{1/2} V_k(J G^{1/2}) and the interaction directions."""
    suffix, worst, h = jac.suffix_products(), 0.0, x
    linears: Any = model.layers  # experiments.models.MLP: layers.{k}, acts.{k}
    acts: Any = model.acts
    with torch.no_grad():
        for layer, basis in enumerate(bases[:-1], start=1):
            h = acts[layer - 1](linears[layer - 1](h))
            hc = (h - h.mean(0)).numpy()
            weighted = jacobian_input_directions(suffix[layer], s.link_k, gram=hc.T @ hc / len(hc))
            angles = direction_angles(weighted, basis_directions(basis), s.link_k)
            worst = max(worst, float(np.degrees(angles.max())))
    return worst


def random_angle_baseline(s: Settings) -> float:
    """Mean principal angle (deg) between independent random ``link_k``-dim subspaces."""
    gen = torch.Generator().manual_seed(s.seed)
    a = torch.randn(500, s.width, s.link_k, generator=gen, dtype=torch.float64)
    b = torch.randn(500, s.width, s.link_k, generator=gen, dtype=torch.float64)
    return float(np.degrees(principal_angles(a, b).mean().item()))


def sweep_part(s: Settings, out: Path) -> list[dict[str, Any]]:
    x = build_task(TrainConfig(task="two_tasks", n_samples=s.n_samples, frac_train=0.8))
    x_train = x.train_inputs
    rows = []
    for depth in s.depths:
        init, trained, metrics = train_net(s, depth, out)
        row = {"depth": depth, **metrics}
        row["init"] = measure(init, x_train, s, depth)
        row["trained"] = measure(trained, x_train, s, depth)
        rows.append(row)
        print(json.dumps({"depth": depth, **metrics}), flush=True)
    return rows


# ---- figures and entry point -----------------------------------------------------------------


def figures(numbers: dict[str, Any], curves: dict[str, np.ndarray], out: Path) -> list[Path]:
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    rnd = numbers["random"]
    plot_log_singular_values(
        curves["depths"],
        curves["log_sigma"],
        curves["theory"],
        curves["offset"],
        ax=ax0,
        title=f"random ReLU MLP, width {rnd['width']} (dashed: masked closed form)",
    )
    sep = curves["sep"]
    plot_separation(
        curves["depths"],
        {"median": np.median(sep, 1), "geometric mean": np.exp(np.log(sep).mean(1))},
        ax=ax1,
    )
    paths = [out / "jacobian_spectra_random.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    sweep = numbers["sweep"]
    depths = [r["depth"] for r in sweep]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), constrained_layout=True)
    curves_b = {
        f"{what} ({state})": [r[state][key] for r in sweep]
        for state in ("init", "trained")
        for what, key in (("overlap", "consecutive_overlap"), ("efficiency", "efficiency"))
    }
    baselines = {
        "E|<u,e>| (random)": random_overlap_baseline(numbers["settings"]["width"]),
        "efficiency, Haar rotation (init)": float(
            np.mean([r["init"]["efficiency_rotation_baseline"] for r in sweep])
        ),
    }
    plot_alignment(
        depths,
        curves_b,
        baselines,
        ax=axes[0],
        ylabel="mean over cuts and inputs",
        xlabel="hidden layers (network depth)",
        title="consecutive-factor alignment vs depth",
    )
    deepest = sweep[-1]
    cuts = np.arange(len(deepest["init"]["right_shared_profile"]))
    plot_alignment(
        cuts,
        {s: np.array(deepest[s]["right_shared_profile"], dtype=float) for s in ("init", "trained")},
        ax=axes[1],
        ylabel="|<v1(J_0:l), v1(J_0:L)>|",
        xlabel="cut l",
        title=f"shared-basis alignment, depth {deepest['depth']}",
    )
    names = [f"layers.{l}" for l in range(1, deepest["depth"] + 1)]
    plot_basis_angles(
        names,
        {
            f"{kind} ({s})": np.radians(deepest[s][f"angles_deg_{kind}"])
            for s in ("init", "trained")
            for kind in ("interaction", "pca")
        },
        ax=axes[2],
    )
    axes[2].axhline(numbers["random_angle_deg"], ls=":", color="gray")
    paths.append(out / "jacobian_spectra_alignment.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def run(s: Settings, out: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Both parts; returns the JSON numbers and the curves of part A."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices on a shared CPU
    try:
        random_numbers, curves = random_part(s)
        print(json.dumps({"random": random_numbers}), flush=True)
        numbers = {
            "settings": asdict(s),
            "random": random_numbers,
            "random_angle_deg": random_angle_baseline(s),
            "overlap_baseline": random_overlap_baseline(s.width),
            "hidden_lyapunov_masked_theory": masked_gaussian_lyapunov(
                s.width, min(4, s.k)
            ).tolist(),
            "sweep": sweep_part(s, out),
        }
    finally:
        torch.set_num_threads(threads)
    return numbers, curves


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", default="results/jacobian_spectra", help="output directory")
    parser.add_argument("--figures", default=None, help="also copy figures + JSON here")
    parser.add_argument("--replot", action="store_true", help="redraw from saved results")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        numbers = json.loads((out / "jacobian_spectra.json").read_text())
        saved = np.load(out / "random_curves.npz")
        keys = ("depths", "log_sigma", "theory", "offset", "sep")
        curves = {k: saved[f"arr_{i}"] for i, k in enumerate(keys)}
    else:
        numbers, curves = run(s, out)
        (out / "jacobian_spectra.json").write_text(json.dumps(numbers, indent=1))
        keys = ("depths", "log_sigma", "theory", "offset", "sep")
        np.savez(out / "random_curves.npz", *[curves[k] for k in keys])
    paths = figures(numbers, curves, out)
    if args.figures:
        dest = Path(args.figures)
        dest.mkdir(parents=True, exist_ok=True)
        for path in [*paths, out / "jacobian_spectra.json"]:
            (dest / path.name).write_bytes(path.read_bytes())
    print(f"wrote {out / 'jacobian_spectra.json'} and {len(paths)} figures", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
