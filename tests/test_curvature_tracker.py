"""CurvatureTracker: the training callback for top eigenvalues, sharpness and rotation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interbasis.callbacks import Callback
from interbasis.curvature import CurvatureTracker, eigh_descending, hessian_matrix
from interbasis.errors import NonFiniteError

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def setup(
    lr: float,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()
    x = torch.linspace(-1, 1, 32, dtype=torch.float64)[:, None]
    return model, torch.optim.SGD(model.parameters(), lr=lr), (x, torch.sin(3 * x))


def train(model, opt, batch, callback: Callback, steps: int, poison_at: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """Minimal loop calling the callback protocol in its documented order."""
    callback.on_train_begin(model, opt)
    for step in range(1, steps + 1):
        opt.zero_grad()
        F.mse_loss(model(batch[0]), batch[1]).backward()
        callback.on_before_step(step, model, opt, batch)
        opt.step()
        if step == poison_at:
            with torch.no_grad():
                model[0].bias[0] = float("nan")
        callback.on_step(step, model, opt, batch)
    callback.on_train_end(steps, model)


def test_logs_exact_top_eigenvalues_and_sharpness() -> None:
    model, opt, batch = setup(lr=0.2)
    tracker = CurvatureTracker(F.mse_loss, data=batch, k=3, every=5)
    train(model, opt, batch, tracker, steps=10)
    assert [h["step"] for h in tracker.history] == [0, 5, 10]
    exact = eigh_descending(hessian_matrix(model, F.mse_loss, batch)).values[:3]
    last = tracker.history[-1]
    torch.testing.assert_close(
        torch.tensor(last["eigenvalues"], dtype=torch.float64), exact, rtol=1e-6, atol=0
    )
    assert last["sharpness"] == pytest.approx(float(exact[0]), rel=1e-6)
    assert last["two_over_lr"] == pytest.approx(10.0)
    assert last["sharpness_ratio"] == pytest.approx(float(exact[0]) * 0.2 / 2, rel=1e-6)
    assert tracker.history[0]["overlap"] is None
    assert 0.0 <= last["overlap"] <= 1.0 + 1e-12 and last["n_products"] > 0


def test_no_rotation_when_parameters_do_not_move_and_state_roundtrip() -> None:
    model, opt, batch = setup(lr=0.0)
    tracker = CurvatureTracker(F.mse_loss, k=2, every=2)  # data=None: uses the step's batch
    train(model, opt, batch, tracker, steps=4)
    assert [h["step"] for h in tracker.history] == [2, 4]
    assert tracker.history[1]["overlap"] == pytest.approx(1.0, abs=1e-8)
    assert tracker.history[1]["max_angle_deg"] < 1e-3
    clone = CurvatureTracker(F.mse_loss, k=2, every=2)
    clone.load_state_dict(tracker.state_dict())
    assert clone.history == tracker.history


def test_non_finite_curvature_names_the_step() -> None:
    model, opt, batch = setup(lr=0.1)
    tracker = CurvatureTracker(F.mse_loss, data=batch, k=2, every=1)
    with pytest.raises(NonFiniteError, match=r"step 2:.*not finite"):
        train(model, opt, batch, tracker, steps=3, poison_at=2)
