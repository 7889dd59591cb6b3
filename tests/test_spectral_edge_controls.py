"""Random-direction controls and edge ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interbasis.errors import DataError, RankError, ShapeError
from interbasis.spectral_edge import (
    ablate_directions,
    compare_to_controls,
    project_out,
    random_directions,
    select_parameters,
)


def test_random_directions_unit_reproducible_isotropic() -> None:
    d = random_directions(3, 20000, seed=4)
    np.testing.assert_allclose(torch.linalg.vector_norm(d, dim=1), 1.0, rtol=1e-12)
    assert torch.equal(d, random_directions(3, 20000, seed=4))
    assert not torch.equal(d[:5], random_directions(3, 5, seed=5))
    # uniform on the sphere: E[v vᵀ] = I/n; 20000 draws -> entry std ≈ 0.3/sqrt(20000) ≈ 0.002
    cov = (d.T @ d / d.shape[0]).numpy()
    np.testing.assert_allclose(cov, np.eye(3) / 3, atol=0.01)


def test_compare_to_controls_closed_form() -> None:
    comp = compare_to_controls([5.2, 5.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert comp.mean == pytest.approx(2.5)
    assert comp.std == pytest.approx(np.sqrt(5 / 3))  # ddof = 1
    # threshold 2.5 + 2·1.29099 = 5.08198
    np.testing.assert_array_equal(comp.beats, [True, False, False])
    assert not comp.edge_mean_beats
    np.testing.assert_allclose(comp.z, (np.array([5.2, 5.0, 1.0]) - 2.5) / np.sqrt(5 / 3))
    with pytest.raises(DataError, match="at least 2 control"):
        compare_to_controls([1.0], [2.0])
    with pytest.raises(DataError, match="finite"):
        compare_to_controls([np.nan], [1.0, 2.0])


def test_project_out_matches_least_squares_projection() -> None:
    rng = np.random.default_rng(0)
    theta = torch.from_numpy(rng.standard_normal(12))
    v = torch.from_numpy(rng.standard_normal((3, 12)))  # not orthonormal
    out = project_out(theta, v)
    # brute force: θ − Vᵀ (V Vᵀ)⁻¹ V θ
    vn = v.numpy()
    ref = theta.numpy() - vn.T @ np.linalg.solve(vn @ vn.T, vn @ theta.numpy())
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(v @ out, 0.0, atol=1e-12)
    np.testing.assert_allclose(project_out(out, v), out, atol=1e-12)  # idempotent
    with pytest.raises(RankError, match="linearly dependent"):
        project_out(theta, torch.stack([v[0], v[1], v[0] + v[1]]))


class Quad(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.blocks[0].attn = torch.nn.Module()
        self.blocks[0].attn.W_Q = torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
        self.blocks[0].attn.W_K = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))


def test_ablation_closed_form_and_restores_model() -> None:
    model = Quad()
    layout = select_parameters(model)
    theta = torch.cat(
        [model.blocks[0].attn.W_Q.detach().reshape(-1), model.blocks[0].attn.W_K.detach()]
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def tracked_norm(m: torch.nn.Module) -> float:
        at = m.blocks[0].attn
        return float(torch.cat([at.W_Q.reshape(-1), at.W_K]).norm())

    edge = torch.zeros(2, layout.size, dtype=torch.float64)
    edge[0, 0], edge[1, 7] = 1.0, 1.0  # coordinate directions
    res = ablate_directions(model, layout, edge, tracked_norm, n_random=4)
    removed = float(torch.sqrt(theta[0] ** 2 + theta[7] ** 2))
    assert res.removed_norm == pytest.approx(removed, rel=1e-12)
    assert res.baseline == pytest.approx(float(theta.norm()))
    assert res.edge == pytest.approx(float(torch.sqrt(theta.norm() ** 2 - removed**2)), rel=1e-12)
    assert res.random_subspace.shape == (4,) and res.random_equal_norm.shape == (4,)
    assert np.all(res.random_subspace <= res.baseline + 1e-12)  # projections shrink θ
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    one = ablate_directions(model, layout, edge[0], tracked_norm, n_random=2)  # shape (n,)
    assert one.removed_norm == pytest.approx(float(theta[0].abs()), rel=1e-12)
    with pytest.raises(ShapeError, match=f"length {layout.size}"):
        ablate_directions(model, layout, torch.ones(1, 3), tracked_norm)


def test_plots_draw_what_they_are_given() -> None:
    import matplotlib.pyplot as plt

    from interbasis.plotting.spectral_edge import (
        plot_concentration_spectra,
        plot_controls,
        plot_edge_history,
        plot_mode_heatmaps,
    )

    steps = np.arange(100, 600, 100)
    sigma = np.sort(np.random.default_rng(0).random((5, 8)), axis=1)[:, ::-1]
    hist = {
        "step": steps,
        "sigma": sigma,
        "gap_ratio": sigma[:, :-1] / sigma[:, 1:],
        "grad_share": np.linspace(0.9, 0.3, 5),
    }
    fig = plot_edge_history(hist, grok_step=300, n_sigma=5)
    assert len(fig.axes) == 3  # σ's, gaps, gradient share
    assert len([ln for ln in fig.axes[0].lines if ln.get_label().startswith("σ")]) == 5
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), sigma[:, 0])
    assert any(np.allclose(ln.get_xdata(), 300) for ln in fig.axes[2].lines)  # grok marker
    plt.close(fig)
    fields = [np.outer(np.arange(5), np.ones(5)) * k for k in range(1, 4)]
    fig = plot_mode_heatmaps(fields, ["a", "b", "c"], ncols=2)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 3
    np.testing.assert_array_equal(images[2].get_array(), fields[2])
    plt.close(fig)
    fig = plot_concentration_spectra({"v1": np.array([0.5, 0.5])}, controls=[np.array([1.0, 0.0])])
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
    fig = plot_controls({"edge": [0.9, 0.8, 0.7], "random": [0.2, 0.3, 0.25]})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["edge", "random"]
    plt.close(fig)
