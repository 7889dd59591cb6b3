"""Bad inputs to interbasis.jacobian_spectra: our exception type, and a message naming it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from interbasis.errors import DataError, ShapeError
from interbasis.jacobian_spectra import (
    FixedGatesMLP,
    NotPiecewiseLinearError,
    jacobian_input_directions,
    layer_jacobians,
    lyapunov_exponents,
    masked_gaussian_lyapunov,
    piecewise_linear_layers,
    random_overlap_baseline,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64
EYE = torch.eye(2, dtype=F64)
ONES = torch.ones(2, dtype=F64)


class LayersActs(nn.Module):
    """The ``layers`` / ``acts`` layout of experiments.models.MLP, possibly malformed."""

    def __init__(self, layers: list[nn.Module], acts: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(acts)


class Truncated(nn.Sequential):
    """Its forward drops an output: the chain read from its modules gives more."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, :1]


def lin(a: int, b: int) -> nn.Linear:
    return nn.Linear(a, b, dtype=F64)


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # fixed_gates.py
    ("fixed-counts", lambda: FixedGatesMLP([EYE, EYE], [None], [ONES, ONES]),
     ShapeError, r"got 2 weights, 1 biases and 2 masks; pass one bias \(or None\)"),
    ("fixed-chain", lambda: FixedGatesMLP([EYE, torch.eye(3, dtype=F64)], None, [ONES, ONES]),
     ShapeError, r"layer 1: weight \(3, 3\) / mask \(2,\) do not chain after width 2"),
    ("fixed-bias", lambda: FixedGatesMLP([EYE], [torch.ones(3, dtype=F64)], [ONES]),
     ShapeError, r"layer 0: bias \(3,\) for weight \(2, 2\)"),
    ("fixed-x0", lambda: FixedGatesMLP.from_model(nn.Sequential(lin(2, 2)).eval(),
                                                  torch.ones(1, 2, dtype=F64)),
     ShapeError, r"x0 must be one input \(d_0,\), got shape \(1, 2\)"),
    ("fixed-widths", lambda: FixedGatesMLP.random([3]),
     DataError, r"widths must list d_0..d_L \(at least two positive\), got \[3\]"),
    ("fixed-keep-prob", lambda: FixedGatesMLP.random([3, 3], keep_prob=0.0),
     DataError, r"keep_prob must lie in \(0, 1\], got 0.0"),
    # chain.py
    ("chain-acts-count", lambda: piecewise_linear_layers(
        LayersActs([lin(2, 2), lin(2, 2)], [nn.ReLU(), nn.ReLU(), nn.ReLU()]).eval()),
     NotPiecewiseLinearError, r"model has 2 entries in `layers` but 3 in `acts`"),
    ("chain-layers-not-linear", lambda: piecewise_linear_layers(
        LayersActs([lin(2, 2), nn.Conv1d(2, 2, 1)], [nn.ReLU()]).eval()),
     NotPiecewiseLinearError, r"layers.1 is Conv1d, not nn.Linear"),
    ("chain-output-size", lambda: layer_jacobians(
        Truncated(lin(2, 3), nn.ReLU(), lin(3, 2)).eval(), torch.ones(4, 2, dtype=F64)),
     NotPiecewiseLinearError, r"model\(x\) returned torch.Size\(\[4, 1\]\), but the chain read "
                              r"from its modules gives \(4, 2\)"),
    # lyapunov.py
    ("lyapunov-factor-ndim", lambda: lyapunov_exponents([ONES]),
     ShapeError, r"factor 0 has shape \(2,\); need \(..., d_out, d_in\)"),
    ("lyapunov-frame", lambda: lyapunov_exponents([EYE], 1, frame=EYE),
     ShapeError, r"frame has shape \(2, 2\), need \(2, 1\)"),
    ("masked-gaussian-args", lambda: masked_gaussian_lyapunov(4, 2, keep_prob=1.5),
     DataError, r"got n=4, k=2, variance=2.0, keep_prob=1.5"),
    # alignment.py
    ("overlap-dimension", lambda: random_overlap_baseline(0),
     DataError, r"dimension must be positive, got 0"),
    # basis_link.py
    ("directions-shape", lambda: jacobian_input_directions(EYE, 1),
     ShapeError, r"jac must be \(B, m, d\) with 1 <= k <= d; got \(2, 2\), k=1"),
    ("directions-k", lambda: jacobian_input_directions(EYE[None], 3),
     ShapeError, r"jac must be \(B, m, d\) with 1 <= k <= d; got \(1, 2, 2\), k=3"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_named_error(
    call: Callable[[], object], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        call()
