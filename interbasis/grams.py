"""Streaming float64 accumulators: activation Gram G, Jacobian Grams M and K.

- ``G^l = E[f f^T]`` over samples and positions (seed 004 eqs 14/38; DESIGN §4 pools
  positions as samples), kept as count, mean and centred scatter, merged batch by batch with
  Chan et al.'s pairwise update so the result does not depend on how the data is batched.
- ``M^l = E[J^T J]`` with ``J = d(f^{l+1} C^{l+1}) / d f^l`` for the section between two node
  layers (seed 004 eq. 40 with the local choice of appendix A), and ``K^l`` (seed 004
  eqs 15/39), the Gram of output Jacobians with respect to a layer's pre-activations. Both are
  the same object, a *Jacobian Gram* of some later activations (mapped by a fixed matrix)
  with respect to a node layer's input: :func:`jacobian_gram`.

Positions (DESIGN §4): ``M = sum_{x,t,i,s} J_{t i s .}^T J_{t i s .} / (N P_in)`` — summed over
output positions t and output directions i, diagonal in input position s.

The Jacobians themselves are computed in :mod:`interbasis.jacobians`; the accumulation of
``M`` is one GEMM per chunk of output units.
"""

from __future__ import annotations

import torch

from interbasis.errors import NonFiniteError


class GramAccumulator:
    """Streaming count, mean and centred scatter of activations, in float64.

    ``update`` takes ``(batch, [pos], d)``; positions are pooled as samples. Batches are
    merged with the pairwise (Chan et al.) update, so results agree across batchings to
    round-off.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.count = 0
        self._mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self._scatter = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, acts: torch.Tensor) -> None:
        """Add a batch ``(batch, [pos], d)`` of activations."""
        x = acts.reshape(-1, acts.shape[-1]).to(torch.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        scatter_b = xc.T @ xc
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._scatter += scatter_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self._mean += delta * (n_b / n)
        self.count = n

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation ``(d,)``."""
        return self._mean.clone()

    @property
    def covariance(self) -> torch.Tensor:
        """Centred Gram ``E[(f - mu)(f - mu)^T]`` ``(d, d)`` (normalised by the count)."""
        return self._scatter / max(self.count, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        """Uncentred Gram ``E[f f^T]`` ``(d, d)``."""
        return self.covariance + torch.outer(self._mean, self._mean)

    def gram(self, fold_bias: bool = True) -> torch.Tensor:
        """Uncentred Gram of ``[f, 1]`` ``(d+1, d+1)`` (or of ``f`` without bias folding)."""
        s = self.second_moment
        if not fold_bias:
            return s
        g = torch.zeros(self.dim + 1, self.dim + 1, dtype=torch.float64, device=s.device)
        g[:-1, :-1] = s
        g[:-1, -1] = self._mean
        g[-1, :-1] = self._mean
        g[-1, -1] = 1.0
        return g


class JacobianGramAccumulator:
    """Streaming ``sum J^T J`` over samples, output units and input positions, in float64."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.count = 0  # N * P_in
        self._sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, grads: torch.Tensor) -> None:
        """Add gradients ``(units, batch, pos_in, d)`` of a chunk of output units."""
        g = grads.reshape(-1, grads.shape[-1]).to(torch.float64)
        self._sum.addmm_(g.T, g)

    def add_samples(self, n_samples_times_positions: int) -> None:
        """Count ``N * P_in`` for the normalisation (once per batch, not per chunk)."""
        self.count += n_samples_times_positions

    @property
    def running_sum(self) -> torch.Tensor:
        """The unnormalised sum so far (a view; do not modify)."""
        return self._sum

    @property
    def value(self) -> torch.Tensor:
        """``M = sum J^T J / (N P_in)`` ``(d, d)``."""
        return self._sum / max(self.count, 1)


def check_finite(t: torch.Tensor, what: str, layer: str, batch_index: int) -> None:
    """Raise :class:`NonFiniteError` naming the layer and batch if ``t`` has NaN or Inf."""
    if not torch.isfinite(t).all():
        n_bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(
            f"{n_bad} non-finite values (NaN/Inf) in the {what} of node layer {layer!r} in "
            f"batch {batch_index}"
        )
