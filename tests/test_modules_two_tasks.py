"""Modules of two-task networks (issue 6, test 2) and a --quick run of the experiment."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from experiments.modules_two_tasks import (
    BASES,
    QUICK,
    analyse,
    anova,
    main,
    mixed_disconnected_net,
    node_layers,
)
from experiments.tasks import two_tasks


def test_mixed_disconnected_network_modules_recover_the_tasks() -> None:
    """Issue 6 test 2: --quick size, inputs on a Cartesian product grid."""
    s = QUICK
    mixed = mixed_disconnected_net(s.width, s.depth, seed=0)
    x = two_tasks(grid_size=s.grid, dtype=torch.float64).inputs
    with torch.no_grad():  # the mixing R, R^{-1} leaves the float64 function unchanged
        plain = mixed_disconnected_net(s.width, s.depth, seed=0, mix=False)
        assert torch.allclose(mixed(x), plain(x), rtol=0, atol=1e-12)
    assert node_layers(s.depth) == ["layers.0", "layers.1", "layers.2", "output"]
    interaction, _ = analyse(mixed, s, "interaction")
    neuron, _ = analyse(mixed, s, "neuron")
    print(
        f"ARI with the task split: interaction {interaction['ari']:.3f}, neuron {neuron['ari']:.3f}"
    )
    assert interaction["ari"] is not None and interaction["ari"] >= 0.9
    # the construction is non-trivial: in the neuron basis the two tasks are entangled
    assert neuron["cross_task_share"] > 0.01
    # in the interaction basis the two sub-networks are disconnected: cross-task edges are at
    # round-off (DESIGN §4 closed form; 1e-12 of the total weight as in issue 5 test 1)
    assert interaction["cross_task_share"] < 1e-12


def test_anova_task_rule_on_known_functions() -> None:
    m = 21
    x = two_tasks(grid_size=m, dtype=torch.float64).inputs.numpy()
    x1, x2 = x[:, 0], x[:, 1]
    values = np.stack([x1**2, np.sin(5 * x2), x1**2 + 0.1 * x2, x1 * x2], axis=1)
    total, v1, v2 = anova(values, m)
    tol = 1e-12  # the ANOVA of a product grid is exact: only round-off remains
    np.testing.assert_allclose(v1[:2] / total[:2], [1.0, 0.0], atol=tol)
    np.testing.assert_allclose(v2[:2] / total[:2], [0.0, 1.0], atol=tol)
    assert v1[2] > v2[2] > 0 and math.isclose(v1[2] + v2[2], total[2], rel_tol=tol)
    # x1·x2 on a symmetric grid: no main effect at all, pure interaction variance
    assert v1[3] < tol * total[3] and v2[3] < tol * total[3]


def _numbers(x: Any) -> list[float]:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    if isinstance(x, int | float):
        return [float(x)]
    if isinstance(x, dict):
        return [v for item in x.values() for v in _numbers(item)]
    return [v for item in x for v in _numbers(item)]


def test_quick_run_writes_results(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "modules_two_tasks.json").read_text())
    for png in ("two_tasks_ari.png", "two_tasks_graphs.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert result["settings"]["quick"] is True
    assert all(math.isfinite(v) for v in _numbers(result))
    rows = result["rows"]
    assert {(r["network"], r["basis"]) for r in rows} == {
        (n, b) for n in ("mixed", "dense") for b in BASES
    }
    for r in rows:
        assert 0 < r["assigned"] <= r["nodes"] and sum(r["modules"]) == r["assigned"]
        assert r["k2_method"] == ("exact" if r["nodes"] <= 16 else "spectral")
        assert 0 <= r["cross_task_share"] <= 1 and 0 <= r["misplaced"] <= 0.5
        assert 0 <= r["median_purity"] <= 1 + 1e-12
        for key in ("ari", "ari_k2"):
            assert r[key] is not None and -1 <= r[key] <= 1
        if r["network"] == "dense":
            assert r["train_loss"] >= 0 and r["test_loss"] >= 0
        else:
            assert r["mixing_gap"] < 1e-10
    assert len(result["table"]) == 2 * len(BASES)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
        (["--seeds", "1,1"], "--seeds must be distinct"),
        (["--threads", "0"], "--threads must be"),
    ],
)
def test_bad_cli_input_is_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
