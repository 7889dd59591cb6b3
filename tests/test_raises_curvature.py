"""Bad inputs to interbasis.curvature: our exception type, and a message naming what is wrong."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import aslinearoperator
from torch import nn

from interbasis.curvature import (
    CurvatureOperator,
    CurvatureTracker,
    HessianOperator,
    ParamLayout,
    block_indices,
    eigenvector_functions,
    eigh_descending,
    hessian_matrix,
    hutchinson,
    kfac_check,
    kfac_factors,
    lanczos,
    spectral_centroid,
)
from interbasis.curvature.objective import Objective
from interbasis.errors import DataError, NonFiniteError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double().eval()


X = torch.linspace(-1, 1, 6, dtype=F64)[:, None].expand(6, 2).contiguous()
Y = torch.sin(X[:, :1])


class Scale(nn.Module):
    """A trainable model without any nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def nan_net() -> nn.Sequential:
    model = net()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return model


def flat_net() -> nn.Sequential:
    """Its first Linear sees (batch, 2, 3) inputs: not (batch, d_in)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Flatten(), nn.Linear(8, 1)).double().eval()


def n_params() -> int:
    return ParamLayout.from_model(net()).size


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # objective.py: data that are not (inputs, targets) pairs of tensors with samples
    ("data-not-pair", lambda: hessian_matrix(net(), F.mse_loss, [(X,)]),
     DataError, r"batch 0 is not an \(inputs, targets\) pair: tuple of length 1"),
    ("data-not-tensors", lambda: hessian_matrix(net(), F.mse_loss, [(X, [1.0])]),
     DataError, r"batch 0: inputs and targets must be tensors, got Tensor and list"),
    ("data-no-samples", lambda: hessian_matrix(net(), F.mse_loss, (X[:0], Y[:0])),
     DataError, r"batch 0: inputs of shape \(0, 2\) hold no samples"),
    # params.py
    ("params-repeat", lambda: ParamLayout.from_model(net(), ["0.bias", "0.bias"]),
     DataError, r"params: parameter names repeat in \['0.bias', '0.bias'\]"),
    ("indices-unknown", lambda: ParamLayout.from_model(net()).indices(["9.weight"]),
     DataError, r"parameter\(s\) \['9.weight'\] are not in the layout"),
    ("flatten-missing", lambda: ParamLayout.from_model(net()).flatten({}),
     DataError, r"flatten: missing parameter '0.weight'"),
    # spectra.py
    ("eigh-not-square", lambda: eigh_descending(torch.zeros(2, 3)),
     ShapeError, r"eigh needs a square matrix, got shape \(2, 3\)"),
    ("eigh-nan", lambda: eigh_descending(torch.full((2, 2), float("nan"))),
     NonFiniteError, r"matrix of shape \(2, 2\) has NaN/Inf"),
    ("lanczos-v0", lambda: lanczos(HessianOperator(net(), F.mse_loss, (X, Y)), 1, v0=np.ones(3)),
     ShapeError, r"v0 has length 3, expected P=13"),
    # operator.py
    ("operator-length", lambda: HessianOperator(net(), F.mse_loss, (X, Y)).matmat_torch(
        torch.ones(n_params() + 1, dtype=F64)),
     DataError, r"Hessian: vector of length 14, expected 13"),
    ("operator-base-class", lambda: CurvatureOperator(Objective(net(), F.mse_loss, (X, Y)))
     .matvec(np.ones(n_params())),
     NotImplementedError, r"CurvatureOperator does not implement _batch_matmat.*HessianOperator"),
    # hessian.py
    ("hessian-nan", lambda: hessian_matrix(nan_net(), F.mse_loss, (X, Y)),
     NonFiniteError, r"the Hessian has \d+ NaN/Inf entries: check the model's parameters"),
    # trace.py
    ("trace-groups-no-layout", lambda: hutchinson(aslinearoperator(np.eye(3)), 4,
                                                  groups={"a": ["x"]}),
     DataError, r"groups: block traces need an operator with a parameter layout.*got "
                r"MatrixLinearOperator"),
    # tracker.py
    ("tracker-every", lambda: CurvatureTracker(F.mse_loss, every=0),
     DataError, r"every must be an integer >= 1 \(optimizer steps\), got 0"),
    ("tracker-every-bool", lambda: CurvatureTracker(F.mse_loss, every=True),
     DataError, r"every must be an integer >= 1.*got True"),
    ("tracker-train-mode", lambda: CurvatureTracker(F.mse_loss, train_mode="train"),
     ValueError, r"train_mode must be \"eval\", \"error\" or \"keep\", got 'train'"),
    # kfac.py
    ("kfac-no-linear", lambda: kfac_factors(Scale().eval(), F.mse_loss, (X, X)),
     DataError, r"the model \(Scale\) has no nn.Linear layer whose weight is differentiated"),
    ("kfac-weight-not-differentiated", lambda: kfac_factors(
        net(), F.mse_loss, (X, Y), layers=["0"], params=["2.weight"]),
     DataError, r"layer '0': its weight '0.weight' is not among the differentiated parameters"),
    ("kfac-block-not-2d", lambda: block_indices(
        ParamLayout.from_model(nn.Sequential(nn.LayerNorm(3))), "0"),
     ShapeError, r"layer '0': weight of shape \(3,\) is not 2-D"),
    ("kfac-input-not-2d", lambda: kfac_factors(
        flat_net(), F.mse_loss, (torch.randn(5, 2, 3, dtype=F64), torch.randn(5, 1, dtype=F64)),
        layers=["0"]),
     ShapeError, r"layer '0': input of shape \(5, 2, 3\); K-FAC needs \(batch, d_in\)"),
    ("kfac-check-k", lambda: kfac_check(net(), F.mse_loss, (X, Y), k=0),
     DataError, r"k must be an integer >= 1 \(size of the top eigenspaces\), got 0"),
    # eigenfunctions.py
    ("centroid-shape", lambda: spectral_centroid(torch.zeros(2, 5), torch.linspace(0, 1, 4)),
     ShapeError, r"values of shape \(2, 5\) do not fit a grid of 4 points"),
    ("eigenfunctions-eigenvalues", lambda: eigenvector_functions(
        net(), X, torch.zeros(n_params(), 2, dtype=F64), eigenvalues=torch.ones(3)),
     ShapeError, r"eigenvalues: 3 values for 2 vectors"),
    ("eigenfunctions-nan", lambda: eigenvector_functions(
        nan_net(), X, torch.ones(n_params(), dtype=F64), frequency=False),
     NonFiniteError, r"eigenvector functions: the JVP has \d+ NaN/Inf entries; check the model"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_named_error(
    call: Callable[[], object], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_keep_refuses_batch_norm_that_updates_running_stats() -> None:
    """train_mode="keep" on train-mode batch norm: our error, not torch.func's RuntimeError,
    and the caller's buffers untouched (the forward pass works on copies)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match=r"batch-norm module\(s\) \['1'\] are in train mode"):
        hessian_matrix(model, F.mse_loss, (X, Y), train_mode="keep")
    with pytest.raises(DataError, match=r"\['1'\].*eigenvector functions"):
        eigenvector_functions(model, X, torch.ones(19, dtype=F64), train_mode="keep")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
