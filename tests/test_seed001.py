"""Seed 001's own grokking model and data (issue 21): forward, data, views, checkpoints, run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from experiments import dlr_grokking
from experiments.checkpoint_io import load_checkpoint, task_for_checkpoint
from experiments.models import Seed001Config, Seed001Transformer, model_from_spec, model_spec
from experiments.tasks import division_sequence_task
from experiments.train import build_model_for, build_task, train
from interbasis import DataError, FormatError, build_graph
from interbasis.curvature.hessian import hessian_matrix
from interbasis.curvature.params import ParamLayout
from interbasis.richness import collect_features, d_lr
from interbasis.spectral_edge.modes import functional_mode


def _perturbed(cfg: Seed001Config) -> Seed001Transformer:
    """A float64 model whose every parameter (LN gains/shifts, biases too) is non-trivial."""
    model = Seed001Transformer(cfg).double()
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _reference(model: Seed001Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The seed code's forward written out by hand from the state dict (all positions kept)."""
    s = {k: v for k, v in model.state_dict().items()}
    n_heads, d = model.cfg.n_heads, model.cfg.d_model
    d_head = d // n_heads
    batch, pos = tokens.shape
    x = s["embed.W_E"][tokens] + s["pos_embed.W_pos"][:pos]
    for i in range(model.cfg.n_layers):
        pre = f"blocks.{i}."
        x = _ln(x, s[pre + "ln1.w"], s[pre + "ln1.b"])  # replaces the residual stream
        w_q, w_k, w_v = s[pre + "attn.mha.in_proj_weight"].chunk(3)
        b_q, b_k, b_v = s[pre + "attn.mha.in_proj_bias"].chunk(3)
        q = (x @ w_q.T + b_q).view(batch, pos, n_heads, d_head)
        k = (x @ w_k.T + b_k).view(batch, pos, n_heads, d_head)
        v = (x @ w_v.T + b_v).view(batch, pos, n_heads, d_head)
        attn = torch.zeros(batch, pos, n_heads, d_head, dtype=x.dtype)
        for t in range(pos):  # query t attends to keys 0..t
            scores = torch.einsum("bhe,bkhe->bhk", q[:, t], k[:, : t + 1]) / math.sqrt(d_head)
            weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
            weights = weights / weights.sum(-1, keepdim=True)
            attn[:, t] = torch.einsum("bhk,bkhe->bhe", weights, v[:, : t + 1])
        out = attn.reshape(batch, pos, d) @ s[pre + "attn.mha.out_proj.weight"].T
        x = x + out + s[pre + "attn.mha.out_proj.bias"]
        h = _ln(x, s[pre + "ln2.w"], s[pre + "ln2.b"]) @ s[pre + "mlp.W_in"] + s[pre + "mlp.b_in"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + h @ s[pre + "mlp.W_out"] + s[pre + "mlp.b_out"]
    x = _ln(x, s["ln_final.w"], s["ln_final.b"])
    return (x @ s["unembed.W_U"])[:, -1]  # bias-free head, answer at the last position


@pytest.mark.parametrize("n_layers", [1, 2])
def test_forward_equals_hand_written_reference(n_layers: int) -> None:
    """Issue 21 test 1: float64 forward == reference to 1e-12 (train and eval mode)."""
    cfg = Seed001Config(d_vocab=13, n_layers=n_layers, d_model=16, n_heads=4, d_mlp=24, seed=5)
    model = _perturbed(cfg)
    tokens = division_sequence_task(11, 1.0).inputs[:50]
    expected = _reference(model, tokens)
    for train_mode in (True, False):
        model.train(train_mode)
        got = model(tokens)
        assert got.shape == (50, 13) and got.dtype == torch.float64
        assert float((got - expected).abs().max().detach()) < 1e-12
    with torch.no_grad():  # the no-grad path (nn.MultiheadAttention's fast path when eligible)
        assert float((model(tokens) - expected).abs().max()) < 1e-12


def test_full_size_model_matches_the_seed() -> None:
    """The seed's sizes: 2 × (LN, MHA 128/4 heads, LN, MLP 128-512-128), LN, head to p + 2."""
    model = Seed001Transformer(Seed001Config(seed=0))
    assert model.cfg.d_vocab == 99 and model.cfg.n_ctx == 5
    mha = model.get_submodule("blocks.0.attn.mha")
    assert isinstance(mha, torch.nn.MultiheadAttention) and mha.num_heads == 4
    assert model.unembed.W_U.shape == (128, 99) and not hasattr(model.unembed, "b_U")
    n = sum(p.numel() for p in model.parameters())
    per_block = 2 * 2 * 128 + (3 * 128 * 128 + 3 * 128) + (128 * 128 + 128)
    per_block += 128 * 512 + 512 + 512 * 128 + 128
    assert n == 99 * 128 + 5 * 128 + 2 * per_block + 2 * 128 + 128 * 99
    w_e = model.embed.W_E.detach()  # N(0, 1) embeddings (nn.Embedding's default)
    assert abs(float(w_e.std()) - 1) < 0.05
    bound = 1 / math.sqrt(128)  # U(±1/√d) head, Xavier in-projection
    assert float(model.unembed.W_U.detach().abs().max()) <= bound
    assert float(mha.in_proj_weight.detach().abs().max()) <= math.sqrt(6 / 512)
    again = Seed001Transformer(Seed001Config(seed=0))
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_division_data_has_every_pair_once_with_the_right_answer() -> None:
    """Issue 21 test 1 (data): [x, op, y, eq] for every 0 <= x < p, 0 < y < p, once."""
    p = 97
    task = division_sequence_task(p, 0.5, seed=0)
    x, op, y, eq = task.inputs.T
    assert task.inputs.shape == (p * (p - 1), 4)
    assert bool((op == p + 1).all()) and bool((eq == p).all())
    pairs = {(int(a), int(b)) for a, b in zip(x, y, strict=True)}
    assert pairs == {(a, b) for a in range(p) for b in range(1, p)}
    for a, b, label in zip(x.tolist(), y.tolist(), task.labels.tolist(), strict=True):
        assert (label * b) % p == a  # label = a / b mod p
    assert task.info["d_vocab"] == p + 2 and task.n_classes == p
    assert len(task.train_idx) == p * (p - 1) // 2 == 4656  # the seed's 4 656 training pairs
    both = torch.cat([task.train_idx, task.test_idx]).sort().values
    assert torch.equal(both, torch.arange(p * (p - 1)))
    with pytest.raises(DataError, match="not prime"):
        division_sequence_task(12)


def test_spec_checkpoint_and_train_config_roundtrip(tmp_path: Path) -> None:
    small = dict(p=7, d_model=8, n_heads=2, d_mlp=16, steps=3, eval_every=3)
    cfg = dlr_grokking.seed001_config(**small, checkpoint_steps=[], batch_size=None)
    task = build_task(cfg)
    model = build_model_for(cfg, task)
    assert isinstance(model, Seed001Transformer) and model.cfg.d_vocab == 9
    spec = model_spec(model)
    assert spec["kind"] == "seed001"
    clone = model_from_spec(spec)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone(task.inputs), model(task.inputs))
    with pytest.raises(FormatError, match="unknown seed001 config keys"):
        model_from_spec({"kind": "seed001", "config": {**spec["config"], "d_head": 4}})
    with pytest.raises(DataError, match="divisible"):
        Seed001Config(d_model=10, n_heads=4)
    records = dlr_grokking.run(cfg, tmp_path)
    assert [r["step"] for r in records] == [0, 3]
    loaded = load_checkpoint(tmp_path)
    assert isinstance(loaded, Seed001Transformer)
    assert task_for_checkpoint(tmp_path).name == "div_seq_mod7"


def test_bad_tokens() -> None:
    model = Seed001Transformer(Seed001Config(d_vocab=9, d_model=8, n_heads=2, d_mlp=8))
    with pytest.raises(DataError, match="integer token ids"):
        model(torch.zeros(2, 4))
    with pytest.raises(DataError, match="n_ctx=5"):
        model(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(DataError, match=r"\[0, d_vocab=9\)"):
        model(torch.full((2, 4), 9))


def test_interbasis_views_run_on_the_model() -> None:
    """Graph (node layers are cuts), Hessian (through nn.MultiheadAttention), the spectral
    edge's forward-mode functional mode and D_LR all run on the model."""
    task = division_sequence_task(7, 1.0)
    cfg = Seed001Config(d_vocab=9, d_model=8, n_heads=2, d_mlp=16, seed=1)
    model = _perturbed(cfg).eval()
    layers = ["blocks.0.ln1", "blocks.1.ln1", "blocks.1.ln2", "unembed", "output"]
    graph = build_graph(model, task.inputs, layers, dtype=torch.float64, progress=False)
    assert len(graph.layers) == len(layers)
    hess = hessian_matrix(
        model, F.cross_entropy, (task.inputs, task.labels),
        params=["blocks.0.attn.mha.in_proj_weight"],
    )  # fmt: skip
    assert hess.shape == (3 * 8 * 8, 3 * 8 * 8)
    assert float((hess - hess.T).abs().max()) < 1e-10 * float(hess.abs().max())
    layout = ParamLayout.from_model(model, ["blocks.1.mlp.W_in"])
    direction = torch.randn(layout.size, generator=torch.Generator().manual_seed(0))
    mode = functional_mode(model, layout, direction, task.inputs, kind="jvp")  # forward AD
    assert mode.shape == (42, 8) and bool(torch.isfinite(mode).all())
    phi, out = collect_features(model, task.inputs, "unembed")
    assert phi.shape == (42, 8) and out.shape == (42, 9)
    assert 0.0 <= d_lr(phi, out) <= 1.0


@pytest.mark.slow
def test_default_cell_groks_test_accuracy_rises_after_memorisation(tmp_path: Path) -> None:
    """Issue 21 test 2 (slow: 900 full-size updates, ≈ 70 s on an idle core, minutes on a
    loaded one): the default cell of ``--model seed001`` fits the training pairs
    (train accuracy ≥ 0.99) while test accuracy is still low, and test accuracy then rises
    by ≥ 0.1 while train accuracy stays ≥ 0.99 (the grokking signature)."""
    cfg = dlr_grokking.seed001_config(
        steps=900, eval_every=100, checkpoint_every=None, checkpoint_steps=[]
    )
    history = train(cfg, tmp_path).history
    fitted = [r for r in history if r["train_acc"] >= 0.99]
    assert fitted, f"never memorised: {[(r['step'], r['train_acc']) for r in history]}"
    first = fitted[0]
    assert first["test_acc"] < 0.2, first
    assert max(r["test_acc"] for r in fitted) >= first["test_acc"] + 0.1, fitted
