"""K-FAC (seed 004 eq. 37): exact where theory says so, error reported otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interbasis.curvature import (
    KroneckerFactors,
    ParamLayout,
    block_indices,
    ggn_matrix,
    hessian_matrix,
    kfac_check,
    kfac_factors,
)
from interbasis.errors import DataError, NodeLayerError, ShapeError

TIGHT = 1e-10  # float64 round-off of these ~100-entry blocks is ~1e-15


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def mlp3() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 4),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 3),
        torch.nn.Tanh(),
        torch.nn.Linear(3, 2),
    ).double()


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )


def block(matrix: torch.Tensor, model: torch.nn.Module, layer: str) -> torch.Tensor:
    idx = block_indices(ParamLayout.from_model(model), layer)
    return matrix[idx][:, idx]


@pytest.mark.parametrize(
    "loss_fn", [F.mse_loss, lambda o, y: F.cross_entropy(o, y.argmax(dim=1))], ids=["mse", "ce"]
)
def test_exact_for_a_single_sample(loss_fn) -> None:  # type: ignore[no-untyped-def]
    model, d = mlp3(), data(1)
    G = ggn_matrix(model, loss_fn, d)
    factors = kfac_factors(model, loss_fn, d)
    assert list(factors) == ["0", "2", "4"]
    for name, fac in factors.items():
        torch.testing.assert_close(fac.matrix(), block(G, model, name), rtol=TIGHT, atol=TIGHT)
    reports = kfac_check(model, loss_fn, d, reference="ggn")
    assert all(r.relative_error < TIGHT and r.overlap > 1 - 1e-8 for r in reports.values())


def test_exact_for_the_linear_output_layer_and_a_linear_model() -> None:
    model, d = mlp3(), data(30)
    H = hessian_matrix(model, F.mse_loss, d)
    out = kfac_factors(model, F.mse_loss, d)["4"]
    torch.testing.assert_close(out.matrix(), block(H, model, "4"), rtol=TIGHT, atol=TIGHT)
    # K of the output layer is the MSE output Hessian summed over samples: 2/d_out * I
    torch.testing.assert_close(out.K, torch.eye(2, dtype=torch.float64), rtol=TIGHT, atol=TIGHT)
    lin = torch.nn.Linear(2, 2).double()
    full = hessian_matrix(lin, F.mse_loss, d)
    fac = kfac_factors(lin, F.mse_loss, d, layers=[""])[""]
    torch.testing.assert_close(fac.matrix(), block(full, lin, ""), rtol=TIGHT, atol=TIGHT)


def test_factors_and_error_match_brute_force_on_many_samples() -> None:
    model, (x, y) = mlp3(), data(30)
    fac = kfac_factors(model, F.mse_loss, [(x[:11], y[:11]), (x[11:], y[11:])])["2"]
    a = torch.tanh(model[0](x)).detach()
    a1 = torch.cat([a, torch.ones(30, 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(fac.G, a1.T @ a1 / 30, rtol=TIGHT, atol=TIGHT)

    def downstream(p: torch.Tensor) -> torch.Tensor:  # layer-2 pre-activation -> output
        return model[4](torch.tanh(p))

    pre = model[2](a).detach()
    K = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(30):  # brute force, one sample at a time
        J = torch.autograd.functional.jacobian(downstream, pre[i])  # (2, 3)
        K += J.T @ J * 2.0 / (30 * 2)  # Lambda_x = 2 / (N d_out) I for mean MSE
    torch.testing.assert_close(fac.K, K, rtol=TIGHT, atol=TIGHT)

    G = ggn_matrix(model, F.mse_loss, (x, y))
    exact = block(G, model, "2")
    expected = float(
        torch.linalg.norm(exact - torch.kron(K, a1.T @ a1 / 30)) / torch.linalg.norm(exact)
    )
    report = kfac_check(model, F.mse_loss, (x, y), layers=["2"], reference="ggn", k=3)["2"]
    assert report.relative_error == pytest.approx(expected, rel=1e-8)
    assert report.relative_error > 1e-3  # not exact here: the factors are correlated
    assert 0.0 <= report.overlap <= 1.0 + 1e-12
    hess = kfac_check(model, F.mse_loss, (x, y), layers=["2"], reference="hessian")["2"]
    assert hess.reference == "hessian" and hess.relative_error > 1e-3


def test_matrix_of_non_contiguous_factors() -> None:
    # einsum returns a transposed view when opt_einsum is installed; torch.kron then raised
    # "view size is not compatible". Entry (i*in + j, i'*in + j') must be K[i, i'] G[j, j'].
    g = torch.Generator().manual_seed(3)
    K = torch.randn(4, 3, generator=g, dtype=torch.float64).T  # (3, 4), non-contiguous
    G = torch.randn(5, 2, generator=g, dtype=torch.float64).T  # (2, 5), non-contiguous
    assert not K.is_contiguous() and not G.is_contiguous()
    M = KroneckerFactors("x", G=G, K=K, has_bias=False).matrix()
    assert M.shape == (3 * 2, 4 * 5)
    for i in range(3):
        for ip in range(4):
            for j in range(2):
                for jp in range(5):
                    assert M[i * 2 + j, ip * 5 + jp] == K[i, ip] * G[j, jp]
    torch.testing.assert_close(M, torch.kron(K.contiguous(), G.contiguous()), rtol=0, atol=0)


def test_bad_input() -> None:
    model, d = mlp3(), data(4)
    with pytest.raises(NodeLayerError, match="nope"):
        kfac_factors(model, F.mse_loss, d, layers=["nope"])
    with pytest.raises(DataError, match=r"'1' is a Tanh"):
        kfac_factors(model, F.mse_loss, d, layers=["1"])
    with pytest.raises(DataError, match="reference"):
        kfac_check(model, F.mse_loss, d, reference="fisher")

    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    x3 = torch.randn(4, 5, 2, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"outputs \(batch, d_out\)"):
        kfac_factors(Seq(), F.mse_loss, (x3, torch.zeros(4, 5, 2, dtype=torch.float64)))
