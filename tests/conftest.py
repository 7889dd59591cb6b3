"""Shared fixtures and marker handling."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a test module (restored afterwards); used with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``. On CI's 2 shared cores small
    float64 linear algebra is faster without BLAS threads spinning against each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def rib_model() -> torch.nn.Module:
    """The shipped rib mod-add checkpoint (float32, eval mode); tests must not modify it."""
    from experiments.checkpoint_io import load_rib_modadd

    return load_rib_modadd()


@pytest.fixture(scope="session")
def rib_train_inputs() -> torch.Tensor:
    """rib's train split of add mod 113 (3 830 token triples)."""
    from experiments.checkpoint_io import rib_modadd_task

    return rib_modadd_task().train_inputs


@pytest.fixture(scope="session")
def rib_bases(rib_model, rib_train_inputs):
    """Interaction bases of the rib checkpoint with rib-compatible settings (float64, centred)."""
    from interbasis import build_bases

    return build_bases(
        rib_model,
        rib_train_inputs,
        ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"],
        dtype=torch.float64,
        progress=False,
    )
