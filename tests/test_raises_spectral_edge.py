"""Bad inputs to interbasis.spectral_edge: our exception type, a message that names the
offending argument or value. One row per check (issue 19)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from interbasis.errors import DataError, FormatError, NodeLayerError, NonFiniteError, ShapeError
from interbasis.spectral_edge import (
    SpectralEdgeTracker,
    ablate_directions,
    compare_to_controls,
    dlog_grid,
    edge_energy_shares,
    flatten_params,
    fourier_concentration,
    fourier_split_2d,
    functional_mode,
    group_keys,
    group_means,
    primitive_root,
    project_out,
    random_directions,
    select_parameters,
    to_grid,
    window_spectrum,
)


class Net(nn.Module):
    """An MLP with a module it never calls (``spare``) and a readout ``ln_final``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.ln_final = nn.LayerNorm(4)
        self.spare = nn.LayerNorm(4)
        self.unembed = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.ln_final(torch.tanh(self.embed(x))))


class Grid(nn.Module):
    """The readout receives a 4-D input (batch, a, b, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.ln_final = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_final(self.embed(x))


def _net() -> Net:
    torch.manual_seed(0)
    return Net().double().eval()


X = torch.randn(5, 3, dtype=torch.float64)


def _mode(model: nn.Module | None = None, **kw: Any) -> torch.Tensor:
    net = model if model is not None else _net()
    layout = select_parameters(net, r"^embed\.weight$")
    direction = kw.pop("direction", torch.ones(layout.size, dtype=torch.float64))
    inputs = kw.pop("inputs", X)
    return functional_mode(net, layout, direction, inputs, **kw)


def _zero_tracked() -> torch.Tensor:
    net = _net()
    with torch.no_grad():
        net.embed.weight.zero_()
    return _mode(net)


def _ablate(**kw: Any) -> Any:
    net = _net()
    layout = select_parameters(net, r"^embed\.weight$")
    dirs = kw.pop("directions", torch.ones(1, layout.size, dtype=torch.float64))
    return ablate_directions(net, layout, dirs, lambda m: 0.0, **kw)


def _changed_shape() -> torch.Tensor:
    layout = select_parameters(_net(), r"^embed\.weight$")
    other = _net()
    other.embed = nn.Linear(3, 5).double()
    return flatten_params(other, layout)


def _parameter_gone() -> torch.Tensor:
    layout = select_parameters(_net(), r"^embed\.weight$")
    other = _net()
    del other.embed
    return flatten_params(other, layout)


def _window_before_any_update() -> torch.Tensor:
    return SpectralEdgeTracker(every=1, window=3).window_updates()


def _load_state_of_version(version: Any) -> None:
    SpectralEdgeTracker(every=1, window=3).load_state_dict({"version": version})


def _energy_shares_wrong_width() -> dict[str, float]:
    spectrum = window_spectrum(torch.randn(3, 4, dtype=torch.float64))
    return edge_energy_shares(spectrum, {"gradient": torch.zeros(3, 5)}, k=2)


A4, B4 = np.array([1, 2, 3, 4]), np.array([1, 1, 2, 2])

CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # fourier.py
    (
        "concentration-one-group",
        lambda: fourier_concentration(np.ones(1)),
        ShapeError,
        r"group_values must have shape \(n,\) or \(n, d\) with n >= 2, got \(1,\)",
    ),
    (
        "concentration-3d",
        lambda: fourier_concentration(np.ones((4, 2, 2))),
        ShapeError,
        r"got \(4, 2, 2\)",
    ),
    (
        "concentration-nan",
        lambda: fourier_concentration(np.array([1.0, np.nan, 0.0])),
        NonFiniteError,
        "group_values contain NaN",
    ),
    (
        "split-not-square",
        lambda: fourier_split_2d(np.ones((3, 4))),
        ShapeError,
        r"field must have shape \(n, n\) or \(n, n, d\), got \(3, 4\)",
    ),
    (
        "split-nan",
        lambda: fourier_split_2d(np.where(np.eye(3) > 0, np.nan, 1.0)),
        NonFiniteError,
        "field contains NaN",
    ),
    (
        "to_grid-lengths",
        lambda: to_grid(np.ones(3), A4, B4, 5),
        ShapeError,
        r"values \(3\), a \(4,\) and b \(4,\) differ",
    ),
    (
        "to_grid-incomplete",
        lambda: to_grid(np.ones(4), A4, B4, 5),
        DataError,
        "do not cover the full 5x5 grid",
    ),
    (
        "dlog_grid-shape",
        lambda: dlog_grid(np.ones((4, 4)), 5),
        ShapeError,
        r"field must have shape \(p, p\[, d\]\) with p=5, got \(4, 4\)",
    ),
    ("dlog_grid-not-prime", lambda: dlog_grid(np.ones((4, 4)), 4), DataError, "p=4 is not prime"),
    # groups.py
    (
        "keys-lengths",
        lambda: group_keys(A4, B4[:3], 5, "sum"),
        ShapeError,
        r"a and b must be 1-D of equal length, got \(4,\) and \(3,\)",
    ),
    (
        "keys-out-of-range",
        lambda: group_keys(A4 + 2, B4, 5, "sum"),
        DataError,
        r"inputs must lie in 0..4 \(p=5\)",
    ),
    ("keys-grouping", lambda: group_keys(A4, B4, 5, "xor"), DataError, "grouping must be.*'xor'"),  # type: ignore[arg-type]
    (
        "means-rows",
        lambda: group_means(np.ones(4), np.zeros(3, dtype=int), 2),
        ShapeError,
        "values have 4 rows but keys has 3",
    ),
    (
        "means-keys-range",
        lambda: group_means(np.ones(3), np.array([0, 1, 3]), 3),
        DataError,
        r"keys must lie in 0..2",
    ),
    ("root-not-prime", lambda: primitive_root(9), DataError, "p=9 is not prime"),
    # modes.py
    (
        "readout-not-called",
        lambda: _mode(readout="spare"),
        NodeLayerError,
        "readout module 'spare' was not called in the forward pass",
    ),
    (
        "readout-input-4d",
        lambda: _mode(Grid().double().eval(), inputs=torch.randn(2, 3, 4, 3).double()),
        ShapeError,
        r"the input of readout module 'ln_final' must be \(N, d\) or \(N, pos, d\), got "
        r"\(2, 3, 4, 4\)",
    ),
    (
        "direction-3d",
        lambda: _mode(direction=torch.ones(1, 1, 12)),
        ShapeError,
        r"direction must be \(n,\) or \(k, n\) with n = 12, got \(1, 1, 12\)",
    ),
    ("epsilon-zero", lambda: _mode(epsilon=0.0), DataError, "epsilon must be > 0.*got 0.0"),
    (
        "rel_epsilon-negative",
        lambda: _mode(rel_epsilon=-1.0),
        DataError,
        "rel_epsilon must be > 0, got -1.0",
    ),
    (
        "epsilon-from-zero-parameters",
        _zero_tracked,
        DataError,
        "epsilon = rel_epsilon · ‖θ_tracked‖ = 0.0 is not > 0.*give an absolute epsilon",
    ),
    (
        "mode-nan-inputs",
        lambda: _mode(inputs=torch.full((2, 3), float("nan"), dtype=torch.float64)),
        NonFiniteError,
        r"functional mode \('squared'\) has 8 NaN/Inf entries of 8",
    ),
    ("mode-batch_size", lambda: _mode(batch_size=0), DataError, "batch_size.*got 0"),
    # tracker.py
    (
        "tracker-n_edge",
        lambda: SpectralEdgeTracker(n_edge=0),
        DataError,
        "n_edge must be >= 1, got n_edge=0",
    ),
    (
        "tracker-n_record",
        lambda: SpectralEdgeTracker(n_record=2),
        DataError,
        r"n_record must be >= max\(3, n_edge\), got n_record=2",
    ),
    (
        "tracker-window",
        lambda: SpectralEdgeTracker(window=1),
        DataError,
        "window must be >= 2 updates, got window=1",
    ),
    (
        "tracker-no-update-yet",
        _window_before_any_update,
        DataError,
        "no update recorded yet",
    ),
    (
        "tracker-state-version",
        lambda: _load_state_of_version(2),
        FormatError,
        "unknown SpectralEdgeTracker state version 2",
    ),
    # window.py
    (
        "window-1d",
        lambda: window_spectrum(torch.ones(3)),
        ShapeError,
        r"updates must have shape \(window, n_params\), got \(3,\)",
    ),
    (
        "window-nan",
        lambda: window_spectrum(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])),
        NonFiniteError,
        "updates contain NaN",
    ),
    (
        "shares-width",
        _energy_shares_wrong_width,
        ShapeError,
        "part 'gradient' has 5 columns, expected 4",
    ),
    # controls.py
    (
        "random-n-zero",
        lambda: random_directions(0, 2),
        DataError,
        "need n >= 1 and count >= 1, got n=0, count=2",
    ),
    (
        "compare-no-edge",
        lambda: compare_to_controls([], [1.0, 2.0, 3.0]),
        DataError,
        "at least 1 edge value",
    ),
    (
        "compare-one-control",
        lambda: compare_to_controls([1.0], [1.0]),
        DataError,
        "at least 2 control values",
    ),
    # ablation.py
    (
        "project-out-shape",
        lambda: project_out(torch.ones(4), torch.ones(2, 3)),
        DataError,
        r"directions must have shape \(k, 4\), got \(2, 3\)",
    ),
    (
        "ablate-n_random",
        lambda: _ablate(n_random=0),
        DataError,
        "n_random must be an int >= 1, got 0",
    ),
    (
        "ablate-directions-3d",
        lambda: _ablate(directions=torch.ones(1, 1, 12)),
        ShapeError,
        r"directions must be \(k, n\) or \(n,\) with n = 12, got \(1, 1, 12\)",
    ),
    # parameters.py
    (
        "tracked-parameter-gone",
        _parameter_gone,
        ShapeError,
        "tracked parameter 'embed.weight' is no longer in the model",
    ),
    (
        "tracked-parameter-changed-shape",
        _changed_shape,
        ShapeError,
        r"tracked parameter 'embed.weight' changed shape: expected \(4, 3\), got \(5, 3\)",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_our_error_naming_it(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("p", [2, 3, 5, 7, 11, 13, 101, 113])
def test_primitive_root_generates_the_whole_group(p: int) -> None:
    g = primitive_root(p)
    assert 1 <= g < max(p, 2) and {pow(g, k, p) for k in range(p - 1)} == set(range(1, p))
