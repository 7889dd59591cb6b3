"""Issue 7, test 3: a trained small MLP, predicted and measured nullity side by side."""

from __future__ import annotations

import pytest
import torch

from interbasis.degeneracy import degeneracy_report

RTOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def trained_mlp(steps: int = 400):
    """2-16-16-2 ReLU MLP fitted to ``(sin(3u) v, cos(2v) u)`` on 500 points (full-batch Adam,
    float64): 1000 output values > P = 354, so the data do not cap the Hessian's rank."""
    from experiments.models import MLP, MLPConfig

    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(500, 2, generator=g, dtype=torch.float64) - 1
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], torch.cos(2 * x[:, 1]) * x[:, 0]], 1)
    model = MLP(MLPConfig(d_in=2, d_hidden=[16, 16], d_out=2, seed=0)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return model.eval(), x, float(loss.detach())


def jacobian_nullity(model: torch.nn.Module, x: torch.Tensor, rtol: float) -> int:
    """Independent check: ``P - rank`` of the stacked output Jacobian (H = J^T J / n)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    n_out = model(x).numel()  # rows: (sample, output) pairs
    J = torch.cat([j.reshape(n_out, -1) for j in jac.values()], dim=1)
    sv = torch.linalg.svdvals(J)
    # eigenvalues of J^T J are sv^2: |lambda| <= rtol lambda_max  <=>  sv <= sqrt(rtol) sv_max
    return J.shape[1] - int((sv > rtol**0.5 * sv[0]).sum())


def test_trained_mlp_report_side_by_side(capsys):
    model, x, final_loss = trained_mlp()
    assert final_loss < 0.05  # it did learn the task
    rep = degeneracy_report(model, x, rtol=RTOL)
    table = rep.table()
    print(f"final training loss {final_loss:.4f}\n{table}")
    assert rep.measured is not None and rep.measured.method == "exact"
    assert rep.measured.nullity == jacobian_nullity(model, x, RTOL)
    assert f"predicted nullity: {rep.predicted} " in table
    assert f"measured nullity:  {rep.measured.nullity} " in table
    assert [s.stage.input for s in rep.stages] == ["layers.0", "layers.1", "layers.2"]
    # the dead neurons the report lists are exactly those that never fire on the data
    with torch.no_grad():
        p0 = model.layers[0](x)
    assert rep.layers[0].sync.dead == tuple(int(i) for i in ((p0 < 0).all(0)).nonzero().flatten())
    assert "zero: eigenvalues <= 1e-09" in capsys.readouterr().out
