"""Stochastic sources: unbiased estimates of M and of the squared edges with fewer VJPs.

The exact Jacobian Gram of a section (DESIGN §4) sums over every output unit ``u = (t, i)``
(output position t, output basis direction i)::

    M = 1/(N P_in) sum_x sum_s sum_{t,i} J_{tis}^T J_{tis},  J_{tis} = d(f^{l+1}_t c_i) / d f^l_s

which costs one backward pass per unit, ``P_out * k`` per batch. Stochastic sources replace the
units by ``S`` random combinations (seed 004 appendix A's M; rib's ``n_stochastic_sources``)::

    g_a = 1/sqrt(S) sum_{t,i} r_{a,t,i} J_{tis},     M_hat = 1/(N P_in) sum_x sum_s sum_a g_a^T g_a

with Rademacher ``r`` (``±1``, independent, drawn for every sample x). Since
``E[r_{a,u} r_{a,v}] = δ_uv``, ``E[M_hat] = M``: the estimator is unbiased. Its variance
comes from the cross terms only; for one entry ``(p, q)`` and one ``(x, s)``, with
``c_uv = J_{u,p} J_{v,q}``::

    Var[M_hat_pq] = 1/S sum_{u<v} (c_uv + c_vu)^2       (per sample and input position)

so the spread falls as ``1/sqrt(S)`` (and, the draws of different samples being independent,
as ``1/sqrt(N)``), and it vanishes when one unit dominates.

Three kinds (``Sources(positions=, hidden=)``), each a factorised cotangent
``pos_a ⊗ dir_b`` over (output position, output direction):

- ``positions=S``: ``r_{a,t}`` over output positions, output directions exact (units
  ``(a, i)``); input positions always stay exact, so M keeps its block-diagonal-in-input-position
  form. Also valid for the squared edges: ``E_ij = 1/(N P_in) sum_x sum_t a_{ti}^2`` with
  ``a_{ti} = sum_s d f_hat_{t,i}/d f_hat_{s,j} f_hat_{s,j}`` becomes ``1/S sum_a (sum_t r_{a,t}
  a_{ti})^2``, unbiased by the same argument (rib's stochastic edges).
- ``hidden=S``: ``r_{b,i}`` over output basis directions at each output position (units
  ``(t, b)``); M only (an edge needs its output node).
- both: the products ``r_{a,t} r_{b,i}`` (``S_pos * S_hidden`` units), still unbiased since the
  two draws are independent.

When ``S`` is at least the number of positions (directions), that factor is exact (the
identity), so ``Sources(positions=P_out)`` reproduces the exact result. Draws are seeded by
``(seed, rank, batch index, stream)`` (DESIGN §7), so a run is reproducible for a fixed world
size and the draws of different batches are independent. Every sample of a batch draws its own
signs (as rib does): the cross terms of different samples then average out, so the error falls
with the number of samples as well as with ``S`` (one draw shared by a batch's 480 samples
gave 11 % error on the top-10 Λ of the scale benchmark's base row at ``positions=1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from interbasis.errors import DataError

#: stream ids: M and edges draw independent sources
STREAM_M, STREAM_EDGES = 0, 1


def _check_count(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"Sources({name}=...) must be None or a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Sources:
    """Stochastic sources for M and the squared edges (module docstring).

    Parameters
    ----------
    positions : number ``S`` of Rademacher combinations of the output positions, or ``None``
        (every output position exactly).
    hidden : number of Rademacher combinations of the output basis directions, or ``None``.
    seed : base seed; each batch draws from ``(seed, rank, batch index, stream)``.

    Examples
    --------
    >>> Sources(positions=4)
    Sources(positions=4, hidden=None, seed=0)
    """

    positions: int | None = None
    hidden: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_count("positions", self.positions)
        _check_count("hidden", self.hidden)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DataError(f"Sources(seed=...) must be a non-negative integer, got {self.seed!r}")

    @property
    def exact(self) -> bool:
        """True when no factor is stochastic (today's exact computation)."""
        return self.positions is None and self.hidden is None

    def as_dict(self) -> dict[str, int | None]:
        return {"positions": self.positions, "hidden": self.hidden, "seed": self.seed}


def check_sources(sources: object, name: str, *, edges: bool = False) -> Sources | None:
    """Validate a ``sources=`` / ``edge_sources=`` argument (``None`` or :class:`Sources`)."""
    if sources is None:
        return None
    if not isinstance(sources, Sources):
        raise TypeError(
            f"{name} must be None or interbasis.Sources(positions=..., hidden=...), got "
            f"{type(sources).__name__}"
        )
    if edges and sources.hidden is not None:
        raise DataError(
            f"{name}=Sources(hidden={sources.hidden}) is not supported: an edge belongs to one "
            "output node, so only output positions can be combined; use Sources(positions=S)"
        )
    return None if sources.exact else sources


def _generator(seed: int, rank: int, batch: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, rank, batch, stream]).generate_state(2)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def rademacher(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, size)`` independent ``±1`` entries (float64, CPU)."""
    return torch.randint(0, 2, (n, size), generator=generator).to(torch.float64).mul_(2).sub_(1)


@dataclass
class OutputUnits:
    """The output units of one batch as factorised cotangents ``pos[a] ⊗ dirs[:, b]``.

    Unit ``u = a * n_dir + b`` has cotangent ``pos[x, a, t] * dirs[x, :, b]`` at output
    position t of sample x. Exact factors are the same for every sample; stochastic ones are
    drawn independently for every sample (as rib does), so the cross terms of different
    samples average out and the error falls with the number of samples, not only with S.

    Attributes
    ----------
    pos : ``(1 | batch, n_pos, P_out)`` position factors (rows of the identity when exact).
    out_map : ``(d_out, k)`` the output basis directions.
    hidden : ``(batch, n_dir, k)`` int8 Rademacher signs combining the directions (scaled
        by ``1/sqrt(n_dir)``), or ``None`` (each direction exactly, ``n_dir = k``).
    per_node : whether unit ``u`` belongs to output node ``u % n_dir`` (directions exact).
    sample_of_unit : ``(n_units,)`` index of the independent source sample of each unit
        (for the spread), or ``None`` in exact mode.
    n_samples : number of independent source samples.
    """

    pos: torch.Tensor
    out_map: torch.Tensor
    hidden: torch.Tensor | None
    per_node: bool
    sample_of_unit: torch.Tensor | None
    n_samples: int

    @property
    def n_dir(self) -> int:
        return self.out_map.shape[1] if self.hidden is None else self.hidden.shape[1]

    @property
    def n_units(self) -> int:
        return self.pos.shape[1] * self.n_dir

    def _factors(
        self, units: torch.Tensor, samples: slice, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 | b, c, P_out)`` position and ``(1 | b, d_out, c)`` direction factors."""
        pos = self.pos[samples] if self.pos.shape[0] > 1 else self.pos
        pos = pos[:, units.cpu() // self.n_dir].to(like)
        dirs = self.out_map.to(like)[None]
        if self.hidden is None:
            return pos, dirs[..., units % self.n_dir]
        signs = self.hidden[samples][:, units.cpu() % self.n_dir].to(like)  # (b, c, k)
        return pos, dirs @ signs.transpose(1, 2) / math.sqrt(self.n_dir)

    def cotangents(
        self, units: torch.Tensor, out: torch.Tensor, samples: slice = slice(None)
    ) -> torch.Tensor:
        """``(len(units), batch, P_out, d_out)`` cotangents for ``out`` ``(batch, P_out,
        d_out)``, the output of the batch's ``samples``."""
        pos, dirs = self._factors(units, samples, out)
        cot = pos.permute(1, 0, 2)[..., None] * dirs.permute(2, 0, 1)[:, :, None, :]
        return cot.expand(len(units), out.shape[0], *cot.shape[2:])

    def project(
        self, jv: torch.Tensor, samples: slice = slice(None), units: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output units of ``jv`` ``(c, b, P_out, d_out)`` (e.g. JVPs of the batch's
        ``samples``): ``(c, b, len(units))``, all units by default."""
        units = torch.arange(self.n_units) if units is None else units
        pos, dirs = self._factors(units.to(jv.device), samples, jv)
        return torch.einsum("cbto,but,bou->cbu", jv, pos.expand(jv.shape[1], -1, -1),
                            dirs.expand(jv.shape[1], -1, -1))  # fmt: skip


def output_units(
    out_map: torch.Tensor,
    p_out: int,
    sources: Sources | None,
    *,
    batch: int = 0,
    rank: int = 0,
    stream: int = STREAM_M,
    keep: torch.Tensor | None = None,
    n_samples: int = 1,
) -> OutputUnits:
    """The (exact or stochastic) output units of a section for one batch.

    Parameters
    ----------
    out_map : ``(d_out, k)`` output basis directions (non-constant nodes).
    p_out : number of output positions of the section.
    keep : output positions that count (``None``: all); the others get zero cotangents.
    n_samples : samples in the batch; stochastic sources are drawn for each one.
    """
    dtype = torch.float64
    kept = torch.arange(p_out) if keep is None else keep.cpu()
    eye = torch.eye(p_out, dtype=dtype)[kept]  # (P_kept, P_out)
    n_pos_exact, k = eye.shape[0], out_map.shape[1]
    S_pos = sources.positions if sources is not None else None
    S_hid = sources.hidden if sources is not None else None
    stochastic_pos = S_pos is not None and S_pos < n_pos_exact
    stochastic_hid = S_hid is not None and S_hid < k
    g = _generator(sources.seed, rank, batch, stream) if sources is not None else None
    pos, hidden = eye[None], None
    if stochastic_pos:
        assert g is not None and S_pos is not None
        signs = rademacher(n_samples * S_pos, n_pos_exact, g).reshape(n_samples, S_pos, -1)
        pos = signs @ eye / math.sqrt(S_pos)
    if stochastic_hid:
        assert g is not None and S_hid is not None
        hidden = rademacher(n_samples * S_hid, k, g).to(torch.int8).reshape(n_samples, S_hid, k)
    omap = out_map.to(dtype)
    n_pos, n_dir = pos.shape[1], (k if hidden is None else hidden.shape[1])
    units = torch.arange(n_pos * n_dir)
    if stochastic_pos:
        sample, n = units // n_dir, n_pos
    elif stochastic_hid:
        sample, n = units % n_dir, n_dir
    else:
        return OutputUnits(pos, omap, None, True, None, 1)
    return OutputUnits(pos, omap, hidden, not stochastic_hid, sample, n)


def check_keep(keep: torch.Tensor, p: int, layer: str) -> torch.Tensor:
    """Normalise kept positions (negative indices allowed) against ``p`` positions."""
    if keep.numel() == 0:
        raise DataError(f"keep_positions for {layer!r} is empty")
    if (keep >= p).any() or (keep < -p).any():
        raise DataError(
            f"keep_positions for {layer!r} is {keep.tolist()}, but the layer has {p} positions"
        )
    norm = torch.remainder(keep, p)
    if len(set(norm.tolist())) != len(norm):
        raise DataError(f"keep_positions for {layer!r} lists a position twice: {keep.tolist()}")
    return norm


class SourceSpread:
    """Relative standard error of a stochastic estimate, from the spread of its samples.

    For each batch the source samples ``a = 1..S`` give independent unbiased estimates
    ``y_a = S * z_a`` of the batch's contribution (``z_a``: the part of a scalar summary — the
    trace of M, or the total edge weight — carried by sample a). The estimate is
    ``sum_b mean_a y_a`` and its variance ``sum_b var_a(y_a) / S``.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.variance = 0.0
        self.estimated = False
        self._batch: torch.Tensor | None = None

    def add(self, per_sample: torch.Tensor) -> None:
        """Add ``(S,)`` contributions of one chunk; call :meth:`end_batch` after each batch."""
        p = per_sample.detach().to("cpu", torch.float64)
        self._batch = p if self._batch is None else self._batch + p

    def end_batch(self) -> None:
        if self._batch is None:
            return
        z, S = self._batch, self._batch.numel()
        self.total += float(z.sum())
        if S > 1:
            self.variance += float((S * z).var(unbiased=True)) / S
            self.estimated = True
        self._batch = None

    @property
    def relative_standard_error(self) -> float | None:
        """``None`` when no batch had two source samples (the spread cannot be estimated)."""
        if not self.estimated or not self.total:
            return None
        return math.sqrt(self.variance) / abs(self.total)
