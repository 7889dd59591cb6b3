"""The affine maps a degeneracy report counts over: ``p^{l+1} = W^l f^l + b^l`` (seed 004 eq. 12).

A :class:`Stage` names, by module, where its input ``f^l`` and its output ``p^{l+1}`` can be
read (module *inputs*, as everywhere in interbasis) and which parameters hold ``W^l`` and
``b^l``. Between two consecutive stages sits a ReLU-like layer: stage ``l``'s output module
receives its pre-activations, stage ``l+1``'s input module its activations.
:func:`mlp_stages` finds the stages of a chain of ``nn.Linear`` and ReLU modules;
:func:`mlp_block_stages` gives those of a TransformerLens-style MLP block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from interbasis.capture import OUTPUT
from interbasis.errors import DataError

RELU_LIKE = (nn.ReLU, nn.LeakyReLU)
_SKIPPED = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Stage:
    """One affine map ``f^l -> p^{l+1}`` of the network.

    Attributes
    ----------
    input : module whose input is ``f^l``.
    output : module whose input is ``p^{l+1}``, or ``"output"`` (the model output).
    params : names of the parameters of the map (weight, then bias if any).
    bias : whether the map has a bias (then ``f^l`` is bias-folded, ``[f, 1]``).
    """

    input: str
    output: str
    params: tuple[str, ...]
    bias: bool = True


def _leaf_call_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], torch.Tensor, dict]:
    modules = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def fn(_m: nn.Module, _a: tuple[Any, ...], out: Any) -> None:
            order.append(name)
            if isinstance(out, torch.Tensor):
                outputs[name] = out.detach()

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return order, y, {"modules": modules, "outputs": outputs}


def mlp_stages(model: nn.Module, example: torch.Tensor) -> list[Stage]:
    """Stages of an MLP: ``Linear (ReLU Linear)*`` in forward order, traced on ``example``.

    Works for ``nn.Sequential`` MLPs and any module whose forward calls ``nn.Linear`` and
    ``nn.ReLU``/``nn.LeakyReLU`` modules alternately (``nn.Identity`` and ``nn.Dropout`` are
    skipped), each once, with the last ``Linear`` producing the model output.

    Raises
    ------
    DataError
        For another activation module (``"module 'acts.0' (GELU) is not ReLU-like"``), a
        module called twice, two consecutive Linear or activation modules, or a model whose
        output is not the last Linear's output.
    """
    order, y, info = _leaf_call_order(model, example)
    modules = info["modules"]
    chain = [n for n in order if not isinstance(modules[n], _SKIPPED)]
    if len(set(chain)) != len(chain):
        raise DataError(f"a module runs more than once per forward pass (call order {chain})")
    for k, name in enumerate(chain):
        m = modules[name]
        want_linear = k % 2 == 0
        if want_linear and not isinstance(m, nn.Linear):
            raise DataError(
                f"module {name!r} ({type(m).__name__}) is where a Linear was expected: "
                f"mlp_stages needs Linear (ReLU Linear)*, call order {chain}; "
                "pass stages=[Stage(...)] explicitly for other architectures"
            )
        if not want_linear and not isinstance(m, RELU_LIKE):
            raise DataError(
                f"module {name!r} ({type(m).__name__}) is not ReLU-like: synchronisation and "
                "the degeneracy counts of seed 004 §3.2 need ReLU or LeakyReLU gates"
            )
    if not chain or len(chain) % 2 == 0:
        raise DataError(f"the model must end with a Linear layer; call order {chain}")
    last = info["outputs"].get(chain[-1])
    if last is None or not isinstance(y, torch.Tensor) or not torch.equal(last, y):
        raise DataError(
            f"the model output is not the output of its last Linear {chain[-1]!r}; pass "
            "stages=[Stage(...)] explicitly"
        )
    stages = []
    for k in range(0, len(chain), 2):
        lin = modules[chain[k]]
        params = [f"{chain[k]}.weight"] + ([f"{chain[k]}.bias"] if lin.bias is not None else [])
        out = chain[k + 1] if k + 1 < len(chain) else OUTPUT
        stages.append(Stage(chain[k], out, tuple(params), lin.bias is not None))
    return stages


def mlp_block_stages(prefix: str) -> list[Stage]:
    """The two stages of a TransformerLens-style MLP block ``{prefix}.mlp``.

    ``W_in, b_in``: from the block input (``{prefix}.mlp``'s input) to ``hook_pre``;
    ``W_out, b_out``: from ``hook_post`` to the residual stream, read at
    ``{prefix}.hook_resid_post`` (its Jacobian equals that of the MLP output, since the
    residual stream adds it).
    """
    mlp = f"{prefix}.mlp"
    return [
        Stage(mlp, f"{mlp}.hook_pre", (f"{mlp}.W_in", f"{mlp}.b_in")),
        Stage(f"{mlp}.hook_post", f"{prefix}.hook_resid_post", (f"{mlp}.W_out", f"{mlp}.b_out")),
    ]


def check_stages(model: nn.Module, stages: list[Stage]) -> None:
    """Raise :class:`DataError` for an empty list, unknown or frozen parameters, bad outputs."""
    if not stages:
        raise DataError(
            "stages is empty: pass at least one Stage, or stages=None to trace them with mlp_stages"
        )
    named = dict(model.named_parameters())
    for i, s in enumerate(stages):
        for p in s.params:
            if p not in named:
                raise DataError(f"stage {i} ({s.input!r}): unknown parameter {p!r}")
            if not named[p].requires_grad:
                raise DataError(
                    f"stage {i} ({s.input!r}): parameter {p!r} is frozen (requires_grad=False); "
                    "the counts need differentiable stage parameters"
                )
        if s.output == OUTPUT and i != len(stages) - 1:
            raise DataError(f'only the last stage can end at "output" (stage {i} does)')
