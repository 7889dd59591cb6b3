"""The mod-add interaction graph in three bases: sparsity and Fourier labels (issue 5).

On the shipped rib checkpoint (1-layer ReLU transformer, (a + b) mod 113) the graph is built in
the interaction, PCA and neuron bases (rib's train split, centring on, float64). Per basis:

* **sparsity**: per layer pair, the fewest edges carrying 90 % / 99 % of the pair's weight
  (``InteractionGraph.edges_needed``; the constant node has no edges) and the whole curve;
* **Fourier labels**: every node's function ``f_hat_i(a, b)`` on *all* 113² pairs (activations
  captured for every pair, then ``Basis.transform``), its 2-D DFT (``numpy.fft.fft2``), the
  frequency pair and the key frequency with the most energy (:func:`fourier_labels`).

    python -m experiments.modadd_graph --quick        # 3 node layers, 128 inputs: seconds
    python -m experiments.modadd_graph                # 4 node layers, 3 830 inputs: minutes
    python -m experiments.modadd_graph --replot --figures docs/figures   # redraw only

Writes ``<out>/modadd_graph.json``, ``graph_<basis>.npz`` and the figures
``modadd_graph_{sparsity,fourier,layered_<basis>}.png``. See docs/modadd_graph.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import interbasis as ib
from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task
from graphs import InteractionGraph, draw_graph
from interbasis.errors import DataError, NodeLayerError

P = 113
BasisName = Literal["interaction", "pca", "neuron"]
BASES: tuple[BasisName, ...] = ("interaction", "pca", "neuron")
FRACTIONS = (0.9, 0.99)
FULL_LAYERS = ("blocks.0.ln1", "blocks.0.ln2", "unembed", "output")
QUICK_LAYERS = ("blocks.0.ln2", "unembed", "output")
QUICK_SAMPLES = 128  # the first inputs of rib's (already shuffled) train split
N_COLOURED = 9  # the drawing colours the most common key frequencies, the rest grey


# ------------------------------------------------------------------ Fourier labels
def frequency_classes(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (p² - 1)/2 folded non-DC classes of Z_p² (p odd).

    Returns ``pairs`` (n, 2) signed components in [-(p-1)/2, (p-1)/2] with ``ka > 0`` or
    ``ka = 0 < kb``, and the flat indices ``pos``/``neg`` of ``(ka, kb)`` and ``(-ka, -kb)``
    into a (p, p) grid read row-major (axis 0 = a).
    """
    if p % 2 == 0:
        raise ValueError(f"the folding assumes an odd modulus, got p={p}")
    h = (p - 1) // 2
    grid_a, grid_b = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1), indexing="ij")
    ka, kb = grid_a.ravel(), grid_b.ravel()
    keep = (ka > 0) | ((ka == 0) & (kb > 0))
    pairs = np.stack([ka[keep], kb[keep]], axis=1)
    pos = (pairs[:, 0] % p) * p + pairs[:, 1] % p
    neg = (-pairs[:, 0] % p) * p + (-pairs[:, 1]) % p
    return pairs, pos, neg


def key_frequency(pairs: np.ndarray) -> np.ndarray:
    """k when the non-zero components of a class all have magnitude k, else -1 (mixed)."""
    a, b = np.abs(pairs[:, 0]), np.abs(pairs[:, 1])
    return np.where((a == 0) | (b == 0) | (a == b), np.maximum(a, b), -1)


def fourier_labels(f_hat: np.ndarray, p: int, has_constant: bool) -> list[dict[str, Any] | None]:
    """Dominant folded frequency of each node.

    ``f_hat``: (p², n) or (p², positions, n), rows a-major (row = a·p + b). Power spectra
    ``|F(ka, kb)|²`` of the (a, b) grid are summed over positions; DC is dropped. A real
    function has ``|F(k)|² = |F(-k)|²``, so ``k`` and ``-k`` are folded into one class of energy
    ``|F(k)|² + |F(-k)|²`` written as in :func:`frequency_classes`: (3, -5) is the class of
    ``cos 2π(3a - 5b)/p``, (3, 5) that of ``cos 2π(3a + 5b)/p``. Per node: ``pair`` = the class
    with the most energy, ``pair_share`` = its share of the non-DC energy; ``frequency`` = the
    key frequency k whose classes (k, 0), (0, k), (k, k), (k, -k) hold the most energy (mixed
    classes such as (3, 5) count only in the denominator), ``frequency_share`` = their share.
    ``None`` for the constant node and for a node without non-DC energy.
    """
    grid = f_hat.reshape(p, p, -1, f_hat.shape[-1])  # (a, b, positions, nodes)
    power = (np.abs(np.fft.fft2(grid, axes=(0, 1))) ** 2).sum(axis=2).reshape(p * p, -1)
    pairs, pos, neg = frequency_classes(p)
    energy = power[pos] + power[neg]  # (classes, nodes)
    total = energy.sum(axis=0)
    keys = key_frequency(pairs)
    ks = np.arange(1, (p - 1) // 2 + 1)
    by_key = np.stack([energy[keys == k].sum(axis=0) for k in ks])  # (keys, nodes)
    labels: list[dict[str, Any] | None] = []
    for i in range(energy.shape[1]):
        if (has_constant and i == 0) or not total[i] > 0:
            labels.append(None)
            continue
        c, k = int(energy[:, i].argmax()), int(by_key[:, i].argmax())
        labels.append(
            {
                "pair": [int(pairs[c, 0]), int(pairs[c, 1])],
                "pair_share": float(energy[c, i] / total[i]),
                "frequency": int(ks[k]),
                "frequency_share": float(by_key[k, i] / total[i]),
            }
        )
    return labels


@torch.no_grad()
def capture_inputs(
    model: nn.Module, inputs: torch.Tensor, names: Sequence[str], batch_size: int = 4096
) -> dict[str, torch.Tensor]:
    """Activations at the input of each named module (``"output"`` = model output), float64."""
    model64 = copy.deepcopy(model).double().eval()
    modules = dict(model64.named_modules())
    unknown = [n for n in names if n != "output" and n not in modules]
    if unknown:
        raise NodeLayerError(
            f"capture_inputs: {unknown} are not modules of the model; use names from "
            f"named_modules(), e.g. {[n for n in modules if n][:5]}"
        )
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name: str) -> Any:
        def read(_module: nn.Module, args: tuple[Any, ...]) -> None:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if len(tensors) != 1:
                raise DataError(
                    f"capture_inputs: module {name!r} takes {len(tensors)} tensor inputs; its "
                    "input is a node layer only when it takes exactly one"
                )
            chunks[name].append(tensors[0])

        return read

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names if n != "output"]
    try:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            out = model64(batch.double() if batch.is_floating_point() else batch)
            if "output" in chunks:
                chunks["output"].append(out)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(c) for n, c in chunks.items()}


# ------------------------------------------------------------------ sparsity
def sparsity_curve(e: np.ndarray, n_points: int = 200) -> dict[str, list[float]]:
    """Share of the pair's total weight carried by the largest ``n`` edges, at ~log-spaced n."""
    w = np.sort(e[e > 0])[::-1]
    share = np.cumsum(w) / w.sum()
    n = np.unique(np.geomspace(1, w.size, n_points).round().astype(int))
    return {"n_edges": n.tolist(), "share": share[n - 1].tolist()}


def edge_table(graph: InteractionGraph) -> list[dict[str, Any]]:
    """Per layer pair: positive edges and the edges needed for each share in FRACTIONS."""
    names = [layer.name for layer in graph.layers]
    needed = {f"needed_{round(100 * f)}": graph.edges_needed(f) for f in FRACTIONS}
    return [
        {"pair": f"{names[i]} -> {names[i + 1]}", "edges": int((e > 0).sum())}
        | {key: counts[i] for key, counts in needed.items()}
        for i, e in enumerate(graph.edges)
    ]


def active_nodes(graph: InteractionGraph, fraction: float = 0.9) -> list[np.ndarray]:
    """Per layer, whether a node touches an edge of the graph pruned to ``fraction``."""
    kept = graph.prune(fraction).edges
    out = []
    for li, layer in enumerate(graph.layers):
        touch = np.zeros(layer.size, dtype=bool)
        if li > 0:
            touch |= kept[li - 1].any(axis=1)
        if li < len(kept):
            touch |= kept[li].any(axis=0)
        out.append(touch)
    return out


def label_summary(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the labelled nodes and over the *active* ones (touching the 90 % graph): median
    key-frequency share, share of nodes >= 0.9, nodes per key frequency (where it holds >= ½)."""
    summary: dict[str, Any] = {}
    for group, sel in (("all", nodes), ("active", [n for n in nodes if n["active"]])):
        share = np.array([n["frequency_share"] for n in sel])
        keys = Counter(n["frequency"] for n in sel if n["frequency_share"] >= 0.5)
        summary[group] = {
            "nodes": len(sel),
            "median_frequency_share": float(np.median(share)) if sel else None,
            "frac_frequency_share_ge_0.9": float((share >= 0.9).mean()) if sel else None,
            "key_frequencies": {str(k): c for k, c in sorted(keys.items())},
        }
    return summary


# ------------------------------------------------------------------ the experiment
def run(
    layers: Sequence[str], n_samples: int, bases: Sequence[BasisName], out: Path
) -> dict[str, Any]:
    model, task = load_rib_modadd(), rib_modadd_task()
    data = task.train_inputs[:n_samples]
    acts = capture_inputs(model, task.inputs, layers)  # all p² pairs, a-major
    settings = dict(node_layers=list(layers), n_samples=len(data), p=P, dtype="float64")
    result: dict[str, Any] = {"settings": settings, "bases": {}}
    for kind in bases:
        started = time.time()
        bs = ib.build_bases(model, data, layers, basis=kind, dtype=torch.float64, progress=False)
        graph = ib.build_graph(
            model, data, layers, basis=kind, bases=bs, dtype=torch.float64, progress=False
        )
        graph.save(out / f"graph_{kind}.npz")
        per_layer = {}
        for b, layer, act in zip(bs, graph.layers, active_nodes(graph), strict=True):
            labels = fourier_labels(b.transform(acts[b.name]).cpu().numpy(), P, b.has_constant)
            lam = layer.eigenvalues.tolist()
            nodes = [dict(index=i, eigenvalue=lam[i], active=bool(act[i]), **lab)
                     for i, lab in enumerate(labels) if lab is not None]  # fmt: skip
            per_layer[b.name] = dict(size=layer.size, summary=label_summary(nodes), nodes=nodes)
        result["bases"][kind] = {
            "edge_table": edge_table(graph),
            "curves": [sparsity_curve(e) for e in graph.edges],
            "layers": per_layer,
            "seconds": round(time.time() - started, 1),
        }
        print(f"{kind}: {time.time() - started:.0f} s", flush=True)
    return result


# ------------------------------------------------------------------ figures
def plot_layered(graph: InteractionGraph, per_layer: dict[str, Any], kind: str, path: Path) -> None:
    """``draw_graph``, nodes coloured by key frequency where it holds >= half their energy.

    Edges between two nodes of the same colour take that colour (``draw_graph`` colours
    modules; here "module" m is the m-th most common key frequency).
    """
    nodes = [(f"{name}:{n['index']}", n) for name, lay in per_layer.items() for n in lay["nodes"]]
    freq = {nid: n["frequency"] for nid, n in nodes if n["frequency_share"] >= 0.5}
    common = [k for k, _ in Counter(freq.values()).most_common(N_COLOURED)]
    colour = {nid: common.index(k) for nid, k in freq.items() if k in common}
    ax = draw_graph(graph.with_modules(colour), prune=0.9, max_edges_per_pair=1000)
    legend = ax.get_legend()
    if legend is not None:
        for text, k in zip(legend.get_texts(), common, strict=True):
            text.set_text(f"k = {k}")
        legend.set_title("key frequency", prop={"size": 7})
    ax.set_title(f"{kind} basis: 90 % of each pair's edge weight", fontsize=9)
    ax.get_figure(root=True).savefig(path, dpi=80, bbox_inches="tight")
    plt.close("all")


def _panels(titles: Sequence[str], width: float) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(1, len(titles), figsize=(width * len(titles), 3.0), squeeze=False)
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize=8)
        ax.set_ylim(0, 1.01)
    return fig, axes[0]


def _finish(fig: Any, axes: np.ndarray, ylabel: str, path: Path) -> None:
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sparsity(result: dict[str, Any], path: Path) -> None:
    kinds = list(result["bases"])
    fig, axes = _panels([r["pair"] for r in result["bases"][kinds[0]]["edge_table"]], 3.6)
    for i, ax in enumerate(axes):
        for kind in kinds:
            curve = result["bases"][kind]["curves"][i]
            ax.semilogx(curve["n_edges"], curve["share"], label=kind)
        for f in FRACTIONS:
            ax.axhline(f, color="0.7", lw=0.6, ls=":")
        ax.set_xlabel("edges (largest first)")
    _finish(fig, axes, "share of edge weight", path)


def plot_fourier(result: dict[str, Any], path: Path) -> None:
    kinds = list(result["bases"])
    names = list(result["bases"][kinds[0]]["layers"])
    fig, axes = _panels(names, 3.4)
    for ax, name in zip(axes, names, strict=True):
        for kind in kinds:
            nodes = result["bases"][kind]["layers"][name]["nodes"]
            nodes = sorted(nodes, key=lambda n: -n["frequency_share"])
            share = np.array([n["frequency_share"] for n in nodes])
            rank = np.arange(1, share.size + 1)
            (line,) = ax.plot(rank, share, label=kind, lw=1)
            active = np.array([n["active"] for n in nodes], dtype=bool)
            ax.plot(rank[active], share[active], ".", color=line.get_color(), ms=4)
        ax.set_xlabel("nodes (sorted)")
    axes[0].plot([], [], "k.", ms=4, label="node on the 90 % edges")
    _finish(fig, axes, "energy share of the key frequency", path)


def plot_all(result: dict[str, Any], out: Path) -> None:
    """Every figure, from the JSON result and the saved graphs (also used by ``--replot``)."""
    plot_sparsity(result, out / "modadd_graph_sparsity.png")
    plot_fourier(result, out / "modadd_graph_fourier.png")
    for kind, res in result["bases"].items():
        graph = InteractionGraph.load(out / f"graph_{kind}.npz")
        plot_layered(graph, res["layers"], kind, out / f"modadd_graph_layered_{kind}.png")


def finite_json(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_json(v) for v in x]
    return x


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 node layers, 128 inputs")
    parser.add_argument("--out", default="results/modadd_graph", help="output directory")
    parser.add_argument("--n-samples", type=int, help="first N train inputs (default all/128)")
    parser.add_argument("--bases", default=",".join(BASES), help="comma-separated subset")
    parser.add_argument("--figures", default=None, help="also copy the PNGs here")
    parser.add_argument("--replot", action="store_true", help="redraw from the files in --out")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    n_train = len(rib_modadd_task().train_idx)
    n = args.n_samples if args.n_samples is not None else (QUICK_SAMPLES if args.quick else n_train)
    if not 1 <= n <= n_train:
        parser.error(f"--n-samples must be in [1, {n_train}], got {n}")
    names = [b.strip() for b in args.bases.split(",") if b.strip()]
    if not names or set(names) - set(BASES) or len(set(names)) != len(names):
        parser.error(f"--bases must be distinct names from {BASES}, got {args.bases!r}")
    bases = [cast(BasisName, b) for b in names]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"cannot create --out {out}: {err}")
    if args.replot:
        try:
            result = json.loads((out / "modadd_graph.json").read_text())
        except (OSError, ValueError) as err:
            parser.error(f"--replot needs {out / 'modadd_graph.json'} from an earlier run: {err}")
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            result = run(QUICK_LAYERS if args.quick else FULL_LAYERS, n, bases, out)
        finally:
            torch.set_num_threads(threads)
        result["settings"]["quick"] = args.quick
        (out / "modadd_graph.json").write_text(json.dumps(finite_json(result), indent=1))
    plot_all(result, out)
    for kind, res in result["bases"].items():
        print(kind, json.dumps(res["edge_table"]))
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        for png in sorted(out.glob("modadd_graph_*.png")):
            shutil.copy(png, Path(args.figures) / png.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
