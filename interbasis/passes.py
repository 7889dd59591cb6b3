"""How the Jacobian passes of a :class:`interbasis.section.Section` are chosen and sized.

- the mode: VJPs (one backward pass per output unit) or JVPs (one forward-mode pass per input
  unit), by the number of passes weighted with what one pass costs (:func:`jvp_pass_cost`);
  which forward-mode failures mean "use VJPs" (:func:`forward_mode_unavailable`);
- the chunk sizes: units per vmapped pass and samples per pass, so that one chunk fits the
  memory budget (:func:`units_per_chunk`, :func:`samples_per_chunk`);
- torch's warning at every vmapped pass through an op without a batching rule, turned into
  one note per op and process (:func:`one_note_per_missing_batching_rule`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from torch import nn

#: bytes per chunk of batched VJPs/JVPs; cache-sized chunks measured fastest on CPU
DEFAULT_MEMORY_BUDGET = 32 * 2**20
Mode = Literal["auto", "vjp", "jvp"]
MODES = ("auto", "vjp", "jvp")


# Forward-mode failures we expect and answer by taking reverse mode: operations without a
# forward-mode derivative (NotImplementedError, or a RuntimeError that says so). Anything else
# is a real error and propagates.
_NO_FORWARD_AD = ("forward ad", "forward-mode", "forward mode", "jvp", "not implemented",
                  "does not support")  # fmt: skip


#: cost of one forward-mode pass (a JVP under ``vmap``) relative to one VJP, measured on CPU
#: with torch 2.13 (one thread, sections with as many input as output units): 0.7 for MLPs
#: (Linear + GELU), 2.3 for GPT-2 blocks under eager attention, 7.5 for 3x3 convolutions
#: (batched forward-mode convolution runs torch's slow im2col kernel). ``mode="auto"`` takes
#: JVPs only when they are this much fewer than the VJPs.
JVP_PASS_COST = 3.0
JVP_PASS_COST_CONV = 8.0


def jvp_pass_cost(model: nn.Module) -> float:
    """Relative cost of a JVP pass against a VJP pass for ``model`` (the constants above)."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d)  # fmt: skip
    has_conv = any(isinstance(m, convs) for m in model.modules())
    return JVP_PASS_COST_CONV if has_conv else JVP_PASS_COST


_NO_BATCHING_RULE = re.compile(r"not yet implemented the batching rule for (\S+?)\.")
_NOTED_OPS: set[str] = set()


@contextmanager
def one_note_per_missing_batching_rule() -> Iterator[None]:
    """Replace torch's warning at *every* vmapped pass through an op without a batching rule
    (e.g. CPU SDPA attention's backward: about 1 000 copies in one GPT-2 build) by one note per
    op and process that says what it costs and what to do; other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=".*not yet implemented the batching rule")
        try:
            yield
        finally:
            pass
    for w in caught:
        match = _NO_BATCHING_RULE.search(str(w.message))
        if match is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        elif match.group(1) not in _NOTED_OPS:
            _NOTED_OPS.add(match.group(1))
            warnings.warn(
                f"torch has no vmap batching rule for {match.group(1)}: the Jacobian passes run "
                "through it in a slower per-unit loop. HuggingFace models with "
                'attn_implementation="eager" avoid it (measured here: 1.45x faster on one GPT-2 '
                "block section, the same on a whole tiny GPT-2 build). Shown once per process.",
                UserWarning,
                stacklevel=2,
            )


def forward_mode_unavailable(err: BaseException) -> bool:
    """Whether ``err`` (raised inside ``torch.func.jvp``) says forward mode is unavailable."""
    if isinstance(err, NotImplementedError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(marker in text for marker in _NO_FORWARD_AD)


def units_per_chunk(
    batch: int, numel_in: int, numel_out: int, n_units: int, memory_budget: int
) -> int:
    """Units per vmapped VJP/JVP chunk so that one chunk fits ``memory_budget`` bytes.

    The estimate counts, per unit and sample, the cotangent (tangent), the gradient and a few
    buffers of the pass of the same sizes (8 bytes each, float64).
    """
    per_unit = batch * _bytes_per_unit_and_sample(numel_in, numel_out)
    return int(max(1, min(n_units, memory_budget // max(per_unit, 1))))


def samples_per_chunk(batch: int, numel_in: int, numel_out: int, memory_budget: int) -> int:
    """Samples per VJP pass so that one output unit over them fits ``memory_budget`` bytes
    (the whole ``batch`` where it fits; otherwise the batch is split)."""
    per_sample = _bytes_per_unit_and_sample(numel_in, numel_out)
    return int(max(1, min(batch, memory_budget // per_sample)))


def _bytes_per_unit_and_sample(numel_in: int, numel_out: int) -> int:
    """The cotangent (tangent), the gradient and a few buffers of their sizes, float64."""
    return 8 * (4 * numel_in + 2 * numel_out)
