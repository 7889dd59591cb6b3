"""The ``interbasis`` command (the application layer, DESIGN §2).

Subcommands::

    interbasis demo  [--out DIR]                      the README demo on the shipped checkpoint
    interbasis graph CHECKPOINT --layers ... [--data train|test|all|FILE.pt] --out DIR
    interbasis train ...                              the training harness (experiments.train)
    interbasis atlas CHECKPOINT_OR_RUN_DIR --out DIR  graph ↔ Hessian ↔ D_LR ↔ spectral edge

``graph`` and ``demo`` write ``graph.graphml``, ``graph.npz``, ``graph.png`` and
``summary.json`` (node counts, edge sparsity, modules, timings) to the output directory.
Commands import ``experiments`` lazily, to load checkpoints and build their data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RIB_LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"error: cannot create output directory {out}: {err.strerror}") from err
    return out


def _load_data(checkpoint: str, data: str) -> Any:
    import torch

    if data in ("train", "test", "all"):
        from experiments.checkpoint_io import task_for_checkpoint

        task = task_for_checkpoint(checkpoint)
        return {"train": task.train_inputs, "test": task.test_inputs, "all": task.inputs}[data]
    path = Path(data)
    if not path.is_file():
        raise SystemExit(
            f"error: --data must be train, test, all or a tensor file; {data} not found"
        )
    tensor = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(tensor, torch.Tensor):
        raise SystemExit(f"error: {data} holds a {type(tensor).__name__}, not a tensor of inputs")
    return tensor


def run_graph(
    checkpoint: str,
    layers: Sequence[str],
    data: str,
    out: Path,
    basis: str = "interaction",
    edges: str = "squared",
    modules: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build, cluster, export and draw one graph; returns the summary written to JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from experiments.checkpoint_io import load_checkpoint
    from graphs import draw_graph, find_modules, write_graphml
    from interbasis import build_graph

    t0 = time.time()
    model = load_checkpoint(checkpoint)
    inputs = _load_data(checkpoint, data)
    graph = build_graph(
        model, inputs, list(layers), basis=basis, edges=edges,  # type: ignore[arg-type]
        dtype=torch.float64, batch_size=batch_size, progress=progress,
    )  # fmt: skip
    t_build = time.time() - t0
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": data,
        "n_inputs": int(inputs.shape[0]),
        "node_layers": list(layers),
        "basis": basis,
        "edges": edges,
        "nodes": {layer.name: layer.size for layer in graph.layers},
        "edges_for_90pct": graph.edges_needed(0.9),
        "edges_for_99pct": graph.edges_needed(0.99),
        "seconds_build": round(t_build, 2),
    }
    if modules:
        partition = find_modules(graph, method="leiden", seed=0)
        graph = graph.with_modules(partition)
        summary["modules"] = {"sizes": partition.sizes, "cost": partition.cost}
    graph.save(out / "graph.npz")
    write_graphml(graph, out / "graph.graphml")
    ax = draw_graph(graph)
    ax.figure.savefig(out / "graph.png", dpi=130, bbox_inches="tight")
    summary["seconds_total"] = round(time.time() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    print(f"nodes per layer: {summary['nodes']}")
    print(f"edges carrying 90 % / 99 % of each layer pair's weight: "
          f"{summary['edges_for_90pct']} / {summary['edges_for_99pct']}")  # fmt: skip
    if "modules" in summary:
        print(f"modules (Leiden on log-weighted edges): sizes {summary['modules']['sizes']}")
    print(f"built in {summary['seconds_build']} s, total {summary['seconds_total']} s")
    for name in ("graph.graphml", "graph.npz", "graph.png", "summary.json"):
        print(f"wrote {out / name}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT

    out = _out_dir(args.out)
    print(
        "interbasis demo: 1-layer transformer trained on (a + b) mod 113 (rib's checkpoint), "
        f"{len(RIB_LAYERS) - 1} sections {RIB_LAYERS}, rib's train split, float64"
    )
    summary = run_graph(
        str(RIB_MODADD_CHECKPOINT), RIB_LAYERS, "train", out, progress=not args.quiet
    )
    _print_summary(summary, out)
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    out = _out_dir(args.out)
    summary = run_graph(
        args.checkpoint, args.layers, args.data, out, basis=args.basis, edges=args.edges,
        modules=not args.no_modules, batch_size=args.batch_size, progress=not args.quiet,
    )  # fmt: skip
    _print_summary(summary, out)
    return 0


def _cmd_train(rest: Sequence[str]) -> int:
    from experiments.train import main as train_main

    return int(train_main(list(rest)) or 0)


def _cmd_atlas(rest: Sequence[str]) -> int:
    from interbasis.links.cli import atlas_command

    return atlas_command(list(rest))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interbasis", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="interaction graph of the shipped mod-add checkpoint")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    graph = sub.add_parser("graph", help="interaction graph of a checkpoint")
    graph.add_argument(
        "checkpoint",
        help="TransformerLens state dict (config.yaml beside it), training checkpoint "
        "step_*.pt or run directory",
    )
    graph.add_argument(
        "--layers",
        nargs="+",
        required=True,
        help='node layers (module names, then optionally "output"), in forward order',
    )
    graph.add_argument(
        "--data",
        default="train",
        help="train, test, all (the checkpoint's task) or a file holding a tensor of model "
        "inputs (default train)",
    )
    graph.add_argument("--out", required=True, help="output directory")
    graph.add_argument("--basis", default="interaction", choices=["interaction", "pca", "neuron"])
    graph.add_argument("--edges", default="squared", choices=["squared", "functional", "weight"])
    graph.add_argument("--batch-size", type=int, default=None)
    graph.add_argument("--no-modules", action="store_true", help="skip the module search")
    graph.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("train", help="train a model (see `interbasis train --help`)", add_help=False)
    sub.add_parser(
        "atlas",
        help="HTML + JSON report linking graph, Hessian, D_LR and spectral edge "
        "(see `interbasis atlas --help`)",
        add_help=False,
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return _cmd_train(argv[1:])
    from interbasis.performance import tune_allocator

    tune_allocator()  # graph commands: reuse freed Jacobian chunks instead of page-faulting
    if argv[:1] == ["atlas"]:
        return _cmd_atlas(argv[1:])
    args = parser().parse_args(argv)
    from graphs import GraphError
    from interbasis.errors import InterbasisError

    try:
        return _cmd_demo(args) if args.command == "demo" else _cmd_graph(args)
    except (InterbasisError, GraphError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
