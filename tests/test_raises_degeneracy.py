"""Bad inputs to interbasis.degeneracy: our exception type, and a message naming what is wrong."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from interbasis.degeneracy import (
    Stage,
    behavioural_hessian_nullity,
    degeneracy_report,
    gram_rank,
    mlp_stages,
    sync_block_transform,
    synchronized_neurons,
)
from interbasis.errors import DataError, NodeLayerError, NonFiniteError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64
X = torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double().eval()


def inf_mlp() -> nn.Sequential:
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    return model


def frozen_mlp() -> nn.Sequential:
    model = mlp()
    model[2].bias.requires_grad_(False)
    return model


def repeated_relu() -> nn.Sequential:
    """The same ReLU module object runs twice per forward pass."""
    torch.manual_seed(0)
    relu = nn.ReLU()
    return nn.Sequential(nn.Linear(2, 3), relu, nn.Linear(3, 3), relu, nn.Linear(3, 1)).double()


class HookPreOnly(nn.Module):
    """A TransformerLens-style ``hook_pre`` without its ``hook_post`` sibling."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.lin = nn.Linear(2, 3, dtype=F64)
        self.mlp.hook_pre = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.mlp.hook_pre(self.mlp.lin(x)))


class TupleReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(x), x


class TupleNet(nn.Module):
    """Its ReLU-like layer returns a tuple; one module is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3, dtype=F64)
        self.act = TupleReLU()
        self.unused = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))[0].sum(-1, keepdim=True)


class TokenNet(nn.Module):
    """Its first module receives integer tokens only."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3, dtype=F64)
        self.act = nn.ReLU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.act(self.embed(tokens)).sum(-1)


class Doubled(nn.Sequential):
    """Its output is twice its last Linear's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


TOKENS = torch.tensor([[1], [2], [3], [4]])
STAGE0 = Stage("0", "1", ("0.weight", "0.bias"))
STAGE1 = Stage("2", "output", ("2.weight", "2.bias"))

CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # gates.py, through synchronized_neurons
    ("gates-non-finite", lambda: synchronized_neurons(inf_mlp(), X, "1"),
     NonFiniteError, r"layer '1': NaN/Inf in pre- or post-activations; check the model"),
    ("gates-no-hook-post", lambda: synchronized_neurons(HookPreOnly().eval(), X, "mlp.hook_pre"),
     NodeLayerError, r"layer 'mlp.hook_pre' has no sibling 'mlp.hook_post'; pass post="),
    ("gates-integer-input", lambda: synchronized_neurons(TokenNet().eval(), TOKENS, "embed",
                                                         post="act"),
     DataError, r"module 'embed' receives no floating-point tensor input"),
    ("gates-unknown-post", lambda: synchronized_neurons(mlp(), X, "1", post="nope"),
     NodeLayerError, r"unknown module 'nope': not in model.named_modules\(\)"),
    ("gates-runs-twice", lambda: synchronized_neurons(repeated_relu().eval(), X, "1"),
     NodeLayerError, r"module '1' runs more than once per forward pass"),
    ("gates-tuple-output", lambda: synchronized_neurons(TupleNet().eval(), X, "act"),
     DataError, r"module 'act' returns tuple, not a tensor.*pass post="),
    ("gates-never-ran", lambda: synchronized_neurons(TupleNet().eval(), X, "unused", post="act"),
     NodeLayerError, r"modules \['unused'\] never ran in the forward pass"),
    # sync.py
    ("sync-measure", lambda: synchronized_neurons(mlp(), X, "1", measure="l2"),
     DataError, r"measure must be one of \('scale_invariant', 'eq20'\), got 'l2'"),
    ("report-measure", lambda: degeneracy_report(mlp(), X, measure="l2"),
     DataError, r"measure must be one of .*got 'l2'"),
    # stages.py
    ("stages-runs-twice", lambda: mlp_stages(repeated_relu(), X),
     DataError, r"a module runs more than once per forward pass \(call order \['0', '1', '2', "
                r"'1', '4'\]\)"),
    ("stages-linear-expected",
     lambda: mlp_stages(nn.Sequential(nn.ReLU(), nn.Linear(2, 1)), X.float()),
     DataError, r"module '0' \(ReLU\) is where a Linear was expected"),
    ("stages-output-not-last-linear", lambda: mlp_stages(Doubled(nn.Linear(2, 1, dtype=F64)), X),
     DataError, r"the model output is not the output of its last Linear '0'"),
    ("stages-empty", lambda: degeneracy_report(mlp(), X, stages=[]),
     DataError, r"stages is empty: pass at least one Stage, or stages=None"),
    ("stages-frozen", lambda: degeneracy_report(frozen_mlp(), X, stages=[STAGE0, STAGE1]),
     DataError, r"stage 1 \('2'\): parameter '2.bias' is frozen \(requires_grad=False\)"),
    ("stages-output-not-last", lambda: degeneracy_report(mlp(), X, stages=[STAGE1, STAGE0]),
     DataError, r'only the last stage can end at "output" \(stage 0 does\)'),
    # ranks.py
    ("gram-not-square", lambda: gram_rank(torch.zeros(2, 3)),
     ShapeError, r"a Gram matrix must be square, got shape \(2, 3\)"),
    ("gram-nan", lambda: gram_rank(torch.full((2, 2), float("nan"))),
     NonFiniteError, r"Gram matrix of shape \(2, 2\) has NaN/Inf"),
    # hessian.py
    ("hessian-loss-not-scalar", lambda: behavioural_hessian_nullity(
        mlp(), X, loss=lambda o, r: (o - r) ** 2),
     DataError, r"loss\(outputs, reference\) must return a scalar tensor, got shape \(12, 1\)"),
    ("hessian-method", lambda: behavioural_hessian_nullity(mlp(), X, method="lanczos"),
     DataError, r'method must be "auto", "exact" or "ggn", got \'lanczos\''),
    # transforms.py
    ("transform-columns", lambda: sync_block_transform(
        torch.eye(3, dtype=F64), [(0, 1), (2,)], columns=[(0,)]),
     ShapeError, r"columns \[\(0,\)\] must give \|S_a\| columns per block \[\(0, 1\)\]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_named_error(
    call: Callable[[], object], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        call()
