"""Seed 001's grokking transformer (its Fig. 12 / Table 3 model, teddykoker/grokking's layout).

Decoder-only, ``n_layers`` pre-LN blocks of width ``d_model`` whose first LayerNorm *replaces*
the residual stream (seed code: ``x = ln_1(x); x = x + attn(x); x = x + mlp(ln_2(x))``),
causal attention by torch's :class:`torch.nn.MultiheadAttention`, an MLP ``d → d_mlp → d``
with exact GELU, a final LayerNorm and a bias-free head to ``d_vocab`` logits. For the seed's
division task ``d_vocab = p + 2`` (tokens ``x, y < p``, ``eq = p``, ``op = p + 1``) and the
learned position table has ``n_ctx = 5`` rows (the sequences use 4).

Module tree (TransformerLens names where they exist)::

    embed (W_E)  hook_embed  pos_embed (W_pos)  hook_pos_embed
    blocks.{i}: hook_resid_pre  ln1 (w, b)  attn (mha: in_proj_weight, in_proj_bias,
                out_proj)  hook_resid_mid  ln2 (w, b)  mlp (W_in, b_in, W_out, b_out;
                hook_pre, hook_post)  hook_resid_post
    ln_final (w, b)  unembed (W_U, no bias)

Every named block input is a cut of the network (what interbasis needs to substitute a
module's input): ``ln1`` replaces the stream, so nothing bypasses it; ``ln2`` carries the
stream (``resid -> (resid, ln(resid))``, as in :mod:`experiments.transformer`); after the
last block's attention add the stream is cut to the last position, so ``ln2``, ``mlp``,
``ln_final`` and ``unembed`` of the last block see ``(batch, d_model)``. The logits are
those of the last position, where the seed reads its answer.

Initialisation draws PyTorch's defaults for these layers (the seed code's): embeddings
N(0, 1); the attention in-projection Xavier-uniform with zero biases, its out-projection
U(±1/√d) with zero bias; the MLP weights and biases U(±1/√fan_in); the head U(±1/√d);
LayerNorms (1, 0). ``seed`` makes the draw deterministic and independent of the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from experiments.transformer import (
    Embed,
    HookPoint,
    LayerNorm,
    MLPBlock,
    PosEmbed,
    ResidualLayerNorm,
    TransformerConfig,
)
from interbasis import DataError, FormatError


@dataclass
class Seed001Config:
    """Configuration of :class:`Seed001Transformer` (defaults: the seed's model for p = 97)."""

    d_vocab: int = 99
    n_ctx: int = 5
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    eps: float = 1e-5
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "n_layers", "d_model", "n_heads", "d_mlp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"Seed001Config.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise DataError(
                f"Seed001Config.d_model={self.d_model} must be divisible by "
                f"n_heads={self.n_heads} (nn.MultiheadAttention splits it evenly)"
            )

    @property
    def d_vocab_out(self) -> int:
        """Number of logits (the head maps to the whole vocabulary, as in the seed code)."""
        return self.d_vocab

    def to_dict(self) -> dict[str, Any]:
        """Plain dict that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seed001Config:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~interbasis.FormatError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FormatError(f"unknown seed001 config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def _tl(self) -> TransformerConfig:
        """The TransformerLens-style config our shared LayerNorm / MLP blocks read."""
        return TransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
            act_fn="gelu",
            normalization_type="LN",
            eps=self.eps,
        )


class Attention(nn.Module):
    """Causal self-attention by :class:`torch.nn.MultiheadAttention` (``batch_first``).

    ``forward(x)``: x (batch, pos, d) -> (batch, pos, d), position q attending to k <= q.
    ``last_query_only=True`` returns the last query position only, (batch, 1, d): the same
    numbers as the last row of the full output (the last query may attend to every key).

    Attention runs on PyTorch's *math* scaled-dot-product backend: the CPU flash kernel has
    no forward-mode derivative (exact Hessians via ``jacfwd``, the spectral edge's ``jvp``)
    and no ``vmap`` batching rule for its backward (interbasis's batched Jacobians).
    """

    def __init__(self, cfg: Seed001Config) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(cfg.d_model, cfg.n_heads, batch_first=True)

    def forward(self, x: torch.Tensor, last_query_only: bool = False) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            if last_query_only:
                return self.mha(x[:, -1:], x, x, need_weights=False)[0]
            pos = x.shape[1]
            future = torch.ones(pos, pos, dtype=torch.bool, device=x.device).triu(1)
            return self.mha(x, x, x, attn_mask=future, need_weights=False)[0]


class Block(nn.Module):
    """``x = ln1(x); x = x + attn(x); x = x + mlp(ln2(x))`` (``last``: cut to the last position)."""

    def __init__(self, cfg: Seed001Config, last: bool) -> None:
        super().__init__()
        tl = cfg._tl()
        self.last = last
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(tl)
        self.attn = Attention(cfg)
        self.hook_resid_mid = HookPoint()
        self.ln2 = ResidualLayerNorm(tl)
        self.mlp = MLPBlock(tl)
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        """resid (batch, pos, d) -> same, or (batch, d) when ``last``."""
        x = self.ln1(self.hook_resid_pre(resid))  # replaces the residual stream (seed code)
        if self.last:
            x = x[:, -1] + self.attn(x, last_query_only=True)[:, 0]
        else:
            x = x + self.attn(x)
        x, normed = self.ln2(self.hook_resid_mid(x))
        return self.hook_resid_post(x + self.mlp(normed))


class Unembed(nn.Module):
    """Bias-free head ``x W_U``; ``W_U``: (d_model, d_vocab_out)."""

    def __init__(self, cfg: Seed001Config) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U


class Seed001Transformer(nn.Module):
    """Seed 001's 2-layer grokking transformer; ``forward(tokens (batch, pos))`` -> logits
    (batch, d_vocab) at the last position. See the module docstring."""

    def __init__(self, cfg: Seed001Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(
            Block(cfg, last=i == cfg.n_layers - 1) for i in range(cfg.n_layers)
        )
        self.ln_final = LayerNorm(cfg._tl())
        self.unembed = Unembed(cfg)
        self.init_weights()

    def init_weights(self) -> None:
        """Draw PyTorch's default initialisation of the seed code's layers (module docstring)."""
        gen = None if self.cfg.seed is None else torch.Generator().manual_seed(self.cfg.seed)
        d, d_mlp = self.cfg.d_model, self.cfg.d_mlp

        def uniform(param: torch.Tensor, bound: float) -> None:
            unit = torch.rand(param.shape, generator=gen, dtype=torch.float64) * 2 - 1
            param.copy_(unit * bound)

        with torch.no_grad():
            for name, param in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf in ("W_E", "W_pos"):
                    param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
                elif leaf == "in_proj_weight":  # Xavier-uniform on the (3d, d) matrix
                    uniform(param, math.sqrt(6 / (d + 3 * d)))
                elif name.endswith("out_proj.weight") or leaf in ("W_in", "b_in", "W_U"):
                    uniform(param, 1 / math.sqrt(d))
                elif leaf in ("W_out", "b_out"):
                    uniform(param, 1 / math.sqrt(d_mlp))
                elif leaf in ("in_proj_bias", "bias", "b"):  # attention biases, LN shifts
                    param.zero_()
                elif leaf == "w":
                    param.fill_(1.0)
                else:  # a new parameter must get an explicit rule (tested)
                    raise AssertionError(f"no initialisation rule for parameter {name}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, pos) long, pos <= n_ctx -> logits (batch, d_vocab)."""
        self._check_tokens(tokens)
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int):
            kind = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise DataError(f"Seed001Transformer expects integer token ids, got {kind}")
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.cfg.n_ctx:
            raise DataError(
                "Seed001Transformer expects tokens of shape (batch, pos) with 1 <= pos <= "
                f"n_ctx={self.cfg.n_ctx}, got {tuple(tokens.shape)}"
            )
        if tokens.device.type == "cpu" and tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.cfg.d_vocab:
                raise DataError(
                    f"token ids must lie in [0, d_vocab={self.cfg.d_vocab}), got [{lo}, {hi}]"
                )
