"""HuggingFace ``transformers`` models as they come (any-model issue): a raw
``GPT2LMHeadModel`` returning a ``ModelOutput``, its blocks as node layers under SDPA and eager
attention (the causal mask arrives as a second positional tensor), dict inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import interbasis as ib

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[hf]')"
)
pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["transformer.h.0", "transformer.h.1", "transformer.ln_f", "output"]


def _gpt2(attn: str = "sdpa") -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=12, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


class LastLogits(nn.Module):
    """The same model wrapped by hand to return a tensor: the logits at the last position."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits[:, -1]


def _same(a, b, rtol: float = 1e-10) -> None:
    assert [la.size for la in a.layers] == [la.size for la in b.layers]
    for x, y in zip(a.layers, b.layers, strict=True):
        np.testing.assert_allclose(x.eigenvalues, y.eigenvalues, rtol=rtol)
    for x, y in zip(a.edges, b.edges, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * y.max())


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (24, 8), generator=torch.Generator().manual_seed(1))


def test_raw_gpt2_equals_the_hand_wrapped_model(tokens) -> None:
    model = _gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on SDPA batching rules
        raw = ib.build_graph(model, tokens, LAYERS, output=lambda o: o.logits[:, -1],
                             batch_size=8, progress=False)  # fmt: skip
        wrapped = ib.build_graph(LastLogits(model), tokens, ["model." + n for n in LAYERS[:-1]]
                                 + ["output"], batch_size=8, progress=False)  # fmt: skip
    _same(raw, wrapped)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def test_eager_attention_blocks_with_a_positional_mask_and_dict_inputs(tokens) -> None:
    sdpa, eager = _gpt2("sdpa"), _gpt2("eager")
    eager.load_state_dict(sdpa.state_dict())
    last = lambda o: o.logits[:, -1]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = ib.build_graph(sdpa, tokens, LAYERS, output=last, batch_size=8, progress=False)
        b = ib.build_graph(eager, {"input_ids": tokens}, LAYERS, output=last, batch_size=8,
                           progress=False)  # fmt: skip
    _same(a, b, rtol=1e-9)


def test_default_output_is_the_logits_of_every_position(tokens) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        g = ib.build_graph(_gpt2(), tokens[:8], ["transformer.ln_f", "output"], progress=False)
    assert g.layers[-1].size == 50  # the vocabulary: ModelOutput.logits


def test_padding_positions_change_nothing(tokens) -> None:
    """Right padding with attention_mask zeros: the padded positions are not samples, so the
    graph equals the graph of the unpadded sequences (causal attention never reads them)."""
    model = _gpt2()
    padded = torch.cat([tokens, torch.zeros(len(tokens), 2, dtype=tokens.dtype)], dim=1)
    mask = torch.ones_like(padded)
    mask[:, 8:] = 0
    mask[::2, 8:] = 1  # half of the sequences are real up to 10 tokens: a mixed batch
    padded[::2, 8:] = 3
    keep = {"transformer.ln_f": [7]}
    last = lambda o: o.logits[:, 7]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = ib.build_graph(model, {"input_ids": tokens}, LAYERS, output=last,
                               keep_positions=keep, batch_size=8, progress=False)  # fmt: skip
        odd = {"input_ids": padded[1::2, :8], "attention_mask": mask[1::2, :8]}
        g_pad = ib.build_graph(model, {"input_ids": padded[1::2], "attention_mask": mask[1::2]},
                               LAYERS, output=last, keep_positions=keep, batch_size=8,
                               progress=False)  # fmt: skip
        g_odd = ib.build_graph(model, odd, LAYERS, output=last, keep_positions=keep,
                               batch_size=8, progress=False)  # fmt: skip
        mixed = ib.build_graph(
            model,
            {"input_ids": padded, "attention_mask": mask},
            LAYERS,
            output=last,
            keep_positions=keep,
            batch_size=8,
            progress=False,
        )
    _same(g_pad, g_odd, rtol=1e-8)  # two padding positions on every sequence: no change
    assert mixed.metadata["n_samples"] == plain.metadata["n_samples"] == 24
    assert plain.layers[0].size > 0


def test_a_missing_batching_rule_is_noted_once_per_process(tokens, monkeypatch) -> None:
    """torch warns at every vmapped pass through SDPA's CPU backward (no batching rule); the
    build says it once per op and process, with what to do, and lets other warnings through."""
    from interbasis import passes

    monkeypatch.setattr(passes, "_NOTED_OPS", set())
    model = _gpt2("sdpa")
    last = lambda o: o.logits[:, -1]  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            ib.build_graph(model, tokens, LAYERS, output=last, batch_size=8, progress=False)
        warnings.warn("a warning of the caller's own", UserWarning, stacklevel=1)
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "not yet implemented the batching rule" in t]
    notes = [t for t in texts if "no vmap batching rule" in t]
    assert len(notes) == 1 and 'attn_implementation="eager"' in notes[0]
    assert "a warning of the caller's own" in texts
