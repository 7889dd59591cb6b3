"""Issue 19, determinism: the same seeded build twice gives bit-identical results.

``interbasis.build_bases`` / ``build_graph`` and ``graphs.find_modules`` (seeded) on a tiny
model, exact and with stochastic sources (``Sources(positions=2, seed=3)``), are run twice
in this process and once in each of two fresh Python processes (a script that saves every
array to ``.npz``); every array (Λ, rotations C and C⁺, means, Gram eigenvalues, edges,
module membership and cut cost) must be equal bit for bit. Bit-identity holds for one
machine, one torch build and one thread count (BLAS sums in another order with more threads),
so every run here uses one torch thread.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import PositionMixer, mlp

import interbasis as ib
from graphs import find_modules

HERE = Path(__file__).resolve().parent
VARIANTS = ("exact", "sources")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def compute_arrays(variant: str, source_seed: int = 3) -> dict[str, np.ndarray]:
    """Every array of one seeded build: bases, graph, modules (keys ``part__layer__field``)."""
    if variant == "exact":  # a tanh MLP, no positions
        net = mlp([4, 7, 6, 3], seed=2)
        x = torch.randn(48, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        names, sources, edge_sources = ["0", "2", "4", "output"], None, None
    else:  # positions: stochastic sources over the output positions, for M and for edges
        net = PositionMixer(P=6, d=5, d2=4, d_out=6).eval()
        x = torch.randn(24, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        names = ["first", "second", "output"]
        sources = ib.Sources(positions=2, seed=source_seed)
        edge_sources = ib.Sources(positions=2, seed=source_seed)
    out: dict[str, np.ndarray] = {}
    # positions 0-3 of "second" never reach the output (the head reads the last two): the
    # build says so; they stay, so that the sources over its 6 positions are stochastic
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "positions .* never reach", UserWarning)
        bases = ib.build_bases(net, x, names, sources=sources, progress=False)
        graph = ib.build_graph(
            net, x, names, sources=sources, edge_sources=edge_sources, progress=False
        )
    for b in bases:
        for name in ("C", "C_pinv", "eigenvalues", "gram_eigenvalues", "mean"):
            value = getattr(b, name)
            if value is not None:
                out[f"bases__{b.name}__{name}"] = value.detach().cpu().numpy()
    for layer in graph.layers:
        for name in ("eigenvalues", "is_constant", "activation_variance"):
            out[f"graph__{layer.name}__{name}"] = np.asarray(getattr(layer, name))
    for i, edges in enumerate(graph.edges):
        out[f"edges__{i}"] = np.asarray(edges)
    partition = find_modules(graph, seed=0)
    ids = graph.node_ids()
    out["modules__membership"] = np.array([partition.membership.get(n, -2) for n in ids])
    out["modules__cost"] = np.array(partition.cost)
    return out


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), f"{key} differs"  # bit for bit (NaNs included)


@pytest.fixture(scope="module")
def first_runs() -> dict[str, dict[str, np.ndarray]]:
    return {v: compute_arrays(v) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_build_twice_in_one_process(
    first_runs: dict[str, dict[str, np.ndarray]], variant: str
) -> None:
    again = compute_arrays(variant)
    assert_bit_identical(first_runs[variant], again)
    arrays = first_runs[variant]
    assert any(k.endswith("__C") for k in arrays) and "edges__0" in arrays
    assert (arrays["modules__membership"] >= 0).any()  # nodes in modules


def test_the_check_sees_another_source_seed(first_runs: dict[str, dict[str, np.ndarray]]) -> None:
    """The comparison can fail: another seed of the stochastic sources changes the result."""
    other = compute_arrays("sources", source_seed=4)
    with pytest.raises(AssertionError, match="differs"):
        assert_bit_identical(first_runs["sources"], other)


SCRIPT = """
import sys
import numpy as np
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from test_determinism import VARIANTS, compute_arrays
arrays = {{}}
for variant in VARIANTS:
    arrays.update({{f"{{variant}}__{{k}}": v for k, v in compute_arrays(variant).items()}})
np.savez(sys.argv[1], **arrays)
"""


def test_two_processes_give_bit_identical_arrays(
    first_runs: dict[str, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    script = SCRIPT.format(here=str(HERE))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"run{i}.npz")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    runs = []
    for i in range(2):
        with np.load(tmp_path / f"run{i}.npz") as f:
            runs.append({k: f[k] for k in f.files})
    assert_bit_identical(runs[0], runs[1])
    here = {f"{v}__{k}": a for v in VARIANTS for k, a in first_runs[v].items()}
    assert_bit_identical(here, runs[0])  # and the same as this (pytest) process
