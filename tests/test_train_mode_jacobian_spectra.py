"""Issue 17: one train-mode policy for the Jacobian-spectra and curvature entry points.

Default ``train_mode="eval"``: a ``UserWarning`` and exactly the result of an eval-mode copy;
``"error"``: :class:`DataError` naming train mode; ``"keep"``: the model as it is (train-mode
dropout / batch norm cannot be read as a chain). In every case the caller's parameters and
buffers (running statistics, ``num_batches_tracked``) are bit-identical afterwards and
``model.training`` is unchanged.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interbasis.curvature import (
    CurvatureTracker,
    GGNOperator,
    HessianOperator,
    eigenvector_functions,
    ggn_matrix,
    hessian_matrix,
    hutchinson,
    kfac_check,
    kfac_factors,
    lanczos,
)
from interbasis.errors import DataError
from interbasis.jacobian_spectra import (
    FixedGatesMLP,
    NotPiecewiseLinearError,
    layer_jacobians,
    piecewise_linear_layers,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64
X = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
Y = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=F64)


def bn_mlp() -> nn.Sequential:
    """Linear, BatchNorm1d, ReLU, Linear, in train mode with non-trivial running statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    model = model.double().train()
    with torch.no_grad():
        for k in range(3):
            model(X + k)
    return model


def dropout_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2))
    return model.double().train()


MODELS = {"batchnorm": bn_mlp, "dropout": dropout_mlp}


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def assert_untouched(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[bool]]) -> None:
    state, modes = before
    after = model.state_dict()
    assert set(after) == set(state)
    for k, v in state.items():  # bit-identical, buffers included (num_batches_tracked too)
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert [m.training for m in model.modules()] == modes and model.training


def as_arrays(result: Any) -> list[torch.Tensor]:
    """The tensors of a result, for exact comparison."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, list | tuple):
        return [t for r in result for t in as_arrays(r)]
    if isinstance(result, dict):
        return [t for k in sorted(result) for t in as_arrays(result[k])]
    if isinstance(result, np.ndarray | float | int):
        return [torch.as_tensor(result)]
    if result is None or isinstance(result, str):
        return []
    fields = getattr(result, "__dataclass_fields__", None) or vars(result)
    return [t for name in fields for t in as_arrays(getattr(result, name))]


def assert_same(a: Any, b: Any) -> None:
    ta, tb = as_arrays(a), as_arrays(b)
    assert len(ta) == len(tb) and ta
    for x, y in zip(ta, tb, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ---- Jacobian spectra ----------------------------------------------------------------------

JACOBIAN_ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "layer_jacobians": lambda m, **kw: layer_jacobians(m, X, **kw),
    "piecewise_linear_layers": lambda m, **kw: [
        (la.weight, la.bias) for la in piecewise_linear_layers(m, **kw)
    ],
    "FixedGatesMLP.from_model": lambda m, **kw: list(
        FixedGatesMLP.from_model(m, X[0], **kw).state_dict().values()
    ),
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("entry", JACOBIAN_ENTRY_POINTS)
def test_jacobian_spectra_default_is_an_eval_copy(kind: str, entry: str) -> None:
    model, run = MODELS[kind](), JACOBIAN_ENTRY_POINTS[entry]
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"is in train mode; analysing its eval-mode function"):
        got = run(model)
    assert_untouched(model, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an eval-mode model: no warning
        assert_same(got, run(copy.deepcopy(model).eval()))


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("entry", JACOBIAN_ENTRY_POINTS)
def test_jacobian_spectra_error_and_keep(kind: str, entry: str) -> None:
    model, run = MODELS[kind](), JACOBIAN_ENTRY_POINTS[entry]
    before = snapshot(model)
    with pytest.raises(DataError, match=r"\(Sequential\) is in train mode"):
        run(model, train_mode="error")
    module = {"batchnorm": r"'1' \(BatchNorm1d\)", "dropout": r"'2' \(Dropout\)"}[kind]
    with pytest.raises(NotPiecewiseLinearError, match=module + r".*call model.eval\(\)"):
        run(model, train_mode="keep")
    with pytest.raises(ValueError, match=r"train_mode must be .*got 'train'"):
        run(model, train_mode="train")
    assert_untouched(model, before)


def test_keep_on_a_deterministic_train_mode_model_is_silent_and_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jac = layer_jacobians(model, X, train_mode="keep")
    ref = torch.func.vmap(torch.func.jacrev(model))(X)
    torch.testing.assert_close(jac.product(), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param(lambda: [nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)],
                     id="bn-before-relu"),
        pytest.param(lambda: [nn.Linear(3, 5), nn.ReLU(), nn.BatchNorm1d(5, affine=False),
                              nn.Dropout(0.3), nn.Linear(5, 2), nn.BatchNorm1d(2)],
                     id="bn-after-relu-and-last"),
        pytest.param(lambda: [nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False), nn.LeakyReLU(0.1)],
                     id="bn-first-no-bias"),
    ],
)  # fmt: skip
def test_eval_mode_batch_norm_is_read_exactly(layers: Callable[[], list[nn.Module]]) -> None:
    """The chain of an eval-mode net with batch norm equals its batched ``jacrev``."""
    torch.manual_seed(0)
    model = nn.Sequential(*layers()).double()
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            if m.affine:
                nn.init.uniform_(m.weight, 0.5, 2)
                nn.init.uniform_(m.bias, -1, 1)
    model.eval()
    jac = layer_jacobians(model, X)
    ref = torch.func.jacrev(lambda z: model(z).sum(0))(X).permute(1, 0, 2)
    torch.testing.assert_close(jac.product(), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(jac.output, model(X).detach(), rtol=1e-12, atol=1e-14)


# ---- curvature -----------------------------------------------------------------------------

LOSS = F.mse_loss


def directions(model: nn.Module) -> torch.Tensor:
    """Two fixed random directions in parameter space."""
    size = sum(p.numel() for p in model.parameters())
    return torch.randn(size, 2, generator=torch.Generator().manual_seed(3), dtype=F64)


def _tracker(model: nn.Module, **kw: Any) -> list[float]:
    tracker = CurvatureTracker(LOSS, data=(X, Y), k=2, every=1, **kw)
    tracker.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return tracker.history[0]["eigenvalues"]


CURVATURE_ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "hessian_matrix": lambda m, **kw: hessian_matrix(m, LOSS, (X, Y), **kw),
    "lanczos": lambda m, **kw: (
        lanczos(HessianOperator(m, LOSS, (X, Y), **kw), 2, v0=directions(m)[:, 0]).values
    ),
    "ggn_matrix": lambda m, **kw: ggn_matrix(m, LOSS, (X, Y), **kw),
    "hutchinson": lambda m, **kw: hutchinson(GGNOperator(m, LOSS, (X, Y), **kw), 4).trace,
    "kfac_factors": lambda m, **kw: kfac_factors(m, LOSS, (X, Y), **kw),
    "kfac_check": lambda m, **kw: kfac_check(m, LOSS, (X, Y), k=2, **kw),
    "eigenvector_functions": lambda m, **kw: (
        eigenvector_functions(m, X, directions(m), frequency=False, **kw).jvp
    ),
    "CurvatureTracker": _tracker,
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("entry", CURVATURE_ENTRY_POINTS)
def test_curvature_leaves_the_callers_model_bit_identical(kind: str, entry: str) -> None:
    model, run = MODELS[kind](), CURVATURE_ENTRY_POINTS[entry]
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"is in train mode; analysing its eval-mode function"):
        got = run(model)
    assert_untouched(model, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(got, run(copy.deepcopy(model).eval()))
    with pytest.raises(DataError, match=r"\(Sequential\) is in train mode"):
        run(model, train_mode="error")
    assert_untouched(model, before)
