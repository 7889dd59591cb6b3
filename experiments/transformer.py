"""A small transformer with TransformerLens names that predicts at the last position.

Module tree (names as in ``named_modules()``; TransformerLens names throughout)::

    embed (W_E)  hook_embed  pos_embed (W_pos)  hook_pos_embed
    blocks.{i}: hook_resid_pre  ln1  attn (W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O; hook_q,
                hook_k, hook_v, hook_attn_scores, hook_pattern, hook_z)  hook_resid_mid  ln2
                mlp (W_in, b_in, W_out, b_out; hook_pre, hook_post)  hook_resid_post
    ln_final  unembed (W_U, b_U)

Two choices make every node layer a *cut* (everything downstream depends on the model input
only through that module's input; interbasis substitutes a module's input, so it needs this):

* ``ln1`` and ``ln2`` carry the residual stream: ``ln(resid) -> (resid, normalized)``, and the
  block adds the sublayer output to the ``resid`` it got back (as rib's SequentialTransformer
  did). A plain ``x + attn(ln1(x))`` would let the residual bypass ``ln1``.
* The residual stream is cut to the last position right after the final attention layer's
  residual add, so ``blocks.{L-1}.hook_resid_mid``, ``blocks.{L-1}.ln2``, ``blocks.{L-1}.mlp``,
  ``ln_final`` and ``unembed`` see ``(batch, d)`` without a position dimension (rib's
  ``last_pos_module_type="add_resid1"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from interbasis import DataError, FormatError

ACT_FNS = ("relu", "gelu", "gelu_new")
NORMALIZATION_TYPES = (None, "LN", "LNPre")
# TransformerLens config keys that do not change this model's forward pass.
_IGNORED_TL_KEYS = frozenset(
    """
    model_name device n_devices dtype tokenizer_name default_prepend_bos use_attn_result
    use_split_qkv_input use_hook_mlp_in use_attn_in use_hook_tokens init_weights
    original_architecture checkpoint_index checkpoint_label_type checkpoint_value
    from_checkpoint n_params window_size tokenizer_prepends_bos
    """.split()
)
# TransformerLens switches we do not implement: accepted only when off (False/None/0).
_UNSUPPORTED_TL_SWITCHES = (
    "attn_only",
    "post_embedding_ln",
    "use_local_attn",
    "parallel_attn_mlp",
    "use_normalization_before_and_after",
    "gated_mlp",
    "final_rms",
    "rotary_dim",
)


@dataclass
class TransformerConfig:
    """Configuration of :class:`Transformer` (the fields of TransformerLens's config we use).

    ``d_vocab_out=-1`` means ``d_vocab`` (TransformerLens's convention). ``init_range=None``
    means TransformerLens's default ``0.8 / sqrt(d_model)``. ``seed`` makes the initialisation
    deterministic and independent of the global RNG.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    d_vocab_out: int = -1
    act_fn: str = "relu"
    normalization_type: str | None = None
    eps: float = 1e-5
    init_range: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        for name in (
            "n_layers",
            "d_model",
            "n_heads",
            "d_head",
            "d_mlp",
            "n_ctx",
            "d_vocab",
            "d_vocab_out",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.act_fn not in ACT_FNS:
            raise DataError(f"TransformerConfig.act_fn={self.act_fn!r}; expected one of {ACT_FNS}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise DataError(
                f"TransformerConfig.normalization_type={self.normalization_type!r}; "
                f"expected one of {NORMALIZATION_TYPES}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-safe) that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from a dict such as rib's ``config.yaml`` ``model`` section.

        TransformerLens keys that do not affect the forward pass are ignored
        (``initializer_range`` is read as ``init_range``); any other unknown key raises
        :class:`~interbasis.FormatError`, so a setting we do not implement is never dropped.
        """
        data = dict(data)
        if "initializer_range" in data:
            value = data.pop("initializer_range")
            if data.get("init_range") is None and value is not None and value > 0:
                data["init_range"] = value
        if data.get("positional_embedding_type", "standard") != "standard":
            raise FormatError(
                f"positional_embedding_type={data['positional_embedding_type']!r} is not "
                "supported (only 'standard')"
            )
        data.pop("positional_embedding_type", None)
        for switch in _UNSUPPORTED_TL_SWITCHES:
            value = data.pop(switch, None)
            if value:
                raise FormatError(f"TransformerLens setting {switch}={value!r} is not supported")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - _IGNORED_TL_KEYS)
        if unknown:
            raise FormatError(f"unknown transformer config keys {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


class HookPoint(nn.Module):
    """Identity module marking a named activation (its input is the activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EmbedSizes(Protocol):
    """The sizes the embeddings read (our and seed 001's transformer configs have them)."""

    d_vocab: int
    d_model: int
    n_ctx: int


class Embed(nn.Module):
    """Token embedding ``W_E[tokens]``; ``W_E``: (d_vocab, d_model)."""

    def __init__(self, cfg: EmbedSizes) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned positional embedding; ``W_pos``: (n_ctx, d_model)."""

    def __init__(self, cfg: EmbedSizes) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, pos = tokens.shape
        return self.W_pos[:pos].unsqueeze(0).expand(batch, pos, -1)


class LayerNorm(nn.Module):
    """TransformerLens normaliser: ``None`` (identity), ``"LN"`` (with ``w``, ``b``), ``"LNPre"``.

    ``(x - mean) / sqrt(var + eps)`` over the last dimension, var without Bessel correction.
    Used for ``ln_final``, which nothing bypasses, so it returns one tensor.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.kind = cfg.normalization_type
        self.eps = cfg.eps
        if self.kind == "LN":
            self.w = nn.Parameter(torch.ones(cfg.d_model))
            self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is None:
            return x
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        if self.kind == "LN":
            x = x * self.w + self.b
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x)


class ResidualLayerNorm(LayerNorm):
    """``ln1`` / ``ln2``: ``resid -> (resid, normalize(resid))``, carrying the residual stream.

    Returning the residual stream alongside its normalisation makes the module's input a cut
    of the network (module docstring); with ``normalization_type=None`` it returns
    ``(resid, resid)``.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return x, self.normalize(x)


class Attention(nn.Module):
    """Causal multi-head attention (TransformerLens layout and masking).

    ``q = x W_Q + b_Q`` (likewise k, v) with ``W_Q``: (n_heads, d_model, d_head);
    ``scores = q k^T / sqrt(d_head)``, future positions set to ``IGNORE``; ``z = softmax(scores)
    v``; output ``sum_h z_h W_O[h] + b_O`` with ``W_O``: (n_heads, d_head, d_model).
    ``mask`` and ``IGNORE`` are buffers because TransformerLens checkpoints store them.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.register_buffer("mask", torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool)))
        self.register_buffer("IGNORE", torch.tensor(-1e5))
        self.scale = math.sqrt(e)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = (
            HookPoint(),
            HookPoint(),
            HookPoint(),
        )

    def forward(self, x: torch.Tensor, last_query_only: bool = False) -> torch.Tensor:
        """x: (batch, pos, d_model) -> (batch, pos, d_model).

        With ``last_query_only`` only the last position attends (keys and values still come
        from every position) and the result is ``(batch, 1, d_model)``: the same numbers as
        the last row of the full output, for a third of the query-side work at 3 positions.
        The final block uses it, since the residual stream is cut to the last position there;
        its ``hook_q``, ``hook_attn_scores``, ``hook_pattern`` and ``hook_z`` then hold the
        last query position only.
        """
        batch, pos, d_model = x.shape
        n_heads, d_head = self.b_Q.shape
        if last_query_only:
            q = x[:, -1:] @ self.W_Q.permute(1, 0, 2).reshape(d_model, -1) + self.b_Q.reshape(-1)
            q = self.hook_q(q.view(batch, 1, n_heads, d_head))
            weight = torch.cat([self.W_K, self.W_V]).permute(1, 0, 2).reshape(d_model, -1)
            bias = torch.cat([self.b_K, self.b_V]).reshape(-1)
            kv = (x @ weight + bias).view(batch, pos, 2, n_heads, d_head)
            k, v = self.hook_k(kv[:, :, 0]), self.hook_v(kv[:, :, 1])
            rows = slice(pos - 1, pos)
        else:
            # q, k, v in one matmul: (d_model, 3·n_heads·d_head) weights, columns (qkv, head, e).
            weight = torch.cat([self.W_Q, self.W_K, self.W_V]).permute(1, 0, 2).reshape(d_model, -1)
            bias = torch.cat([self.b_Q, self.b_K, self.b_V]).reshape(-1)
            qkv = (x @ weight + bias).view(batch, pos, 3, n_heads, d_head)
            q, k, v = (
                self.hook_q(qkv[:, :, 0]),
                self.hook_k(qkv[:, :, 1]),
                self.hook_v(qkv[:, :, 2]),
            )
            rows = slice(0, pos)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.scale
        mask, ignore = self.get_buffer("mask"), self.get_buffer("IGNORE")
        scores = torch.where(mask[rows, :pos], scores, ignore.to(scores.dtype))
        pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return z.reshape(batch, q.shape[1], -1) @ self.W_O.reshape(-1, d_model) + self.b_O


class MLPBlock(nn.Module):
    """Position-wise MLP: ``act(x W_in + b_in) W_out + b_out``; ``W_in``: (d_model, d_mlp).

    ``hook_pre`` receives the pre-activation, ``hook_post`` the activation (neurons).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act_fn = cfg.act_fn
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        if self.act_fn == "relu":
            post = F.relu(pre)
        else:
            post = F.gelu(pre, approximate="tanh" if self.act_fn == "gelu_new" else "none")
        return self.hook_post(post) @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """Pre-norm block ``resid + attn(ln1(resid))`` then ``+ mlp(ln2(.))``; see module docstring.

    ``last=True`` cuts the residual stream to the last position after the attention add.
    """

    def __init__(self, cfg: TransformerConfig, last: bool) -> None:
        super().__init__()
        self.last = last
        self.hook_resid_pre = HookPoint()
        self.ln1 = ResidualLayerNorm(cfg)
        self.attn = Attention(cfg)
        self.hook_resid_mid = HookPoint()
        self.ln2 = ResidualLayerNorm(cfg)
        self.mlp = MLPBlock(cfg)
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        """resid: (batch, pos, d_model) -> same, or (batch, d_model) when ``last``."""
        resid = self.hook_resid_pre(resid)
        resid, normed = self.ln1(resid)
        if self.last:  # only the last position is read from here on
            resid = resid[:, -1] + self.attn(normed, last_query_only=True)[:, 0]
        else:
            resid = resid + self.attn(normed)
        resid = self.hook_resid_mid(resid)
        resid, normed = self.ln2(resid)
        return self.hook_resid_post(resid + self.mlp(normed))


class Unembed(nn.Module):
    """Readout ``x W_U + b_U``; ``W_U``: (d_model, d_vocab_out)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U + self.b_U


class Transformer(nn.Module):
    """Decoder-only transformer returning the logits at the last position.

    Parameters
    ----------
    cfg : TransformerConfig

    ``forward(tokens)``: tokens LongTensor (batch, pos) with ``pos <= n_ctx`` and values in
    ``[0, d_vocab)`` -> logits (batch, d_vocab_out). Initialisation follows TransformerLens's
    GPT-2 scheme: every ``W_*`` ~ N(0, init_range²), biases 0, LayerNorm ``w = 1``, ``b = 0``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, last=i == cfg.n_layers - 1) for i in range(cfg.n_layers)
        )
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        self.init_weights()

    def init_weights(self) -> None:
        """Re-draw the weights (seeded by ``cfg.seed`` when it is set)."""
        std = self.cfg.init_range or 0.8 / math.sqrt(self.cfg.d_model)
        generator = None
        if self.cfg.seed is not None:
            generator = torch.Generator().manual_seed(self.cfg.seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("W_"):
                    noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
                    param.copy_(noise * std)
                elif leaf.startswith("b_") or leaf == "b":
                    param.zero_()
                elif leaf == "w":
                    param.fill_(1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, pos) long -> logits (batch, d_vocab_out) at the last position."""
        self._check_tokens(tokens)
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int):
            kind = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise DataError(f"Transformer expects integer token ids, got {kind}")
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.cfg.n_ctx:
            raise DataError(
                f"Transformer expects tokens of shape (batch, pos) with 1 <= pos <= "
                f"n_ctx={self.cfg.n_ctx}, got {tuple(tokens.shape)}"
            )
        # A range check on CUDA would synchronise every step; CUDA's own index assert remains.
        if tokens.device.type == "cpu" and tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.cfg.d_vocab:
                raise DataError(
                    f"token ids must lie in [0, d_vocab={self.cfg.d_vocab}), got range [{lo}, {hi}]"
                )
