"""The whole build on CUDA equals the CPU build (issue 22; skipped where CUDA is absent).

float64 on both devices: the sums run in another order and with other kernels, so agreement
is to round-off; 1e-10 relative leaves five orders of magnitude above float64 round-off.
"""

from __future__ import annotations

import numpy as np
import pytest

from interbasis import build_bases, build_graph

pytestmark = pytest.mark.gpu  # tests/conftest.py skips these with a reason without CUDA

TOL = 1e-10
LAYERS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    ok = ~np.isnan(b)
    assert np.array_equal(np.isnan(a), ~ok)
    scale = np.abs(b[ok]).max() if ok.any() else 0.0
    assert np.abs(a[ok] - b[ok]).max() <= TOL * max(scale, 1e-300)


def test_modadd_graph_on_cuda_equals_the_cpu_graph(rib_model, rib_train_inputs) -> None:
    data = rib_train_inputs
    cpu = build_graph(rib_model, data, LAYERS, device="cpu", progress=False)
    gpu = build_graph(rib_model, data, LAYERS, device="cuda", progress=False)
    assert gpu.metadata["device"].startswith("cuda")
    for la, lb in zip(gpu.layers, cpu.layers, strict=True):
        assert la.size == lb.size
        _close(la.eigenvalues, lb.eigenvalues)
        _close(la.activation_variance, lb.activation_variance)
    for ea, eb in zip(gpu.edges, cpu.edges, strict=True):
        _close(ea, eb)


def test_modadd_bases_on_cuda_equal_the_cpu_bases_up_to_sign(rib_model, rib_train_inputs):
    cpu = build_bases(rib_model, rib_train_inputs, LAYERS, device="cpu", progress=False)
    gpu = build_bases(rib_model, rib_train_inputs, LAYERS, device="cuda", progress=False)
    for a, b in zip(gpu, cpu, strict=True):
        assert a.C.device.type == "cpu"  # results come back on the CPU
        _close(a.eigenvalues.numpy(), b.eigenvalues.numpy())
        # C is unique up to the sign of each column (and a rotation inside a degenerate
        # eigenspace of Λ); C C^T = R V Λ V^T R^T is invariant to both
        _close((a.C @ a.C.T).numpy(), (b.C @ b.C.T).numpy())
