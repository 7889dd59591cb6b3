"""Stochastic sources: unbiased M and edges, the exact limit, forward = reverse mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import PositionMixer, mlp
from torch import nn

import interbasis as ib
from interbasis.basis import interaction_basis
from interbasis.build import accumulate_activation_grams, node_map, prepare
from interbasis.edges import SquaredEdges, squared_edges
from interbasis.jacobians import section_jacobian_gram

pytestmark = pytest.mark.usefixtures("one_thread")
N_SEEDS = 400


def _mixer() -> tuple[nn.Module, torch.Tensor]:
    net = PositionMixer(P=6, d=5, d2=4, d_out=6).eval()
    x = torch.randn(24, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return net, x


def _M(net: nn.Module, x: torch.Tensor, out_map: torch.Tensor, sources=None, mode="vjp"):
    run = prepare(net, x, ["first", "second"], progress=False)
    return section_jacobian_gram(
        run.section("first", "second"), run.batches, out_map, detect_affine=False,
        sources=sources, mode=mode,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kind", [dict(positions=2), dict(hidden=2), dict(positions=2, hidden=2)], ids=str
)
def test_stochastic_M_is_unbiased(kind: dict) -> None:
    """Mean over 400 seeds within 4 standard errors of the exact M, entry by entry."""
    net, x = _mixer()
    out_map = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = _M(net, x, out_map).M
    draws = torch.stack([_M(net, x, out_map, ib.Sources(**kind, seed=s)).M for s in range(N_SEEDS)])
    mean, se = draws.mean(0), draws.std(0) / N_SEEDS**0.5
    assert (se > 0).any()  # the estimate is random ...
    assert ((mean - exact).abs() <= 4 * se + 1e-12 * exact.abs().max()).all()  # ... unbiased
    # and no single draw is the exact M
    assert (draws[0] - exact).abs().max() > 1e-6 * exact.abs().max()


def test_stochastic_edges_are_unbiased_and_spread_falls_as_one_over_sqrt_S() -> None:
    net, x = _mixer()
    names = ["first", "second", "output"]
    bases = ib.build_bases(net, x, names, progress=False)
    run = prepare(net, x, names, progress=False)
    section = run.section("first", "second")

    def edges(sources=None) -> np.ndarray:
        return squared_edges(section, run.batches(), bases[0], bases[1], sources=sources)

    exact = edges()
    draws = np.stack([edges(ib.Sources(positions=2, seed=s)) for s in range(N_SEEDS)])
    mean, se = draws.mean(0), draws.std(0, ddof=1) / N_SEEDS**0.5
    assert (se > 0).any()
    assert (np.abs(mean - exact) <= 4 * se + 1e-12 * exact.max()).all()
    # root-mean-square error times sqrt(S) is constant: S = 1 vs S = 4 differ by a factor 2
    rms = {
        S: np.sqrt(
            np.mean([(edges(ib.Sources(positions=S, seed=s)) - exact) ** 2 for s in range(200)])
        )
        for S in (1, 4)
    }
    assert 1.6 < rms[1] / rms[4] < 2.5


def test_every_sample_draws_its_own_sources_so_the_error_falls_with_N() -> None:
    """With signs drawn per sample (as rib), the cross terms of different samples average
    out: 4x the samples in one batch halve the error. One draw shared by the whole batch
    (the code before) left it flat (ratio about 1)."""
    net = PositionMixer(P=6, d=5, d2=4, d_out=6).eval()
    out_map = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rms = {}
    for n in (24, 96):
        x = torch.randn(n, 6, 5, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        exact = _M(net, x, out_map).M
        err = [(_M(net, x, out_map, ib.Sources(positions=1, seed=s)).M - exact).pow(2).mean()
               for s in range(100)]  # fmt: skip
        rms[n] = float(torch.stack(err).mean().sqrt() / exact.pow(2).mean().sqrt())
    assert 1.5 < rms[24] / rms[96] < 2.7, rms


def test_relative_standard_error_report_matches_the_spread_over_seeds() -> None:
    """The RSE saved with the graph (from the S samples of one run) is the spread over runs."""
    net, x = _mixer()
    names = ["first", "second", "output"]
    traces, reported = [], []
    for s in range(5):
        g = ib.build_graph(net, x, names, sources=ib.Sources(positions=2, seed=s), progress=False)
        reported.append(g.metadata["estimator"]["relative_standard_error"]["M"]["first"])
    out_map = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for s in range(40):
        traces.append(float(_M(net, x, out_map, ib.Sources(positions=2, seed=s)).M.trace()))
    # one run with positions=2 estimates its own spread; compare with 40 independent runs
    rse_runs = np.std(traces, ddof=1) / np.mean(traces)
    rse_one = [_M(net, x, out_map, ib.Sources(positions=2, seed=s)).relative_standard_error
               for s in range(40)]  # fmt: skip
    assert 0.5 < np.mean(rse_one) / rse_runs < 2.0
    assert min(reported) > 0 and np.isfinite(reported).all()
    exact = ib.build_graph(net, x, names, progress=False)
    assert exact.metadata["estimator"]["relative_standard_error"]["M"]["first"] == 0.0
    one = ib.build_graph(net, x, names, sources=ib.Sources(positions=1), progress=False)
    assert one.metadata["estimator"]["relative_standard_error"]["M"]["first"] is None


def _graphs_equal(a, b, rtol: float = 1e-10) -> None:
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_allclose(la.eigenvalues, lb.eigenvalues, rtol=rtol)
    for ea, eb in zip(a.edges, b.edges, strict=True):
        np.testing.assert_allclose(ea, eb, rtol=rtol, atol=rtol * max(eb.max(), 1e-300))


def test_sources_at_least_the_units_reproduce_the_exact_graph() -> None:
    net, x = _mixer()
    names = ["first", "second", "output"]
    exact = ib.build_graph(net, x, names, progress=False)
    many = ib.Sources(positions=6, hidden=50, seed=3)
    g = ib.build_graph(
        net, x, names, sources=many, edge_sources=ib.Sources(positions=6), progress=False
    )
    _graphs_equal(g, exact)


def _tiny_transformer() -> tuple[nn.Module, torch.Tensor]:
    from experiments.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(
        n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, n_ctx=4, d_vocab=7, seed=0,
        normalization_type="LN",
    )  # fmt: skip
    tokens = torch.randint(0, 7, (20, 4), generator=torch.Generator().manual_seed(0))
    return Transformer(cfg).double().eval(), tokens


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    return net.double().eval(), torch.randn(12, 2, 5, 5, dtype=torch.float64)


CASES = {
    "cnn": lambda: (*_cnn(), ["2", "4", "6", "output"], None),
    "mlp": lambda: (mlp([3, 7, 5, 4]), torch.randn(30, 3, dtype=torch.float64),
                    ["0", "2", "4", "output"], None),
    "positions": lambda: (*_mixer(), ["first", "second", "output"], None),
    "kept positions": lambda: (*_mixer(), ["first", "second", "output"],
                               {"second": [-1, 2]}),
    "transformer": lambda: (*_tiny_transformer(),
                            ["blocks.0.ln1", "blocks.1.ln1", "unembed", "output"], None),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_forward_mode_equals_reverse_mode(case: str) -> None:
    net, x, names, keep = CASES[case]()
    vjp = ib.build_graph(net, x, names, mode="vjp", keep_positions=keep, progress=False)
    jvp = ib.build_graph(net, x, names, mode="jvp", keep_positions=keep, progress=False)
    _graphs_equal(jvp, vjp)
    auto = ib.build_graph(net, x, names, keep_positions=keep, progress=False)
    _graphs_equal(auto, vjp)


def test_auto_mode_weighs_the_cost_of_a_forward_pass() -> None:
    """auto takes JVPs only when they are JVP_PASS_COST times fewer than the VJPs (more in a
    model with convolutions, whose batched forward mode is slow)."""
    from interbasis.passes import JVP_PASS_COST, JVP_PASS_COST_CONV, jvp_pass_cost

    assert jvp_pass_cost(_cnn()[0]) == JVP_PASS_COST_CONV > JVP_PASS_COST
    assert jvp_pass_cost(mlp([3, 7, 5, 4])) == JVP_PASS_COST
    assert jvp_pass_cost(_tiny_transformer()[0]) == JVP_PASS_COST


def test_forward_mode_with_sources_equals_reverse_mode() -> None:
    net, x = _mixer()
    out_map = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    src = ib.Sources(positions=2, hidden=2, seed=5)
    a = _M(net, x, out_map, src, mode="vjp").M
    b = _M(net, x, out_map, src, mode="jvp").M
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


class _Tanh(torch.autograd.Function):
    """tanh with a hand-written backward and no forward-mode rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _TanhBadJvp(_Tanh):
    @staticmethod
    def jvp(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        raise RuntimeError("boom: a bug in the user's code")


class _Act(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x)


def test_forward_mode_falls_back_only_when_unavailable(caplog) -> None:
    """An op without a forward-mode rule (NotImplementedError) makes mode="auto" take VJPs and
    give the graph of the same network built from torch.tanh; mode="jvp" names the section
    and says to use VJPs. Any other error inside forward mode is not swallowed. (The first
    section, 2 inputs to 16 units, is one auto takes by JVPs.)"""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    ref = ref.double().eval()
    x = torch.randn(40, 2, dtype=torch.float64)
    names = ["0", "2", "4", "output"]
    custom = nn.Sequential(ref[0], _Act(_Tanh), ref[2], _Act(_Tanh), ref[4]).eval()
    want = ib.build_graph(ref, x, names, progress=False)
    with caplog.at_level("INFO", logger="interbasis.section"):
        _graphs_equal(ib.build_graph(custom, x, names, progress=False), want)
    assert "forward mode failed on section '0' -> '2'" in caplog.text
    with pytest.raises(ib.DataError, match='mode="jvp" failed on section .*use mode="vjp"'):
        ib.build_graph(custom, x, names, mode="jvp", progress=False)
    broken = nn.Sequential(ref[0], _Act(_TanhBadJvp), ref[2], _Act(_Tanh), ref[4]).eval()
    with pytest.raises(RuntimeError, match="boom"):
        ib.build_graph(broken, x, names, progress=False)


def test_deep_linear_transitions_become_diagonal_as_S_grows() -> None:
    """Seed 004's closed form in expectation: with hidden sources the estimated M only
    approximately diagonalises the chain; the off-diagonal mass of the transitions falls with
    S and vanishes at S = width (exact). (A linear section has one Jacobian for every sample,
    so the estimate averages over the independent draws of the 20 batches.)"""
    g = torch.Generator().manual_seed(1)
    d = 8
    net = nn.Sequential(*[nn.Linear(d, d, bias=False).double() for _ in range(3)]).eval()
    with torch.no_grad():
        for lin in net:
            q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            lin.weight.copy_(q1 @ torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64)) @ q2)
    x = torch.randn(200, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d)
    names = ["0", "1", "2", "output"]
    run = prepare(net, x, names, batch_size=10, progress=False)
    accumulate_activation_grams(run, check_cuts=False)

    def off_diagonal_mass(sources) -> float:
        """Relative off-diagonal mass of the transition f_hat^0 -> f_hat^1."""
        bases = {"output": ib.build_bases(net, x, names, basis="neuron", center=False,
                                          fold_bias=False, progress=False)[-1]}  # fmt: skip
        for lo, hi in (("2", "output"), ("1", "2"), ("0", "1")):
            M = section_jacobian_gram(
                run.section(lo, hi), run.batches, node_map(bases[hi]), detect_affine=False,
                sources=sources,
            ).M  # fmt: skip
            g = run.grams[lo]
            bases[lo] = interaction_basis(lo, g.mean, g.second_moment, M, center=False,
                                          fold_bias=False)  # fmt: skip
        T = (bases["0"].C_pinv @ net[0].weight.T @ bases["1"].C).detach()
        return float((T - torch.diag(torch.diagonal(T))).pow(2).sum() / T.pow(2).sum())

    mass = {S: np.mean([off_diagonal_mass(ib.Sources(hidden=S, seed=s)) for s in range(8)])
            for S in (1, 3, 6)}  # fmt: skip
    assert mass[1] > mass[3] > mass[6] > 0
    assert off_diagonal_mass(ib.Sources(hidden=d, seed=0)) < 1e-16
    assert off_diagonal_mass(None) < 1e-16


def test_bad_sources_are_refused_before_any_work() -> None:
    net, x = _mixer()
    names = ["first", "second", "output"]
    with pytest.raises(ValueError, match="positions"):
        ib.Sources(positions=0)
    with pytest.raises(ValueError, match="hidden"):
        ib.Sources(hidden=True)
    with pytest.raises(TypeError, match="sources must be None or interbasis.Sources"):
        ib.build_graph(net, x, names, sources=4, progress=False)
    with pytest.raises(ValueError, match="an edge belongs to one output node"):
        ib.build_graph(net, x, names, edge_sources=ib.Sources(hidden=2), progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        ib.build_graph(net, x, names, mode="forward", progress=False)


def test_squared_edges_accumulator_refuses_hidden_sources() -> None:
    net, x = _mixer()
    names = ["first", "second", "output"]
    bases = ib.build_bases(net, x, names, progress=False)
    run = prepare(net, x, names, progress=False)
    acc = SquaredEdges(bases[0], bases[1])
    with pytest.raises(ValueError, match="exact output directions"):
        section_jacobian_gram(
            run.section("first", "second"), run.batches, node_map(bases[1]),
            consumers=[acc], detect_affine=False, sources=ib.Sources(hidden=1),
        )  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_batch_split_to_fit_the_memory_budget_gives_the_same_graph(case: str) -> None:
    """When one output unit over the whole batch exceeds memory_budget, the VJPs run over
    slices of the batch: memory stays bounded for any batch size or sequence length, and
    the graph (M, bases and squared edges; exact and with position sources) is unchanged."""
    net, x, names, keep = CASES[case]()
    kw = {"keep_positions": keep, "mode": "vjp", "progress": False}
    whole = ib.build_graph(net, x, names, **kw)
    split = ib.build_graph(net, x, names, memory_budget=2048, **kw)
    _graphs_equal(split, whole)
    src = ib.Sources(positions=1, seed=3)
    whole = ib.build_graph(net, x, names, sources=src, edge_sources=src, **kw)
    split = ib.build_graph(net, x, names, sources=src, edge_sources=src, memory_budget=2048, **kw)
    _graphs_equal(split, whole)


def test_vjp_chunks_stay_within_the_memory_budget() -> None:
    """Every chunk's gradients fit the budget once one unit of one sample does; the samples
    of the batch are each covered once."""
    from interbasis.passes import samples_per_chunk
    from interbasis.section import Section

    net, x = _mixer()
    section = Section(net, ("first", net.first), ("second", net.second))
    value, layout = section.capture_input(x)
    out_map = torch.eye(4, dtype=torch.float64)
    budget = 4096
    chunks = list(section.jacobians(x, value, layout, out_map, mode="vjp", memory_budget=budget))
    per_sample = samples_per_chunk(len(x), value[0].numel(), 6 * 4, budget)
    assert 1 < per_sample < len(x)  # the budget does split this batch
    covered = torch.zeros(len(x), dtype=torch.long)
    for chunk in chunks:
        assert chunk.grads.numel() * 8 <= budget
        covered[chunk.samples] += chunk.units.stop - chunk.units.start
    assert bool((covered == chunks[0].out_units.n_units).all())


def test_capturing_a_section_input_keeps_no_autograd_graph() -> None:
    """The capture runs up to the section's input without autograd: with grad enabled it kept
    every intermediate of the model's forward pass (MiniLM, 256 sequences: +770 MiB peak)."""
    seen: list[bool] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_grad_enabled())
            return x

    net = nn.Sequential(nn.Linear(3, 4), Recorder(), nn.Tanh(), nn.Linear(4, 2)).double()
    run = prepare(net, torch.randn(8, 3, dtype=torch.float64), ["2", "output"], progress=False)
    x = next(iter(run.batches()))
    value, _ = run.section("2", "output").capture_input(x)
    assert seen == [False] and not value.requires_grad
