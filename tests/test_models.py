"""Models and checkpoint loading: the shipped rib checkpoint, cuts, a brute-force twin."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.checkpoint_io import (
    RIB_MODADD_CHECKPOINT,
    load_checkpoint,
    load_rib_modadd,
    rib_modadd_task,
)
from experiments.models import (
    MLP,
    MLPConfig,
    Transformer,
    TransformerConfig,
    build_model,
    model_from_spec,
    model_spec,
)
from interbasis import DataError, FormatError, ShapeError


@pytest.fixture(scope="module")
def rib_model() -> Transformer:
    return load_rib_modadd()


def small_config(**kw: object) -> TransformerConfig:
    base: dict[str, object] = dict(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=4, d_vocab=11, seed=3
    )
    base.update(kw)
    return TransformerConfig(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- issue test 1
def test_shipped_checkpoint_accuracy(rib_model: Transformer) -> None:
    """≥ 99 % on all 113² pairs and 100 % on rib's train split (randperm seed 0, 30 %)."""
    task = rib_modadd_task()
    assert task.inputs.shape == (113 * 113, 3) and len(task.train_idx) == int(0.3 * 113 * 113)
    perm = torch.randperm(113 * 113, generator=torch.Generator().manual_seed(0))
    assert torch.equal(task.train_idx, perm[: int(0.3 * 113 * 113)])
    with torch.no_grad():
        pred = rib_model(task.inputs).argmax(-1)
    correct = pred == task.labels
    assert correct.double().mean() >= 0.99
    assert bool(correct[task.train_idx].all())
    assert not rib_model.training
    # loading the checkpoint needs no TransformerLens (installed for other tests: ask a fresh
    # interpreter)
    code = ("import sys; from experiments.checkpoint_io import load_rib_modadd; "
            "load_rib_modadd(); assert 'transformer_lens' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading a CUDA file without CUDA")
def test_shipped_checkpoint_was_saved_on_cuda() -> None:
    """The shipped file holds CUDA storages, so loading it at all exercises the CPU mapping."""
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(RIB_MODADD_CHECKPOINT, weights_only=True)


def test_checkpoint_keys_match_transformerlens_names(rib_model: Transformer) -> None:
    saved = torch.load(RIB_MODADD_CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(saved) == set(rib_model.state_dict())
    for name, tensor in saved.items():
        assert torch.equal(rib_model.state_dict()[name], tensor), name


# ---------------------------------------------------------------- cuts
def _inputs_of(model: torch.nn.Module, name: str, x: torch.Tensor) -> tuple:
    captured: list[tuple] = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args: captured.append(args)
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured[0]


def _logits_with_substituted_input(
    model: torch.nn.Module, name: str, x: torch.Tensor, args: tuple
) -> torch.Tensor:
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, _a: args)
    with torch.no_grad():
        out = model(x)
    handle.remove()
    return out


CUT_NAMES = [
    "blocks.0.hook_resid_pre",
    "blocks.0.ln1",
    "blocks.0.hook_resid_mid",
    "blocks.0.ln2",
    "blocks.0.hook_resid_post",
    "ln_final",
    "unembed",
]


@pytest.mark.parametrize("name", CUT_NAMES)
def test_node_layers_are_cuts(rib_model: Transformer, name: str) -> None:
    """Substituting a cut's input by another batch's activations gives that batch's logits."""
    task = rib_modadd_task()
    xa, xb = task.inputs[:64], task.inputs[1000:1064]
    with torch.no_grad():
        expected = rib_model(xb)
    got = _logits_with_substituted_input(rib_model, name, xa, _inputs_of(rib_model, name, xb))
    assert torch.equal(got, expected)


def test_attention_input_is_not_a_cut() -> None:
    """Control: the residual bypasses attn, so the same substitution must NOT reproduce B.

    (Needs varying last tokens: in rib's task the last token is always "=", so the bypassing
    residual at the readout position is the same for every example.)
    """
    model = Transformer(small_config()).double().eval()
    gen = torch.Generator().manual_seed(2)
    xa, xb = (torch.randint(0, 11, (8, 4), generator=gen) for _ in range(2))
    with torch.no_grad():
        expected = model(xb)
    for name in ["blocks.0.attn", "blocks.1.mlp"]:
        got = _logits_with_substituted_input(model, name, xa, _inputs_of(model, name, xb))
        assert not torch.allclose(got, expected, atol=1e-3), name


@pytest.mark.parametrize("norm", [None, "LN", "LNPre"])
def test_cuts_in_two_layer_normalised_model(norm: str | None) -> None:
    model = Transformer(small_config(normalization_type=norm, act_fn="gelu")).double().eval()
    gen = torch.Generator().manual_seed(1)
    xa, xb = (torch.randint(0, 11, (8, 4), generator=gen) for _ in range(2))
    with torch.no_grad():
        expected = model(xb)
    for name in ["blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"]:
        got = _logits_with_substituted_input(model, name, xa, _inputs_of(model, name, xb))
        assert torch.equal(got, expected), name


def test_position_dimension_is_cut_after_last_attention() -> None:
    model = Transformer(small_config()).eval()
    x = torch.randint(0, 11, (5, 4))
    shapes = {
        n: _inputs_of(model, n, x)[0].shape
        for n in [
            "blocks.0.hook_resid_mid",
            "blocks.1.ln1",
            "blocks.1.hook_resid_mid",
            "blocks.1.ln2",
            "blocks.1.mlp",
            "blocks.1.mlp.hook_post",
            "ln_final",
            "unembed",
        ]
    }
    assert shapes["blocks.0.hook_resid_mid"] == (5, 4, 16)
    assert shapes["blocks.1.ln1"] == (5, 4, 16)
    assert shapes["blocks.1.hook_resid_mid"] == (5, 16)
    assert shapes["blocks.1.mlp.hook_post"] == (5, 32)
    for name in ["blocks.1.ln2", "blocks.1.mlp", "ln_final", "unembed"]:
        assert shapes[name] == (5, 16), name


# ---------------------------------------------------------------- brute-force twin
def reference_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """TransformerLens forward written out per head and per position, no position cut."""
    cfg, sd = model.cfg, model.state_dict()

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        if cfg.normalization_type is None:
            return x
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + cfg.eps)
        return y * sd[f"{prefix}.w"] + sd[f"{prefix}.b"] if cfg.normalization_type == "LN" else y

    act = {"relu": torch.relu, "gelu": F.gelu, "gelu_new": lambda t: F.gelu(t, approximate="tanh")}[
        cfg.act_fn
    ]
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][: tokens.shape[1]]
    n_pos = tokens.shape[1]
    for i in range(cfg.n_layers):
        p = f"blocks.{i}"
        h = norm(x, f"{p}.ln1")
        attn_out = torch.zeros_like(x) + sd[f"{p}.attn.b_O"]
        for head in range(cfg.n_heads):
            q = h @ sd[f"{p}.attn.W_Q"][head] + sd[f"{p}.attn.b_Q"][head]
            k = h @ sd[f"{p}.attn.W_K"][head] + sd[f"{p}.attn.b_K"][head]
            v = h @ sd[f"{p}.attn.W_V"][head] + sd[f"{p}.attn.b_V"][head]
            for t in range(n_pos):  # query position t attends to s <= t
                scores = (k[:, : t + 1] @ q[:, t].unsqueeze(-1)).squeeze(-1) / math.sqrt(cfg.d_head)
                weights = torch.softmax(scores, dim=-1)
                z = (weights.unsqueeze(-1) * v[:, : t + 1]).sum(1)
                attn_out[:, t] += z @ sd[f"{p}.attn.W_O"][head]
        x = x + attn_out
        h = norm(x, f"{p}.ln2")
        pre = h @ sd[f"{p}.mlp.W_in"] + sd[f"{p}.mlp.b_in"]
        x = x + act(pre) @ sd[f"{p}.mlp.W_out"] + sd[f"{p}.mlp.b_out"]
    x = norm(x, "ln_final")
    return (x @ sd["unembed.W_U"] + sd["unembed.b_U"])[:, -1]


@settings(max_examples=12, deadline=None)
@given(
    n_layers=st.integers(1, 3),
    norm=st.sampled_from([None, "LN", "LNPre"]),
    act=st.sampled_from(["relu", "gelu", "gelu_new"]),
    n_pos=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_forward_matches_brute_force(
    n_layers: int, norm: str | None, act: str, n_pos: int, seed: int
) -> None:
    model = Transformer(
        small_config(
            n_layers=n_layers, normalization_type=norm, act_fn=act, seed=seed, init_range=0.5
        )
    ).double()
    with torch.no_grad():  # non-trivial LN parameters and biases
        for name, param in model.named_parameters():
            if name.endswith((".w", ".b")) or ".b_" in name:
                param.add_(0.3 * torch.randn(param.shape, dtype=torch.float64))
    tokens = torch.randint(0, 11, (6, n_pos), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got, want = model(tokens), reference_forward(model, tokens)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # float64 round-off only


def test_init_is_seeded_and_tl_scaled() -> None:
    torch.manual_seed(123)
    a = Transformer(small_config(seed=5))
    torch.manual_seed(456)
    b = Transformer(small_config(seed=5))
    c = Transformer(small_config(seed=6))
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if "W_" in name:
            assert not torch.equal(pa, pc), name
    big = Transformer(small_config(d_model=256, d_vocab=300))
    std = big.embed.W_E.std().item()
    assert abs(std - 0.8 / math.sqrt(256)) < 0.05 * 0.8 / math.sqrt(256)  # 76 800 samples
    assert torch.all(big.blocks[0].attn.b_Q == 0)


def test_layernorm_pre_standardises() -> None:
    model = Transformer(small_config(normalization_type="LNPre")).double()
    x = torch.randn(7, 4, 16, dtype=torch.float64) * 3 + 1
    _, normed = model.blocks[0].ln1(x)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(7, 4, dtype=torch.float64))
    var = normed.pow(2).mean(-1)
    torch.testing.assert_close(var, torch.full((7, 4), 1.0, dtype=torch.float64), rtol=1e-4, atol=0)


def test_bad_tokens_and_configs() -> None:
    model = Transformer(small_config())
    with pytest.raises(DataError, match="d_vocab=11"):
        model(torch.tensor([[0, 1, 11]]))
    with pytest.raises(DataError, match="integer token ids"):
        model(torch.zeros(2, 3))
    with pytest.raises(DataError, match="n_ctx=4"):
        model(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(DataError, match="act_fn"):
        small_config(act_fn="swish")
    with pytest.raises(DataError, match="normalization_type"):
        small_config(normalization_type="RMS")
    with pytest.raises(DataError, match="d_model"):
        small_config(d_model=0)
    with pytest.raises(FormatError, match="rotary"):
        TransformerConfig.from_dict(
            {**small_config().to_dict(), "positional_embedding_type": "rotary"}
        )
    with pytest.raises(FormatError, match="post_embedding_ln=True is not supported"):
        TransformerConfig.from_dict({**small_config().to_dict(), "post_embedding_ln": True})
    tl_keys = {"model_name": "x", "attn_only": False, "initializer_range": 0.1, "device": "cpu"}
    assert TransformerConfig.from_dict({**small_config().to_dict(), **tl_keys}).init_range == 0.1
    with pytest.raises(FormatError, match="unknown transformer config keys"):
        TransformerConfig.from_dict({**small_config().to_dict(), "frobnicate": 1})


# ---------------------------------------------------------------- MLP
def test_mlp_forward_names_and_preactivations() -> None:
    cfg = MLPConfig(d_in=3, d_hidden=[5, 4], d_out=2, act_fn="leaky_relu", leaky_slope=0.2, seed=0)
    mlp = MLP(cfg).double()
    names = {n for n, _ in mlp.named_modules()}
    assert {"layers.0", "layers.1", "layers.2", "acts.0", "acts.1"} <= names
    x = torch.randn(9, 3, dtype=torch.float64)
    h = x
    pre_acts = []
    for k in range(2):
        pre = h @ mlp.layers[k].weight.T + mlp.layers[k].bias
        pre_acts.append(pre)
        h = torch.where(pre > 0, pre, 0.2 * pre)
    want = h @ mlp.layers[2].weight.T + mlp.layers[2].bias
    torch.testing.assert_close(mlp(x), want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(_inputs_of(mlp, "acts.1", x)[0], pre_acts[1], rtol=1e-13, atol=0)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh", "identity"])
def test_mlp_activations_and_bias(act: str) -> None:
    mlp = MLP(MLPConfig(d_in=2, d_hidden=[3], d_out=1, act_fn=act, bias=False, seed=1)).double()
    assert all(layer.bias is None for layer in mlp.layers)
    x = torch.randn(4, 2, dtype=torch.float64)
    f = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "identity": lambda t: t}[act]
    want = f(x @ mlp.layers[0].weight.T) @ mlp.layers[1].weight.T
    torch.testing.assert_close(mlp(x), want, rtol=1e-13, atol=1e-13)


def test_mlp_seed_and_errors() -> None:
    a = MLP(MLPConfig(d_in=2, d_hidden=[3], seed=4))
    torch.manual_seed(99)
    b = MLP(MLPConfig(d_in=2, d_hidden=[3], seed=4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ShapeError, match="d_in=2"):
        a(torch.zeros(4, 3))
    with pytest.raises(DataError, match="act_fn"):
        MLPConfig(d_in=2, act_fn="softplus")
    with pytest.raises(DataError, match=r"d_hidden\[1\]"):
        MLPConfig(d_in=2, d_hidden=[3, 0])


def test_model_spec_roundtrip() -> None:
    for cfg in (small_config(normalization_type="LN"), MLPConfig(d_in=2, d_hidden=[4], seed=0)):
        model = build_model(cfg)
        rebuilt = model_from_spec(model_spec(model))
        assert type(rebuilt) is type(model) and rebuilt.cfg == model.cfg  # type: ignore[union-attr]
    with pytest.raises(FormatError, match="unknown model kind"):
        model_from_spec({"kind": "cnn", "config": {}})


# ---------------------------------------------------------------- checkpoint loading errors
@pytest.fixture()
def rib_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "rib"
    shutil.copytree(RIB_MODADD_CHECKPOINT.parent, folder)
    return folder


def test_config_weight_mismatch_names_tensor_and_shapes(rib_copy: Path) -> None:
    config = yaml.safe_load((rib_copy / "config.yaml").read_text())
    config["model"]["d_mlp"] = 256
    (rib_copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ShapeError, match=r"blocks\.0\.mlp\.W_in.*\(128, 512\).*\(128, 256\)"):
        load_checkpoint(rib_copy / RIB_MODADD_CHECKPOINT.name)


def test_missing_tensor_and_missing_config(rib_copy: Path) -> None:
    path = rib_copy / RIB_MODADD_CHECKPOINT.name
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["blocks.0.mlp.b_in"]
    torch.save(state, path)
    with pytest.raises(FormatError, match=r"missing \['blocks\.0\.mlp\.b_in'\]"):
        load_checkpoint(path)
    (rib_copy / "config.yaml").unlink()
    with pytest.raises(FormatError, match=r"no config\.yaml"):
        load_checkpoint(path)


def test_corrupt_checkpoint(rib_copy: Path) -> None:
    path = rib_copy / RIB_MODADD_CHECKPOINT.name
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FormatError, match="cannot read checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FormatError, match="does not exist"):
        load_checkpoint(rib_copy / "nope.pt")


def test_cuda_saved_checkpoint_loads_on_cpu(
    rib_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storages tagged 'cuda:0' (as a CUDA save writes them) are mapped to CPU."""
    path = rib_copy / RIB_MODADD_CHECKPOINT.name
    state = torch.load(path, map_location="cpu", weights_only=True)
    import torch.serialization as serialization

    with monkeypatch.context() as patch:
        patch.setattr(serialization, "location_tag", lambda _storage: "cuda:0")
        torch.save(state, path)
    if not torch.cuda.is_available():  # the file really claims CUDA storages
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    model = load_checkpoint(path)
    assert next(model.parameters()).device.type == "cpu"
    assert torch.equal(model.embed.W_E, state["embed.W_E"].cpu())  # type: ignore[union-attr]


def test_float64_checkpoint_stays_float64(rib_copy: Path) -> None:
    path = rib_copy / RIB_MODADD_CHECKPOINT.name
    state = {
        k: v.double() if v.is_floating_point() else v
        for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
    }
    torch.save(state, path)
    model = load_checkpoint(rib_copy)  # a directory with config.yaml and one *.pt
    assert model.embed.W_E.dtype == torch.float64  # type: ignore[union-attr]
    assert torch.equal(model.embed.W_E, state["embed.W_E"])  # type: ignore[union-attr]


def test_last_query_attention_equals_last_row_of_full_attention() -> None:
    """The final block computes queries for the last position only; same numbers."""
    from experiments.checkpoint_io import load_rib_modadd

    attn = load_rib_modadd().double().blocks[0].attn
    x = torch.randn(17, 3, 128, dtype=torch.float64)
    full = attn(x)
    last = attn(x, last_query_only=True)
    assert last.shape == (17, 1, 128)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-12, atol=1e-12)
