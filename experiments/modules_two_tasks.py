"""Modules of networks that solve two independent tasks, in three bases (issue 6).

Two networks with inputs ``(x1, x2)`` and outputs ``(f1(x1), f2(x2))``:

(a) **mixed disconnected**: two random tanh MLPs ``1 -> w -> ... -> w -> 1`` side by side
    (block-diagonal weights; weights ``N(0, 1.5²/fan_in)``, biases ``N(0, 0.5²)``), whose
    hidden layers are then mixed by random invertible maps: ``h -> h R`` with ``R = Q diag(s)``
    (``Q`` orthogonal, from the QR of a Gaussian matrix; ``s`` log-uniform in [1/2, 2]) and the
    next layer's weights ``R^{-1} W``, so the function is unchanged (checked to 1e-10) while
    every neuron depends on both inputs;
(b) **dense trained**: one tanh MLP trained on ``experiments.tasks.two_tasks`` (x² and sin 5x)
    with ``experiments.train`` (Adam, MSE, random inputs). This part is a measurement.

Node layers are the inputs of ``layers.0 .. layers.{depth}`` and ``"output"``. Each graph is
built (float64, centred, default truncation) on the Cartesian product grid of ``grid`` points
per input in [-1, 1], so the two inputs are exactly independent in the data.

**A node's task** is read from its function ``g`` on the grid by the exact ANOVA of a product
grid: ``V = Var g``, ``V_k = Var_{x_k} E[g | x_k]`` (k = 1, 2), ``V_12 = V - V_1 - V_2``;
task = 1 if ``V_1 >= V_2`` else 2, purity = ``max(V_1, V_2) / V``. **Modules**: Leiden
(``graphs.find_modules`` defaults: method "auto" — Leiden, modularity, resolution chosen among
1, 1/2, 1/4 by the null-model z — ε = 1e-3 of the largest edge),
and two modules (k = 2): exact bipartition search where the graph has ≤ 16 non-constant
nodes, else the spectral method with ``n_modules=2``. Reported: ARI against the task split
over the nodes both assign (``graphs.adjusted_rand_index``; nodes whose edges are all below ε
are unassigned), also restricted to pure nodes (purity ≥ 0.9); ``misplaced`` = share of
assigned nodes whose task differs from their Leiden module's majority task (0 when every
module lies within one task, even if a task is split into several modules, which lowers the
ARI); cross-task weight = share of the edge weight between nodes of different tasks; null-model
z of the Leiden partition (``graphs.null_model``; positive = more modular than chance).
**Module ablations** (issue 20, :func:`interbasis.ablation.module_ablation`): each module of
the default partition is ablated in turn (its nodes set to their mean in every node layer)
and the R² of each task's output against the clean outputs is recorded (matrix module ×
task; 1 = kept, <= 0 = chance); ``isolates[k]``: some module breaks task k (R² <= 0.05) while
the other stays within 0.01.

    python -m experiments.modules_two_tasks --quick     # seconds
    python -m experiments.modules_two_tasks             # minutes (5 seeds, larger nets)

Writes ``<out>/modules_two_tasks.json``, ``two_tasks_ari.png`` and ``two_tasks_graphs.png``;
training runs of (b) are cached in ``<out>/runs``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import interbasis as ib
from experiments.modadd_graph import capture_inputs, finite_json
from experiments.tasks import two_tasks
from experiments.train import TrainConfig, train
from graphs import InteractionGraph, adjusted_rand_index, draw_graph, find_modules, null_model
from interbasis.ablation import module_ablation

BasisName = Literal["interaction", "pca", "neuron"]
BASES: tuple[BasisName, ...] = ("interaction", "pca", "neuron")
EXACT_MAX_NODES = 16  # graphs.find_modules(method="exact") enumerates bipartitions up to this
PURE = 0.9  # purity threshold of the "pure nodes" ARI
CHANCE_R2 = 0.05  # a task is broken when its R² (vs the clean outputs) falls to <= this
KEPT_R2 = 0.01  # ... and kept when it stays within this of the unablated R² (1)
FUNCTION_TOL = 1e-10  # mixing must leave the float64 function unchanged up to round-off
TABLE_KEYS = "ari ari_k2 ari_pure misplaced cross_task_share null_z median_purity nodes assigned"


@dataclass(frozen=True)
class Settings:
    width: int  # hidden width of each sub-network of (a)
    depth: int  # hidden layers of both networks
    grid: int  # grid points per input
    seeds: tuple[int, ...]
    dense_width: int  # hidden width of (b)
    train_steps: int
    n_samples: int  # random training inputs of (b)
    lr: float
    n_shuffles: int  # null model


QUICK = Settings(3, 2, 24, (0,), 8, 400, 512, 3e-3, 10)
FULL = Settings(8, 3, 40, (0, 1, 2, 3, 4), 32, 4000, 1024, 3e-3, 50)


class MixedTwoNet(nn.Module):
    """``x -> layers.0 -> acts.0 -> mixes.0 -> layers.1 -> ... -> layers.{depth}``.

    ``mixes.k`` is the bias-free map ``h -> h R_k``; the input of ``layers.{k+1}`` is the
    mixed hidden layer.
    """

    def __init__(self, layers: list[nn.Linear], mixes: list[nn.Linear]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(nn.Tanh() for _ in mixes)
        self.mixes = nn.ModuleList(mixes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act, mix in zip(self.layers, self.acts, self.mixes, strict=False):
            x = mix(act(layer(x)))
        return self.layers[-1](x)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def mixed_disconnected_net(width: int, depth: int, seed: int, mix: bool = True) -> MixedTwoNet:
    """Network (a); ``mix=False`` gives the same weights with every ``R = I``."""
    return mixed_subnetworks(2, width, depth, seed, mix)


def mixed_subnetworks(
    k: int, width: int, depth: int, seed: int, mix: bool = True,
    scales: Sequence[float] | None = None,
) -> MixedTwoNet:  # fmt: skip
    """``k`` tanh sub-networks ``1 -> width -> ... -> 1`` side by side, disguised by mixing.

    As network (a) with ``k`` blocks (``k = 2`` is :func:`mixed_disconnected_net`, same random
    draws). ``scales[l]`` multiplies the weights of layer ``l`` (after the draws): layers whose
    edge weights differ in scale, the case that made Leiden split sub-networks by depth.
    Input ``i`` feeds sub-network ``i`` only; output ``i`` reads it only.
    """
    gen = torch.Generator().manual_seed(seed)
    widths = [1] + [width] * depth + [1]
    layers, mixes, r_prev = [], [], torch.eye(k * widths[0], dtype=torch.float64)
    for l in range(depth + 1):
        a, b = widths[l], widths[l + 1]
        w = torch.zeros(k * b, k * a, dtype=torch.float64)
        for s in range(k):  # block-diagonal: sub-network s reads input s only
            block = torch.randn(b, a, generator=gen, dtype=torch.float64) * 1.5 / a**0.5
            w[s * b : (s + 1) * b, s * a : (s + 1) * a] = block
        bias = 0.5 * torch.randn(k * b, generator=gen, dtype=torch.float64)
        if scales is not None:
            w = w * scales[l]
        # torch computes x W^T; the layer now reads h R, so W^T -> R^{-1} W^T, W -> W R^{-T}
        layers.append(_linear(w @ torch.linalg.inv(r_prev).T, bias))
        if l < depth:
            q, _ = torch.linalg.qr(torch.randn(k * b, k * b, generator=gen, dtype=torch.float64))
            log_s = torch.rand(k * b, generator=gen, dtype=torch.float64) * 2 - 1
            r = q * 2.0**log_s if mix else torch.eye(k * b, dtype=torch.float64)
            mixes.append(_linear(r.T, None))  # h -> h R
            r_prev = r
    return MixedTwoNet(layers, mixes).eval()


def node_layers(depth: int) -> list[str]:
    return [f"layers.{k}" for k in range(depth + 1)] + ["output"]


def anova(values: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(V, V_1, V_2)`` per column of ``values`` (m², n) on an x1-major m × m product grid."""
    g = values.reshape(m, m, -1)
    mean = g.mean(axis=(0, 1))
    total = ((g - mean) ** 2).mean(axis=(0, 1))
    return total, ((g.mean(axis=1) - mean) ** 2).mean(0), ((g.mean(axis=0) - mean) ** 2).mean(0)


def node_tasks(
    bases: Sequence[ib.Basis], acts: dict[str, torch.Tensor], m: int
) -> tuple[dict[str, int], dict[str, float]]:
    """Task (0 = x1, 1 = x2) and purity of every non-constant node (see module docstring)."""
    tasks, purity = {}, {}
    for b in bases:
        total, v1, v2 = anova(b.transform(acts[b.name]).cpu().numpy(), m)
        for i in range(b.n_nodes):
            if b.has_constant and i == 0:
                continue
            tasks[f"{b.name}:{i}"] = int(v2[i] > v1[i])
            purity[f"{b.name}:{i}"] = float(max(v1[i], v2[i]) / total[i]) if total[i] > 0 else 0.0
    return tasks, purity


def cross_task_share(graph: InteractionGraph, tasks: dict[str, int]) -> float:
    """Share of the total edge weight on edges joining nodes of different tasks."""
    cross = total = 0.0
    for i, e in enumerate(graph.edges):
        lo, hi = graph.layers[i], graph.layers[i + 1]
        t_in = np.array([tasks.get(f"{lo.name}:{j}", -1) for j in range(lo.size)])
        t_out = np.array([tasks.get(f"{hi.name}:{j}", -1) for j in range(hi.size)])
        cross += float(e[t_out[:, None] != t_in[None, :]].sum())
        total += float(e.sum())
    return cross / total


def misplaced_share(partition: Any, tasks: dict[str, int]) -> float:
    """Share of assigned nodes whose task is not their module's majority task (0 = every
    module lies within one task, however many modules there are)."""
    by_module: dict[int, list[int]] = {}
    for node, m in partition.membership.items():
        if m >= 0:
            by_module.setdefault(m, []).append(tasks[node])
    n = sum(len(t) for t in by_module.values())
    return sum(len(t) - max(t.count(0), t.count(1)) for t in by_module.values()) / n


def _ari(partition: Any, truth: dict[str, int]) -> float | None:
    both = [n for n, m in partition.membership.items() if m >= 0 and n in truth]
    return adjusted_rand_index(partition, truth) if len(both) >= 2 else None


def analyse(
    net: nn.Module, s: Settings, kind: BasisName
) -> tuple[dict[str, Any], InteractionGraph]:
    """Graph, tasks and modules of ``net`` in basis ``kind`` on the product grid."""
    x = two_tasks(grid_size=s.grid, dtype=torch.float64).inputs
    names = node_layers(s.depth)
    bases = ib.build_bases(net, x, names, basis=kind, dtype=torch.float64, progress=False)
    graph = ib.build_graph(net, x, names, basis=kind, bases=bases, progress=False)
    tasks, purity = node_tasks(bases, capture_inputs(net, x, names), s.grid)
    leiden = find_modules(graph)
    pure = {n: t for n, t in tasks.items() if purity[n] >= PURE}
    row: dict[str, Any] = {
        "basis": kind,
        "nodes": len(tasks),
        "assigned": sum(m >= 0 for m in leiden.membership.values()),
        "modules": list(leiden.sizes),
        "ari": _ari(leiden, tasks),
        "ari_pure": _ari(leiden, pure),
        "pure_nodes": len(pure),
        "median_purity": float(np.median(list(purity.values()))),
        "cross_task_share": cross_task_share(graph, tasks),
        "null_z": null_model(graph, leiden, n_shuffles=s.n_shuffles, seed=0).z,
        "misplaced": misplaced_share(leiden, tasks),
        "epsilon": list(leiden.epsilon),
        "k2_method": "exact" if len(tasks) <= EXACT_MAX_NODES else "spectral",
    }
    row["ari_k2"] = _ari(find_modules(graph, method=row["k2_method"], n_modules=2), tasks)
    row.update(ablation_matrix(net, x, graph, leiden, bases))
    return row, graph.with_modules(leiden)


def ablation_matrix(
    net: nn.Module, x: torch.Tensor, graph: InteractionGraph, partition: Any,
    bases: Sequence[ib.Basis],
) -> dict[str, Any]:  # fmt: skip
    """R² of each task's output (vs the clean outputs) with each module ablated in turn.

    ``isolates[k]``: some module breaks task k (R² <= 0.05) and keeps the other within 0.01.
    """
    res = module_ablation(net, x, graph, partition, "r2", bases=bases,
                          groups={"task 1": [0], "task 2": [1]})  # fmt: skip
    v = res.values
    kept = res.baseline - KEPT_R2
    isolates = [bool(((v[:, k] <= CHANCE_R2) & (v[:, 1 - k] >= kept[1 - k])).any()) for k in (0, 1)]
    return {"ablation_r2": v.tolist(), "ablation_modules": res.modules, "isolates": isolates}


def trained_dense_net(s: Settings, seed: int, out: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Network (b): trained by ``experiments.train`` (cached in ``<out>/runs``, resumed)."""
    cfg = TrainConfig(
        task="two_tasks", model="mlp", n_samples=s.n_samples, frac_train=0.8, data_seed=seed,
        d_hidden=[s.dense_width] * s.depth, act_fn="tanh", optimizer="adam", weight_decay=0.0,
        lr=s.lr, steps=s.train_steps, eval_every=max(1, s.train_steps // 4), seed=seed,
        threads=torch.get_num_threads(), progress=False,
    )  # fmt: skip
    result = train(cfg, out / "runs" / f"dense_seed{seed}", resume=True)
    return result.model.eval(), {k: result.metrics[k] for k in ("train_loss", "test_loss")}


def run(s: Settings, out: Path) -> tuple[dict[str, Any], dict[str, InteractionGraph]]:
    rows: list[dict[str, Any]] = []
    drawn: dict[str, InteractionGraph] = {}
    x = two_tasks(grid_size=s.grid, dtype=torch.float64).inputs
    for seed in s.seeds:
        mixed = mixed_disconnected_net(s.width, s.depth, seed)
        with torch.no_grad():
            gap = float(
                (mixed(x) - mixed_disconnected_net(s.width, s.depth, seed, False)(x)).abs().max()
            )
        if not gap < FUNCTION_TOL:
            raise RuntimeError(f"mixing changed the function by {gap:.3g} (seed {seed})")
        dense, losses = trained_dense_net(s, seed, out)
        nets = (("mixed", mixed, {"mixing_gap": gap}), ("dense", dense, losses))
        for network, net, extra in nets:
            for kind in BASES:
                row, graph = analyse(net, s, kind)
                rows.append({"network": network, "seed": seed, **row, **extra})
                if seed == s.seeds[0]:
                    drawn[f"{network}/{kind}"] = graph
                print(f"{network} {seed} {kind}: ARI {row['ari']}, k=2 {row['ari_k2']}", flush=True)
    return {"settings": asdict(s), "rows": rows, "table": summary_table(rows)}, drawn


def summary_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and min over seeds per (network, basis); None-valued entries are skipped."""
    table = []
    for network in ("mixed", "dense"):
        for kind in BASES:
            sel = [r for r in rows if r["network"] == network and r["basis"] == kind]
            entry: dict[str, Any] = {"network": network, "basis": kind, "seeds": len(sel)}
            for key in TABLE_KEYS.split():
                vals = [r[key] for r in sel if r[key] is not None]
                entry[key] = [float(np.mean(vals)), float(np.min(vals))] if vals else None
            entry["n_modules"] = [len(r["modules"]) for r in sel]
            # share of seeds where some module ablation breaks one task and keeps the other
            entry["isolates"] = [float(np.mean([r["isolates"][k] for r in sel])) for k in (0, 1)]
            table.append(entry)
    return table


def plot_ari(result: dict[str, Any], path: Path) -> None:
    """Bars = mean over seeds, dots = seeds: Leiden ARI, k = 2 ARI, cross-task edge weight."""
    panels = (
        ("ari", "ARI, Leiden (resolution 1)", False),
        ("ari_k2", "ARI, two modules (k = 2)", False),
        ("cross_task_share", "edge weight between tasks\n(share; drawn at >= 1e-16)", True),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, (key, ylabel, log) in zip(axes, panels, strict=True):
        for j, network in enumerate(("mixed", "dense")):
            for i, kind in enumerate(BASES):
                sel = [r for r in result["rows"] if r["network"] == network and r["basis"] == kind]
                vals = [r[key] for r in sel if r[key] is not None]
                if log:
                    vals = [max(v, 1e-16) for v in vals]
                x = j + (i - 1) * 0.27
                ax.bar(x, np.mean(vals), 0.25, color=f"C{i}", label=kind if j == 0 else None)
                ax.plot([x] * len(vals), vals, "k.", ms=4)
        ax.set_xticks([0, 1], ["(a) mixed disconnected", "(b) dense trained"])
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        else:
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_ylim(-0.1, 1.05)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_graphs(drawn: dict[str, InteractionGraph], rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    keys = [f"{n}/{k}" for n in ("mixed", "dense") for k in BASES]
    for ax, key in zip(axes.ravel(), keys, strict=True):
        draw_graph(drawn[key], ax, prune=0.99, label_limit=20)
        network, kind = key.split("/")
        row = next(r for r in rows if r["network"] == network and r["basis"] == kind)
        ari = "—" if row["ari"] is None else f"{row['ari']:.2f}"
        ax.set_title(f"{network}, {kind}: ARI {ari}", fontsize=9, pad=18)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small nets, one seed: seconds")
    parser.add_argument("--out", default="results/modules_two_tasks", help="output directory")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: mode's)")
    parser.add_argument("--figures", default=None, help="also copy the PNGs here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        try:
            seeds = tuple(int(v) for v in args.seeds.split(","))
        except ValueError:
            parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            parser.error(f"--seeds must be distinct integers >= 0, got {args.seeds!r}")
        settings = replace(settings, seeds=seeds)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"cannot create --out {out}: {err}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result, drawn = run(settings, out)
    finally:
        torch.set_num_threads(threads)
    result["settings"]["quick"] = args.quick
    plot_ari(result, out / "two_tasks_ari.png")
    plot_graphs(drawn, result["rows"], out / "two_tasks_graphs.png")
    (out / "modules_two_tasks.json").write_text(json.dumps(finite_json(result), indent=1))
    for entry in result["table"]:
        print(json.dumps(entry))
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        for png in ("two_tasks_ari.png", "two_tasks_graphs.png"):
            shutil.copy(out / png, Path(args.figures) / png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
