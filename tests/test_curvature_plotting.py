"""Figures of interbasis.plotting.curvature draw what they are given."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from interbasis.curvature import EigenFunctions
from interbasis.plotting.curvature import (
    plot_eigenvector_functions,
    plot_frequency_vs_eigenvalue,
    plot_sharpness,
    plot_spectrum,
)


def test_spectrum_and_frequency_plots_show_every_mode() -> None:
    vals = torch.tensor([3.0, -1e-3, 0.5, 1e-20], dtype=torch.float64)
    fig, (a, b) = plt.subplots(1, 2)
    plot_spectrum(a, vals, floor=1e-12)
    y = a.lines[0].get_ydata()
    np.testing.assert_allclose(y, [3.0, 0.5, 1e-3, 1e-20])  # sorted by |λ|
    assert len(a.collections[0].get_offsets()) == 1  # one negative eigenvalue marked
    assert a.lines[1].get_ydata()[0] == 1e-12  # the floor
    freq = torch.tensor([0.1, float("nan"), 2.0, 5.0], dtype=torch.float64)
    plot_frequency_vs_eigenvalue(b, vals, freq, floor=1e-12)
    assert len(b.collections[0].get_offsets()) == 3  # the NaN frequency is left out
    plt.close(fig)


def test_eigenvector_functions_and_sharpness_plots() -> None:
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)
    jvp = torch.stack([torch.sin(k * x) for k in (1, 2, 3)])[:, :, None]
    ef = EigenFunctions(
        jvp, None, None, None, jvp.pow(2).mean((1, 2)).sqrt(), torch.tensor([3.0, 2.0, 1.0])
    )
    fig, axes = plt.subplots(1, 2)
    plot_eigenvector_functions(axes, x, ef, [0, 2])
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), torch.sin(3 * x).numpy())
    assert "λ=1" in axes[1].get_title()
    plt.close(fig)
    history = [{"step": s, "eigenvalues": [2.0 + s, 1.0], "two_over_lr": 20.0} for s in (0, 5)]
    fig = plot_sharpness(history)
    assert len(fig.axes[0].lines) == 3
    plt.close(fig)
