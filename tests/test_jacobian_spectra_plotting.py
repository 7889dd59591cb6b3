"""Figures of interbasis.plotting.jacobian_spectra draw what they are given."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # tests/conftest.py selects the Agg backend
import numpy as np
import torch

from interbasis.jacobian_spectra import lyapunov_exponents
from interbasis.plotting.jacobian_spectra import (
    plot_alignment,
    plot_basis_angles,
    plot_log_singular_values,
    plot_lyapunov_convergence,
    plot_separation,
)


def test_log_singular_values_draws_points_and_slope_lines(tmp_path: Path) -> None:
    depths = np.arange(1, 6)
    log_sigma = np.stack([-0.1 * depths, -0.2 * depths], 1)
    fig = plot_log_singular_values(depths, log_sigma, [-0.1, -0.2], [0.0, 0.0])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4  # points + predicted line per k
    np.testing.assert_allclose(lines[1].get_ydata(), -0.1 * depths)
    fig.savefig(tmp_path / "a.png")
    plt.close(fig)
    assert (tmp_path / "a.png").stat().st_size > 0


def test_separation_alignment_and_angles() -> None:
    fig = plot_separation([1, 2, 3], {"median": [1.0, 2.0, 4.0]})
    assert fig.axes[0].get_yscale() == "log"
    plt.close(fig)
    fig = plot_alignment([1, 2], {"a": [0.1, 0.2], "b": [0.3, 0.4]}, {"random": 0.25})
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3
    np.testing.assert_allclose(ax.get_lines()[2].get_ydata(), [0.25, 0.25])
    plt.close(fig)
    fig = plot_basis_angles(["l1", "l2"], {"x": [0.0, np.pi / 2]})
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.0, 90.0])
    plt.close(fig)


def test_lyapunov_convergence_plot() -> None:
    factors = [torch.eye(3, dtype=torch.float64) * 2.0] * 5
    res = lyapunov_exponents(factors, 2)
    fig = plot_lyapunov_convergence(res, theory=[np.log(2), np.log(2)])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    np.testing.assert_allclose(lines[0].get_ydata(), np.log(2), rtol=1e-12)
    plt.close(fig)
