"""Small, well-conditioned networks used across the tests (float64 throughout)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn


def mlp(widths: list[int], act: type[nn.Module] = nn.Tanh, bias: bool = True, seed: int = 0):
    """``nn.Sequential`` of Linear/act with modules "0", "1", ... (Linear at even indices)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        lin = nn.Linear(a, b, bias=bias).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) / a**0.5)
            if bias:
                lin.bias.copy_(0.3 * torch.randn(b, generator=g, dtype=torch.float64))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def write_trajectory(run: Path, model: nn.Module, steps: tuple[int, ...] = (0, 10, 20)) -> Path:
    """``run/checkpoints/step_*.pt``: state dicts of ``model`` along a made-up trajectory
    (seeded steps of 0.05 Gaussian noise between checkpoints); ``model`` is moved along it."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    for step in steps:
        torch.save(model.state_dict(), run / "checkpoints" / f"step_{step:07d}.pt")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return run


def linear_names(net: nn.Sequential) -> list[str]:
    """Names of the Linear modules (their inputs are the node layers)."""
    return [n for n, m in net.named_children() if isinstance(m, nn.Linear)]


class PositionMixer(nn.Module):
    """A transformer-like module with positions: attention-style mixing, then an MLP.

    input ``(batch, P, d)`` -> ``first`` (node layer, with positions) -> softmax attention
    mixing + tanh -> ``second`` (node layer, with positions) -> position-wise tanh MLP, keeping
    the last two positions -> output ``(batch, 2, d_out)``.
    """

    def __init__(self, P: int = 4, d: int = 5, d2: int = 4, d_out: int = 6, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def w(*shape: int) -> nn.Parameter:
            return nn.Parameter(
                torch.randn(*shape, generator=g, dtype=torch.float64) / shape[0] ** 0.5
            )

        self.Wq, self.Wk, self.Wv = w(d, d), w(d, d), w(d, d2)
        self.W3, self.W4 = w(d2, 7), w(7, d_out)
        self.b3 = nn.Parameter(0.2 * torch.randn(7, generator=g, dtype=torch.float64))
        self.first = nn.Identity()
        self.second = nn.Identity()

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """``first`` -> ``second``: ``(..., P, d) -> (..., P, d2)``."""
        scores = (h @ self.Wq) @ (h @ self.Wk).transpose(-1, -2)
        return torch.tanh(torch.softmax(scores, dim=-1) @ h @ self.Wv)

    def head(self, h2: torch.Tensor) -> torch.Tensor:
        """``second`` -> output: ``(..., P, d2) -> (..., 2, d_out)``."""
        return (torch.tanh(h2 @ self.W3 + self.b3) @ self.W4)[..., -2:, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.mix(self.first(x))))
