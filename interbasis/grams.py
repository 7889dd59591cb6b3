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

Jacobians come from ``torch.func.vjp`` with ``torch.func.vmap`` over chunks of output units
(one forward pass per batch, many batched backward passes), sized to a memory budget; the
accumulation of ``M`` is one GEMM per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from interbasis.capture import InputLayout, as_positions, capture, run_section
from interbasis.errors import DataError, NonFiniteError

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes for one chunk of batched VJPs


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


def units_per_chunk(
    batch: int, numel_in: int, numel_out: int, n_units: int, memory_budget: int
) -> int:
    """Output units per vmapped VJP chunk so that one chunk fits ``memory_budget`` bytes.

    The estimate counts, per unit and sample, the cotangent, the gradient and a few buffers
    of the backward pass of the same sizes (8 bytes each, float64).
    """
    per_unit = 8 * batch * (4 * numel_in + 2 * numel_out)
    return int(max(1, min(n_units, memory_budget // max(per_unit, 1))))


Cotangents = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batched_vjps(
    fn: Callable[[torch.Tensor], torch.Tensor],
    value: torch.Tensor,
    n_units: int | Callable[[torch.Tensor], int],
    cotangents: Cotangents,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """One forward pass of ``fn`` at ``value``, then VJPs for ``n_units`` cotangents in chunks.

    ``n_units`` may be a function of the output ``out``. ``cotangents(units, out)`` returns
    the cotangents of the given units, shape ``(len(units), *out.shape)``.
    ``torch.func.vjp`` gives the pullback once; ``vmap`` runs it for a whole chunk of units
    as one batched backward pass. Yields ``(units, grads)``
    with ``grads`` of shape ``(len(units), *value.shape)``.
    """
    out, vjp_fn = torch.func.vjp(fn, value)[:2]
    if callable(n_units):
        n_units = n_units(out)
    batch = value.shape[0]
    chunk = units_per_chunk(batch, value[0].numel(), out[0].numel(), n_units, memory_budget)
    batched_vjp = torch.func.vmap(vjp_fn)
    for start in range(0, n_units, chunk):
        units = torch.arange(start, min(start + chunk, n_units), device=out.device)
        (grads,) = batched_vjp(cotangents(units, out))
        yield slice(start, start + len(units)), grads


def unit_cotangents(out_map: torch.Tensor) -> Cotangents:
    """Cotangents of units ``u = t * k + i``: ``out_map[:, i]`` at output position t.

    For an output ``out`` of shape ``(batch, P_out, d_out)`` this is the gradient of
    ``out[:, t] @ out_map[:, i]`` summed over the batch (each sample's own gradient, since
    samples do not interact).
    """
    k = out_map.shape[1]

    def build(units: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        batch, p_out, d_out = out.shape
        t, i = units // k, units % k
        cot = out.new_zeros(len(units), p_out, d_out)
        cot[torch.arange(len(units), device=out.device), t] = out_map[:, i].T.to(out.dtype)
        return cot.unsqueeze(1).expand(len(units), batch, p_out, d_out)

    return build


def section_fn(
    model: nn.Module,
    inputs: torch.Tensor,
    inject: tuple[str, nn.Module],
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> f^{read}`` as ``(batch, P_out, d_out)``, with ``v`` substituted at ``inject``."""

    def section(v: torch.Tensor) -> torch.Tensor:
        return as_positions(run_section(model, inputs, inject, v, layout, read))

    return section


def section_vjps(
    model: nn.Module,
    inputs: torch.Tensor,
    inject: tuple[str, nn.Module],
    value: torch.Tensor,
    layout: InputLayout,
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Gradients of every output unit of a section with respect to its input, in chunks.

    Output units are ``(t, i)``: output position t and column i of ``out_map``, i.e. the
    function ``f^{read}_t @ out_map[:, i]``, unit index ``u = t * k + i``. Yields
    ``(units, grads)`` with ``grads`` of shape ``(len(units), batch, P_in, d_in)``.

    Parameters
    ----------
    value : ``(batch, [pos], d_in)`` the activations at ``inject`` for ``inputs``.
    out_map : ``(d_out, k)`` map applied to the read activations (e.g. ``C^{l+1}`` without
        its constant row and node).
    """
    fn = section_fn(model, inputs, inject, layout, read)

    def n_units(out: torch.Tensor) -> int:
        if out_map.shape[0] != out.shape[-1]:
            raise ValueError(
                f"out_map has {out_map.shape[0]} rows but {read[0]!r} has width {out.shape[-1]}"
            )
        return out.shape[1] * out_map.shape[1]

    for units, grads in batched_vjps(fn, value, n_units, unit_cotangents(out_map), memory_budget):
        yield units, grads.reshape(grads.shape[0], value.shape[0], -1, value.shape[-1])


def check_finite(t: torch.Tensor, what: str, layer: str, batch_index: int) -> None:
    """Raise :class:`NonFiniteError` naming the layer and batch if ``t`` has NaN or Inf."""
    if not torch.isfinite(t).all():
        n_bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(
            f"{n_bad} non-finite values (NaN/Inf) in the {what} of node layer {layer!r} in "
            f"batch {batch_index}"
        )


def jacobian_gram(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    inject: tuple[str, nn.Module],
    read: tuple[str, nn.Module | None],
    out_map: torch.Tensor,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    consumers: list[Callable[[int, torch.Tensor, slice, torch.Tensor], None]] | None = None,
) -> torch.Tensor:
    """``E[J^T J]`` of ``f^{read} @ out_map`` with respect to the input of ``inject``.

    Parameters
    ----------
    batches : model inputs (already on the model's device and dtype).
    inject, read : ``(name, module)`` of the two node layers; ``read`` module ``None`` is
        the model output. The section between them must be a cut (:func:`check_cut`).
    out_map : ``(d_read, k)`` applied to the read activations.
    consumers : optional callbacks ``(batch_index, acts_in, units, grads)`` that reuse the
        same VJPs (edges, diagnostics).

    Returns
    -------
    ``(d_in, d_in)`` float64, normalised by ``N * P_in`` (DESIGN §4).

    Raises
    ------
    NonFiniteError
        If a Jacobian has NaN/Inf (the node layer and batch are named).
    """
    acc: JacobianGramAccumulator | None = None
    for b, x in enumerate(batches):
        acts, layouts = capture(model, x, {inject[0]: inject[1]})
        acts_in, layout = acts[inject[0]].detach(), layouts[inject[0]]
        if acc is None:
            acc = JacobianGramAccumulator(acts_in.shape[-1], device=acts_in.device)
        acc.add_samples(acts_in.shape[0] * as_positions(acts_in).shape[1])
        with torch.no_grad():
            for units, grads in section_vjps(
                model, x, inject, acts_in, layout, read, out_map, memory_budget
            ):
                acc.update(grads)
                for consume in consumers or []:
                    consume(b, acts_in, units, grads)
        # NaN/Inf in any Jacobian entry propagates into the running sum of J^T J
        check_finite(acc.running_sum, f"Jacobians (towards {read[0]!r})", inject[0], b)
    if acc is None:
        raise DataError("data holds no batches")
    return acc.value
