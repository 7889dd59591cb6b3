"""The ``interbasis`` command (the application layer, DESIGN §2).

Subcommands::

    interbasis demo  [--out DIR]                      the README demo on the shipped checkpoint
    interbasis graph CHECKPOINT --layers ... [--data train|test|all|FILE.pt] --out DIR
                     [--cache DIR]; `torchrun --nproc_per_node=N -m interbasis graph ...`
                     shards the data over N processes
    interbasis view  GRAPH_FILE [--out graph.html]    the interactive viewer of a graph file
    interbasis train ...                              the training harness (experiments.train)
    interbasis atlas CHECKPOINT_OR_RUN_DIR --out DIR  graph ↔ Hessian ↔ D_LR ↔ spectral edge
    interbasis ablate CHECKPOINT --layers ... --out DIR ablation curves (CSV + PNG)

``graph`` and ``demo`` write ``graph.graphml``, ``graph.npz``, ``graph.png``, ``graph.html``
(the viewer), ``summary.json`` (node counts, edge sparsity, modules, timings) and
``config.yaml`` to the output directory. Every command takes ``--config FILE.yaml`` holding any
of its options (keys = option names, ``-`` or ``_``); flags on the command line override it.
Each run writes its fully resolved options as ``config.yaml`` beside its outputs (``view``:
``{html stem}.config.yaml``), so ``interbasis graph --config DIR/config.yaml`` reruns a run.
The output directory is created only once there is something to write.
Commands import ``experiments`` lazily, to load checkpoints and build their data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RIB_LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]


def _check_out(path: str) -> Path:
    """Fail early, creating nothing, when ``path`` cannot become an output directory."""
    out = Path(path).absolute()
    first = next(p for p in (out, *out.parents) if p.exists())
    if not first.is_dir():
        raise SystemExit(f"error: cannot create output directory {out}: {first} is not a directory")
    if not os.access(first, os.W_OK):
        raise SystemExit(f"error: cannot create output directory {out}: {first} is not writable")
    return out


def _load_data(checkpoint: str, data: str, rows: Callable[[int], slice] | None = None) -> Any:
    """The model inputs of ``--data``; with ``rows`` (:func:`_shard_rows`) only this rank's
    slice of them (a tensor file is memory-mapped, so only those rows are read)."""
    import torch

    if data in ("train", "test", "all"):
        from experiments.checkpoint_io import task_for_checkpoint

        task = task_for_checkpoint(checkpoint)
        x = {"train": task.train_inputs, "test": task.test_inputs, "all": task.inputs}[data]
        return x if rows is None else x[rows(len(x))]
    path = Path(data)
    if not path.is_file():
        raise SystemExit(
            f"error: --data must be train, test, all or a tensor file; {data} not found"
        )
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True, mmap=rows is not None)
    except Exception as err:  # not a torch file, truncated, or holding pickled objects
        raise SystemExit(
            f"error: --data {data} is not a tensor file written by torch.save (torch.load "
            f"failed with {type(err).__name__}); pass train, test, all or such a file"
        ) from err
    if not isinstance(tensor, torch.Tensor):
        raise SystemExit(
            f"error: --data {data} holds a {type(tensor).__name__}, not a tensor of model inputs"
        )
    return tensor if rows is None else tensor[rows(len(tensor))].clone()


def _shard_rows() -> Callable[[int], slice] | None:
    """Under torchrun: ``n -> slice`` of rank r's rows ``[n r / R, n (r + 1) / R)``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    return lambda n: slice(n * rank // world, n * (rank + 1) // world)


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
    config: dict[str, Any] | None = None,
    cache: str | None = None,
    shard: bool = False,
) -> dict[str, Any]:
    """Build, cluster, export and draw one graph; returns the summary written to JSON.

    ``out`` is created only after the graph is built; if writing fails, a directory this call
    created is removed again. ``config`` (the resolved options) is written as ``config.yaml``.
    ``cache`` is the stage cache of a resumable build (``build_graph(cache_dir=)``). Under
    ``torchrun`` every rank builds its share of the data; only rank 0 finds the modules and
    writes (the other ranks return the summary without ``modules``); with ``shard`` each rank
    loads only its slice of the data rows (``split_over="shards"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from experiments.checkpoint_io import load_checkpoint
    from graphs import draw_graph, find_modules, write_graphml, write_html
    from interbasis import build_graph
    from interbasis.io import atomic_write

    t0 = time.time()
    model = load_checkpoint(checkpoint)
    rows = _shard_rows() if shard else None
    inputs = _load_data(checkpoint, data, rows)
    graph = build_graph(
        model, inputs, list(layers), basis=basis, edges=edges,  # type: ignore[arg-type]
        dtype=torch.float64, batch_size=batch_size, progress=progress, cache_dir=cache,
        split_over="shards" if rows is not None else "data",
    )  # fmt: skip
    t_build = time.time() - t0
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": data,
        "n_inputs": int(graph.metadata["n_samples"]),
        "node_layers": list(layers),
        "basis": basis,
        "edges": edges,
        "nodes": {layer.name: layer.size for layer in graph.layers},
        "edges_for_90pct": graph.edges_needed(0.9),
        "edges_for_99pct": graph.edges_needed(0.99),
        "seconds_build": round(t_build, 2),
    }
    if _rank() != 0:  # every rank holds the same graph; rank 0 clusters and writes it
        return summary
    if modules:
        partition = find_modules(graph, method="leiden", seed=0)
        graph = graph.with_modules(partition)
        summary["modules"] = {"sizes": partition.sizes, "cost": partition.cost}
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        graph.save(out / "graph.npz")
        write_graphml(graph, out / "graph.graphml")
        write_html(graph, out / "graph.html", title=f"interaction graph of {Path(checkpoint).name}")
        ax = draw_graph(graph)
        fig = ax.figure
        atomic_write(out / "graph.png", lambda p: fig.savefig(p, dpi=130, bbox_inches="tight",
                                                             format="png"))  # fmt: skip
        if config is not None:
            _write_config(out / "config.yaml", config, "graph")
        summary["seconds_total"] = round(time.time() - t0, 2)
        text = json.dumps(summary, indent=2, default=str) + "\n"

        def write_summary(path: Path) -> None:
            path.write_text(text)

        atomic_write(out / "summary.json", write_summary)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT")  # fmt: skip


def _torchrun_env() -> dict[str, str] | None:
    """The variables ``torchrun`` sets for a rank, or ``None`` for a single-process run
    (``WORLD_SIZE`` unset or 1). A run that asks for several ranks without the rest of them
    (``WORLD_SIZE`` set by hand) is a clear error, not a wait for ranks that never come."""
    world = os.environ.get("WORLD_SIZE", "1")
    try:
        several = int(world) > 1
    except ValueError:
        raise SystemExit(
            f"error: WORLD_SIZE must be an integer (set by torchrun), got {world!r}"
        ) from None
    if not several:
        return None
    missing = [k for k in _TORCHRUN_VARS if k != "LOCAL_WORLD_SIZE" and not os.environ.get(k)]
    if missing:
        raise SystemExit(
            f"error: WORLD_SIZE={world} asks for a distributed run but {', '.join(missing)} "
            "not set; launch with `torchrun --nproc_per_node=N -m interbasis ...` (or unset "
            "WORLD_SIZE)"
        )
    env = {k: os.environ[k] for k in _TORCHRUN_VARS if k in os.environ}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        if key in env and not env[key].isdigit():
            raise SystemExit(f"error: {key} must be an integer (set by torchrun), got {env[key]!r}")
    env.setdefault("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    return env


def _backend(local_rank: int, local_world: int, n_gpus: int) -> tuple[str, int | None]:
    """The backend and CUDA device of one rank on a node with ``n_gpus`` GPUs.

    NCCL needs a GPU of its own for every rank: with at least ``local_world`` GPUs, rank r
    takes GPU r; with fewer, ranks share GPUs round-robin (GPU ``r mod n_gpus``) and talk over
    gloo (the all-reduces go through the CPU); without GPUs, gloo on the CPU (device None).
    """
    if n_gpus < 1:
        return "gloo", None
    return ("nccl" if local_world <= n_gpus else "gloo"), local_rank % n_gpus


def _init_distributed() -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group so that the build
    shards its data over the ranks (docs/distributed.md); returns whether it joined.

    The backend and each rank's GPU come from :func:`_backend` (the build runs on the
    current CUDA device when there is one, so each rank must select its own before NCCL
    starts: without it every rank would build on GPU 0).
    """
    import torch
    import torch.distributed as dist

    env = _torchrun_env()
    if env is None or dist.is_initialized():
        return False
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend, gpu = _backend(int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"]), n_gpus)
    if gpu is not None:
        torch.cuda.set_device(gpu)
    dist.init_process_group(backend)
    return True


def _single_rank(command: str) -> bool:
    """Whether this process should run ``command``, which does not split its work over
    ranks: always, except under ``torchrun`` on a rank other than 0, which says so and does
    nothing (so N ranks neither compute the same thing N times nor write it N times).
    Without a complete torchrun environment the process runs the command as usual."""
    try:
        env = _torchrun_env()
    except SystemExit:  # a stray WORLD_SIZE, not a torchrun launch: these commands ignore it
        return True
    if env is None:
        return True
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    if rank == 0:
        print(f"interbasis {command} under torchrun: only `interbasis graph` and `atlas` split "
              f"their work over ranks; rank 0 runs {command} alone, ranks 1-{world - 1} exit",
              file=sys.stderr)  # fmt: skip
    return rank == 0


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    print(f"nodes per layer: {summary['nodes']}")
    print(f"edges carrying 90 % / 99 % of each layer pair's weight: "
          f"{summary['edges_for_90pct']} / {summary['edges_for_99pct']}")  # fmt: skip
    if "modules" in summary:
        print(f"modules (Leiden on log-weighted edges): sizes {summary['modules']['sizes']}")
    print(f"built in {summary['seconds_build']} s, total {summary['seconds_total']} s")
    names = ("graph.graphml", "graph.npz", "graph.png", "graph.html", "summary.json")
    for name in (*names, "config.yaml"):
        print(f"wrote {out / name}")


# ------------------------------------------------------------------------- config files
def _read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
        cfg = yaml.safe_load(text)
    except OSError as err:
        raise SystemExit(f"error: cannot read --config {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:  # its message spans several lines: one line here
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or " ".join(str(err).split())
        raise SystemExit(f"error: --config {path} is not valid YAML{where}: {what}") from err
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise SystemExit(f"error: --config {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def _check_keys(cfg: dict[str, Any], known: Sequence[str], command: str, path: str) -> None:
    for key in cfg:
        if key not in known:
            raise SystemExit(
                f"error: unknown key {key!r} in --config {path} for 'interbasis {command}' "
                f"(known keys: {', '.join(sorted(known))})"
            )


def _write_config(path: Path, config: dict[str, Any], command: str) -> None:
    import yaml

    from graphs.export import atomic_write

    text = (
        f"# resolved options of `interbasis {command}`; rerun with "
        f"`interbasis {command} --config {path.name}` (command-line flags override)\n"
        + yaml.safe_dump(config, sort_keys=False)
    ).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(text))


def _apply_config(sub: argparse.ArgumentParser, argv: list[str], command: str) -> Any:
    """Parse ``argv`` with the options of ``--config`` as defaults (the command line wins)."""
    args = sub.parse_args(argv)
    if args.config is None:
        return args
    cfg = _read_config(args.config)
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    _check_keys(cfg, list(actions), command, args.config)
    for key, value in cfg.items():
        action, bad = actions[key], None
        if isinstance(action, argparse._StoreTrueAction):
            bad = None if isinstance(value, bool) else "true or false"
        elif action.nargs in ("+", "*"):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            bad = None if ok else "a list of strings"
        elif value is not None and action.type is not None:
            try:
                action.type(value)  # type: ignore[operator]
            except (TypeError, ValueError):
                bad = f"of type {getattr(action.type, '__name__', action.type)}"
        if bad is None and action.choices is not None and value not in action.choices:
            bad = f"one of {list(action.choices)}"
        if bad:
            raise SystemExit(f"error: --config {args.config}: {key!r} must be {bad}, got {value!r}")
    sub.set_defaults(**cfg)
    return sub.parse_args(argv)


def _resolved(args: argparse.Namespace, paths: Sequence[str]) -> dict[str, Any]:
    """The options of a run, paths made absolute so the file reruns from anywhere."""
    out = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    for key in paths:
        if out.get(key) is not None and (key != "data" or Path(out[key]).is_file()):
            out[key] = str(Path(out[key]).absolute())
    return out


def _require(args: argparse.Namespace, sub: argparse.ArgumentParser, *keys: str) -> None:
    for key in keys:
        if getattr(args, key) in (None, []):
            sub.error(f"{key} is required (on the command line or as {key!r} in --config)")


# ------------------------------------------------------------------------- commands
def _cmd_graph(args: argparse.Namespace, sub: argparse.ArgumentParser, demo: bool) -> int:
    if demo:
        from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT

        args.checkpoint = args.checkpoint or str(RIB_MODADD_CHECKPOINT)
        args.layers = args.layers or list(RIB_LAYERS)
        print(
            "interbasis demo: 1-layer transformer trained on (a + b) mod 113 (rib's "
            f"checkpoint), {len(args.layers) - 1} sections {args.layers}, {args.data} split, "
            "float64"
        )
    _require(args, sub, "checkpoint", "layers", "out")
    out = _check_out(args.out)
    config = _resolved(args, ("checkpoint", "data", "out", "cache"))
    joined = _init_distributed()
    try:
        summary = run_graph(
            args.checkpoint, args.layers, args.data, out, basis=args.basis, edges=args.edges,
            modules=not args.no_modules, batch_size=args.batch_size, progress=not args.quiet,
            config=config, cache=args.cache, shard=args.shard,
        )  # fmt: skip
        if _rank() == 0:
            _print_summary(summary, out)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _cmd_view(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    from graphs.viewer import read_graph_file, write_html

    _require(args, sub, "graph_file")
    if not Path(args.graph_file).is_file():
        raise SystemExit(f"error: graph file {args.graph_file} not found")
    out = Path(args.out or Path(args.graph_file).with_suffix(".html")).absolute()
    args.out = str(out)
    _check_out(str(out.parent))
    graph = read_graph_file(args.graph_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_html(graph, out, title=args.title, fraction=args.fraction)
    config_path = out.with_name(f"{out.stem}.config.yaml")
    _write_config(config_path, _resolved(args, ("graph_file", "out")), "view")
    print(f"wrote {out} ({graph.n_nodes} nodes) and {config_path}")
    return 0


def _delegate(command: str, argv: list[str]) -> int:
    """``train`` / ``atlas`` / ``ablate``: YAML -> flags placed before the user's flags (last
    one wins)."""
    cfg_path, rest = None, []
    it = iter(argv)
    for a in it:
        if a == "--config":
            cfg_path = next(it, None)
            if cfg_path is None:
                raise SystemExit("error: --config needs a FILE.yaml")
        elif a.startswith("--config="):
            cfg_path = a.split("=", 1)[1]
        else:
            rest.append(a)
    sub = _delegate_parser(command)
    cfg = _read_config(cfg_path) if cfg_path else {}
    actions = {a.dest: a for a in sub._actions if a.dest != "help"}
    _check_keys(cfg, list(actions), command, str(cfg_path))
    flags: list[str] = []
    for key, value in cfg.items():
        action = actions[key]
        if not action.option_strings:  # the positional target / checkpoint
            if getattr(sub.parse_known_args(rest)[0], action.dest) is None:
                flags.append(str(value))
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction) or action.const is True:
            flags += [flag] if value is True else [flag, str(value)] if value else []
        elif isinstance(value, list | tuple):
            joined = [",".join(str(v) for v in value)] if command == "train" else map(str, value)
            flags += [flag, *joined]
        elif value is not None or command == "train":
            flags += [flag, "none" if value is None else str(value).lower() if
                      isinstance(value, bool) else str(value)]  # fmt: skip
    full = flags + rest
    if command == "train":
        from experiments.train import main as train_main

        code = int(train_main(full) or 0)
    elif command == "ablate":
        from interbasis.ablation.cli import ablate_command

        code = ablate_command(full)
    else:
        from interbasis.links.cli import atlas_command

        code = atlas_command(full)
    resolved = _resolved(sub.parse_known_args(full)[0], ("out", "target", "checkpoint"))
    out = Path(resolved["out"]) if resolved.get("out") else None
    if code == 0 and out is not None and out.is_dir() and _rank() == 0:
        if command == "train" and (out / "run.json").is_file():
            run_cfg = json.loads((out / "run.json").read_text())["config"]
            resolved = {"out": resolved["out"], "no_progress": not run_cfg.pop("progress", True),
                        **run_cfg}  # fmt: skip
        _write_config(out / "config.yaml", resolved, command)
    return code


def _delegate_parser(command: str) -> argparse.ArgumentParser:
    """The options of ``experiments.train.main`` (values as text) or of ``interbasis atlas``,
    with nothing required (the config may supply it), for --config keys and config.yaml."""
    from dataclasses import fields

    if command in ("atlas", "ablate"):
        if command == "atlas":
            from interbasis.links.cli import _parser
        else:
            from interbasis.ablation.cli import _parser

        p = _parser()
        for action in p._actions:
            action.required = False
            action.nargs = "?" if action.dest in ("target", "checkpoint") else action.nargs
        return p
    from experiments.train import TrainConfig

    p = argparse.ArgumentParser(prog="interbasis train", add_help=False)
    p.add_argument("--out")
    p.add_argument("--resume", nargs="?", const=True, default=False)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    for f in fields(TrainConfig):
        if f.name != "progress":
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None)
    return p


def _subparsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="interbasis", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    config_help = "YAML file of options (keys = option names); flags override it"
    subs = {}
    for name, text in (
        ("demo", "interaction graph of the shipped mod-add checkpoint (options as graph)"),
        ("graph", "interaction graph of a checkpoint"),
    ):
        demo = name == "demo"
        g = subs[name] = sub.add_parser(name, help=text)
        g.add_argument("checkpoint", nargs="?", default=None, help="TransformerLens state dict "
                       "(config.yaml beside it), training checkpoint step_*.pt or run directory"
                       + (" (default: the shipped rib checkpoint)" if demo else ""))  # fmt: skip
        g.add_argument("--layers", nargs="+", default=None, help="node layers (module names, "
                       'then optionally "output"), in forward order'
                       + (f" (default {RIB_LAYERS})" if demo else ""))  # fmt: skip
        g.add_argument("--data", default="train", help="train, test, all (the checkpoint's task) "
                       "or a file holding a tensor of model inputs (default train)")  # fmt: skip
        out_help = "output directory" + (" (default demo_out)" if demo else "")
        g.add_argument("--out", default="demo_out" if demo else None, help=out_help)
        g.add_argument("--basis", default="interaction", choices=["interaction", "pca", "neuron"])
        g.add_argument("--edges", default="squared", choices=["squared", "functional", "weight"])
        g.add_argument("--batch-size", type=int, default=None)
        g.add_argument("--cache", default=None, help="stage cache directory: a rerun resumes "
                       "from finished stages and partial sums (docs/distributed.md)")  # fmt: skip
        g.add_argument(
            "--shard",
            action="store_true",
            help="under torchrun: each rank loads "
            "only its slice of the data rows (memory-mapped from a tensor file)",
        )
        g.add_argument("--no-modules", action="store_true", help="skip the module search")
        g.add_argument("--quiet", action="store_true", help="no progress bars")
        g.add_argument("--config", default=None, help=config_help)
    view = subs["view"] = sub.add_parser("view", help="interactive HTML viewer of a graph file")
    view.add_argument(
        "graph_file", nargs="?", default=None, help="a .npz/.graphml/.gexf/.json graph file"
    )
    view.add_argument("--out", default=None, help="HTML file (default: GRAPH_FILE with .html)")
    view.add_argument("--title", default=None, help="page title")
    view.add_argument("--fraction", type=float, default=1.0, help="initial edge-weight share")
    view.add_argument("--config", default=None, help=config_help)
    for name, text in (
        ("train", "train a model (see `interbasis train --help`; --config FILE.yaml)"),
        ("atlas", "HTML + JSON report linking graph, Hessian, D_LR and spectral edge "
         "(see `interbasis atlas --help`; --config FILE.yaml)"),
        ("ablate", "ablation curves (CSV + PNG) of a checkpoint's node layers "
         "(see `interbasis ablate --help`; --config FILE.yaml)"),
    ):  # fmt: skip
        sub.add_parser(name, help=text, add_help=False)
    return p, subs


def parser() -> argparse.ArgumentParser:
    return _subparsers()[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["ablate"], ["view"]) and not _single_rank(argv[0]):
        return 0
    if argv[:1] == ["train"]:
        return _delegate("train", argv[1:])
    from interbasis.performance import tune_allocator

    tune_allocator()  # graph commands: reuse freed Jacobian chunks instead of page-faulting
    if argv[:1] == ["atlas"]:  # under torchrun every rank takes its share (docs/distributed.md)
        joined = _init_distributed()
        try:
            return _delegate("atlas", argv[1:])
        finally:
            if joined:
                import torch.distributed as dist

                dist.destroy_process_group()
    if argv[:1] == ["ablate"]:
        return _delegate("ablate", argv[1:])
    top, subs = _subparsers()
    command = top.parse_args(argv[:1] if argv[:1] and argv[0] in subs else argv).command
    args = _apply_config(subs[command], argv[1:], command)
    from graphs import GraphError
    from interbasis.errors import InterbasisError

    try:
        if command == "view":
            return _cmd_view(args, subs[command])
        return _cmd_graph(args, subs[command], demo=command == "demo")
    except (InterbasisError, GraphError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
