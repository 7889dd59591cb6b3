"""experiments/modadd_graph.py: Fourier labels on known functions, and a --quick run."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments.modadd_graph import BASES, fourier_labels, frequency_classes, main
from graphs import InteractionGraph

P = 113
# FFT round-off on a 113 x 113 grid of O(1) values is ~1e-13 relative; 1e-10 leaves room.
TOL = 1e-10


def grid_functions(*fns: Any) -> np.ndarray:
    """(p², n) values, rows a-major (row = a·p + b), like rib's pair order."""
    a, b = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    return np.stack([f(a, b).ravel() for f in fns], axis=-1).astype(np.float64)


def wave(ka: int, kb: int, fn: Any = np.cos) -> Any:
    return lambda a, b: fn(2 * np.pi * (ka * a + kb * b) / P)


def test_frequency_classes_fold_every_non_dc_frequency_once() -> None:
    pairs, pos, neg = frequency_classes(P)
    assert len(pairs) == (P * P - 1) // 2
    covered = np.concatenate([pos, neg])
    assert np.array_equal(np.sort(covered), np.arange(1, P * P))  # all but DC, each once
    assert ((pairs[:, 0] > 0) | ((pairs[:, 0] == 0) & (pairs[:, 1] > 0))).all()
    with pytest.raises(ValueError, match="odd modulus"):
        frequency_classes(112)


def test_fourier_labels_of_known_functions() -> None:
    values = grid_functions(
        lambda a, b: np.ones_like(a, dtype=float),  # node 0: the constant node
        lambda a, b: wave(3, 5)(a, b) + 0.5 * wave(7, 0)(a, b) + 2.0,
        wave(3, -5),
        wave(-3, 5, np.sin),  # folds onto (3, -5)
        lambda a, b: wave(4, 0)(a, b) + wave(4, 4, np.sin)(a, b),
    )
    labels = fourier_labels(values, P, has_constant=True)
    assert labels[0] is None
    mixed = labels[1]
    assert mixed is not None and mixed["pair"] == [3, 5]
    assert math.isclose(mixed["pair_share"], 1 / 1.25, abs_tol=TOL)  # energies 1 : 0.25
    # (3, 5) is not a class of one key frequency: the best key frequency is 7, with 1/5
    assert mixed["frequency"] == 7 and math.isclose(mixed["frequency_share"], 0.2, abs_tol=TOL)
    for lab in labels[2:4]:
        assert lab is not None and lab["pair"] == [3, -5]
        assert math.isclose(lab["pair_share"], 1.0, abs_tol=TOL)
    key = labels[4]
    assert key is not None and key["pair"] in ([4, 0], [4, 4])
    assert math.isclose(key["pair_share"], 0.5, abs_tol=TOL)
    assert key["frequency"] == 4 and math.isclose(key["frequency_share"], 1.0, abs_tol=TOL)


def test_fourier_labels_sum_power_over_positions() -> None:
    pos0 = grid_functions(wave(2, 0))
    pos1 = grid_functions(lambda a, b: 2 * wave(0, 2)(a, b))
    labels = fourier_labels(np.stack([pos0, pos1], axis=1), P, has_constant=False)  # (p², 2, 1)
    assert labels[0] is not None and labels[0]["pair"] == [0, 2]
    assert math.isclose(labels[0]["pair_share"], 4 / 5, abs_tol=TOL)
    assert math.isclose(labels[0]["frequency_share"], 1.0, abs_tol=TOL)


def _numbers(x: Any) -> list[float]:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    if isinstance(x, int | float):
        return [float(x)]
    if isinstance(x, dict):
        return [v for item in x.values() for v in _numbers(item)]
    return [v for item in x for v in _numbers(item)]


def test_quick_run_writes_consistent_results(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "modadd_graph.json").read_text())
    for name in ("sparsity", "fourier", *(f"layered_{b}" for b in BASES)):
        assert (tmp_path / f"modadd_graph_{name}.png").stat().st_size > 1000
    assert all(math.isfinite(v) for v in _numbers(result))
    layers = result["settings"]["node_layers"]
    assert "blocks.0.ln1" not in layers and result["settings"]["quick"] is True
    assert list(result["bases"]) == list(BASES)
    for kind, res in result["bases"].items():
        graph = InteractionGraph.load(tmp_path / f"graph_{kind}.npz")
        assert [r["pair"] for r in res["edge_table"]] == [
            f"{lo} -> {hi}" for lo, hi in itertools.pairwise(layers)
        ]
        assert [r["needed_90"] for r in res["edge_table"]] == graph.edges_needed(0.9)
        for row, curve, e in zip(res["edge_table"], res["curves"], graph.edges, strict=True):
            assert 1 <= row["needed_90"] <= row["needed_99"] <= row["edges"] == (e > 0).sum()
            share = np.asarray(curve["share"])
            assert (np.diff(share) >= 0).all() and math.isclose(share[-1], 1.0, rel_tol=1e-12)
        for name, layer in res["layers"].items():
            assert name in layers
            assert len(layer["nodes"]) == layer["size"] - (name != "output")  # constant unlabelled
            for node in layer["nodes"]:
                ka, kb = node["pair"]
                assert ka > 0 or (ka == 0 and kb > 0)  # the folded representative
                assert 0 < node["pair_share"] <= 1 + TOL and 1 <= node["frequency"] <= 56
                assert 0 <= node["frequency_share"] <= 1 + TOL
                if len({abs(ka), abs(kb)} - {0}) == 1:  # a one-key class is inside its group,
                    assert node["pair_share"] <= node["frequency_share"] + TOL  # and k is argmax


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n-samples", "0"], "--n-samples must be in"),
        (["--bases", "interaction,fourier"], "--bases must be"),
        (["--threads", "0"], "--threads must be"),
    ],
)
def test_bad_cli_input_is_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
