"""Bad inputs to interbasis.richness (and its plots): our exception type, a message that names
the offending argument or value. One row per check (issue 19)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from interbasis.errors import DataError, NonFiniteError, RankError, ShapeError
from interbasis.richness import (
    RichnessTracker,
    cka,
    collect_features,
    cumulative_projection,
    d_lr,
    effective_dimension,
    feature_spectrum,
    feature_view,
    nc1,
)

RNG = np.random.default_rng(0)
PHI = RNG.normal(size=(12, 4))
F = RNG.normal(size=(12, 3))
X = torch.randn(6, 3)


class Grid(nn.Module):
    """A head applied to (batch, a, b, d) inputs: 4-D features."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()


CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # interbasis/richness/_validate.py
    ("features-not-array", lambda: d_lr("abc", F), DataError, "features must be a tensor"),
    ("features-bool", lambda: d_lr(PHI > 0, F), DataError, r"features must be real.*bool"),
    ("outputs-complex", lambda: d_lr(PHI, F + 1j), DataError, "outputs must be real-valued"),
    ("features-no-columns", lambda: d_lr(np.zeros((12, 0)), F), ShapeError, "no columns"),
    # interbasis/richness/baselines.py
    ("nc1-ridge-zero", lambda: nc1(PHI, np.arange(12) % 2, ridge=0.0), DataError, "ridge"),
    ("nc1-ridge-nan", lambda: nc1(PHI, np.arange(12) % 2, ridge=np.nan), DataError, "ridge.*nan"),
    # interbasis/richness/cka.py
    ("cka-form", lambda: cka(PHI, F, form="gram"), DataError, "form must be.*'gram'"),  # type: ignore[arg-type]
    ("d_lr-mode", lambda: d_lr(PHI, F, mode="kernel"), DataError, "mode must be.*'kernel'"),  # type: ignore[arg-type]
    # interbasis/richness/spectrum.py
    (
        "spectrum-zero-features",
        lambda: feature_spectrum(np.zeros((5, 3))),
        RankError,
        r"features of shape \(5, 3\) are all zero",
    ),
    (
        "projection-zero-functions",
        lambda: cumulative_projection(PHI, np.zeros((12, 2))),
        RankError,
        r"functions of shape \(12, 2\) is zero",
    ),
    (
        "view-zero-targets",
        lambda: feature_view(PHI, PHI, np.zeros((12, 2)), F),
        RankError,
        "functions",
    ),
    ("deff-nan", lambda: effective_dimension([1.0, np.nan]), NonFiniteError, "NaN/Inf"),
    (
        "deff-all-zero",
        lambda: effective_dimension([0.0, 0.0], skip_first=False),
        RankError,
        r"undefined: 2 value\(s\) with sum 0.0 \(skip_first=False\)",
    ),
    (
        "deff-empty",
        lambda: effective_dimension([], skip_first=False),
        RankError,
        r"0 value\(s\)",
    ),
    # interbasis/richness/tracker.py: collect_features
    (
        "features-4d-with-position",
        lambda: collect_features(Grid().eval(), torch.randn(5, 2, 3, 4), "head", position=0),
        ShapeError,
        r"features has shape \(5, 2, 3, 4\); with position=0",
    ),
    (
        "batch_size-zero",
        lambda: collect_features(_net(), X, "2", batch_size=0),
        DataError,
        "batch_size must be a positive integer, got 0",
    ),
    (
        "batch_size-bool",
        lambda: collect_features(_net(), X, "2", batch_size=True),
        DataError,
        "batch_size must be a positive integer, got True",
    ),
    (
        "inputs-not-tensor",
        lambda: collect_features(_net(), [[1.0, 2.0, 3.0]], "2"),  # type: ignore[arg-type]
        DataError,
        "inputs must be a tensor.*got list",
    ),
    (
        "inputs-empty",
        lambda: collect_features(_net(), torch.zeros(0, 3), "2"),
        DataError,
        r"inputs must be a tensor with at least one sample, got \(0, 3\)",
    ),
    # interbasis/richness/tracker.py: RichnessTracker
    (
        "tracker-every-zero",
        lambda: RichnessTracker({"x": X}, feature_module="2", every=0),
        DataError,
        "every must be a positive number of steps.*got 0",
    ),
    (
        "tracker-every-float",
        lambda: RichnessTracker({"x": X}, feature_module="2", every=2.5),  # type: ignore[arg-type]
        DataError,
        "every.*got 2.5",
    ),
    (
        "tracker-set-not-tensor",
        lambda: RichnessTracker({"x": [1.0, 2.0]}, feature_module="2", every=1),
        DataError,
        "eval set 'x' needs a tensor of at least 2 inputs",
    ),
    (
        "tracker-set-one-input",
        lambda: RichnessTracker({"x": X[:1]}, feature_module="2", every=1),
        DataError,
        r"eval set 'x' needs a tensor of at least 2 inputs, got \(1, 3\)",
    ),
    (
        "tracker-set-triple",
        lambda: RichnessTracker({"x": (X, X, X)}, feature_module="2", every=1),
        DataError,
        "eval set 'x' must be inputs or an \\(inputs, labels\\) pair, got a tuple of 3",
    ),
    (
        "tracker-labels-length",
        lambda: RichnessTracker({"x": (X, torch.zeros(5))}, feature_module="2", every=1),
        ShapeError,
        "eval set 'x': 6 inputs but 5 labels",
    ),
    (
        "tracker-batch_size",
        lambda: RichnessTracker({"x": X}, feature_module="2", batch_size=-1),
        DataError,
        "batch_size must be a positive integer, got -1",
    ),
    (
        "tracker-train_mode",
        lambda: RichnessTracker({"x": X}, feature_module="2", train_mode="off"),  # type: ignore[arg-type]
        ValueError,
        "train_mode must be .*got 'off'",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_our_error_naming_it(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_plot_feature_view_needs_three_axes() -> None:
    import matplotlib.pyplot as plt

    from interbasis.plotting.richness import plot_feature_view

    view = feature_view(PHI[:8], PHI[8:], F[8:], F[8:])
    fig, axes = plt.subplots(1, 2)
    try:
        with pytest.raises(DataError, match="axes must hold 3 axes.*got 2"):
            plot_feature_view(view, axes=list(axes))
    finally:
        plt.close(fig)
