"""experiments: bad configs, missing optional packages and failed self-checks give clear errors.

Issue 19: each ``raise`` of the experiment helpers is triggered here through the function a
script or a user calls, and the message is checked to name the argument, file or package.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from experiments import dlr_grokking, modules_two_tasks, text_corpus
from experiments.digits_richness import load_data
from experiments.minilm_graph import load_minilm
from experiments.mlp import MLP, MLPConfig
from experiments.modadd_graph import capture_inputs
from experiments.models import build_model, model_spec
from experiments.seed001_model import Seed001Config, Seed001Transformer
from experiments.tasks import (
    modular_inverse,
    modular_task,
    modular_task_from_rib_config,
    regression_task,
    two_tasks,
)
from experiments.train import TrainConfig, train
from interbasis.errors import DataError, FormatError, NodeLayerError

RIB = {"fn_name": "add", "modulus": 5, "frac_train": 0.5, "seed": 0}

TASK_CASES = [
    ("batches-zero", lambda: list(modular_task("add", 5).batches(batch_size=0)),
     r"batch_size must be >= 1 \(an int\), got 0"),
    ("batches-str", lambda: list(modular_task("add", 5).batches(batch_size="8")),
     r"batch_size must be >= 1 \(an int\), got '8'"),
    ("inverse", lambda: modular_inverse(2, 4), r"2 has no inverse modulo 4"),
    ("rib-fn-name", lambda: modular_task_from_rib_config({**RIB, "fn_name": "mul"}),
     r"rib fn_name 'mul' is not supported; expected \['add', 'subtract'\]"),
    ("rib-not-mapping", lambda: modular_task_from_rib_config(["add"]),
     r"rib dataset config must be a mapping, got list"),
    ("rib-missing-modulus", lambda: modular_task_from_rib_config({"fn_name": "add"}),
     r"rib dataset config: 'modulus' must be an int, got None"),
    ("rib-float-modulus", lambda: modular_task_from_rib_config({**RIB, "modulus": 5.5}),
     r"rib dataset config: 'modulus' must be an int, got 5.5"),
    ("rib-frac-train", lambda: modular_task_from_rib_config({**RIB, "frac_train": "half"}),
     r"rib dataset config: 'frac_train' must be a number, got 'half'"),
    ("regression-n", lambda: regression_task(n=0), r"n must be >= 1 \(an int\), got 0"),
    ("regression-n-float", lambda: regression_task(n=10.5), r"n must be >= 1 \(an int\), got 10.5"),
    ("two-tasks-n", lambda: two_tasks(n=0), r"n must be >= 1 \(an int\), got 0"),
    ("two-tasks-grid", lambda: two_tasks(grid_size=1), r"grid_size must be >= 2 \(an int\), got 1"),
    ("seed001-config", lambda: Seed001Config(d_model=0),
     r"Seed001Config.d_model must be a positive int, got 0"),
    ("build-model", lambda: build_model({"kind": "mlp"}),
     r"build_model needs a TransformerConfig, Seed001Config or MLPConfig, got dict"),
    ("model-spec", lambda: model_spec(nn.Linear(2, 2)),
     r"model_spec needs a Transformer, Seed001Transformer or MLP, got Linear"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "match"), [c[1:] for c in TASK_CASES], ids=[c[0] for c in TASK_CASES]
)
def test_task_and_model_helpers_reject_bad_inputs(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_mlp_config_unknown_key_is_a_format_error():
    with pytest.raises(FormatError, match=r"unknown MLP config keys \['width'\]; known: "):
        MLPConfig.from_dict({"d_in": 1, "d_out": 1, "width": 3})


def test_rib_config_still_builds_its_task():
    task = modular_task_from_rib_config({**RIB, "fn_name": "subtract", "modulus": 7})
    assert task.info["p"] == 7 and task.info["op"] == "sub"


def test_seed001_parameter_without_init_rule_fails_loudly():
    model = Seed001Transformer(Seed001Config(d_vocab=5, n_ctx=3, n_layers=1, d_model=4,
                                             n_heads=1, d_mlp=4, seed=0))  # fmt: skip
    model.extra = nn.Parameter(torch.zeros(2))
    with pytest.raises(AssertionError, match=r"no initialisation rule for parameter extra"):
        model.init_weights()


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Bilinear(2, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x, x)


def test_capture_inputs_names_the_module():
    x = torch.randn(4, 2)
    with pytest.raises(DataError, match=r"module 'mix' takes 2 tensor inputs"):
        capture_inputs(_TwoInputs(), x, ["mix"])
    with pytest.raises(NodeLayerError, match=r"\['nowhere'\] are not modules of the model"):
        capture_inputs(_TwoInputs(), x, ["nowhere", "output"])
    got = capture_inputs(MLP(MLPConfig(d_in=2, d_hidden=[3], d_out=1)), x, ["output"])
    assert got["output"].shape == (4, 1) and got["output"].dtype == torch.float64


# ---------------------------------------------------------------------------------- optional
def test_missing_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    with pytest.raises(DataError, match=r"digits_richness needs scikit-learn: pip install"):
        load_data()


def test_missing_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"minilm_graph needs transformers: pip install"):
        load_minilm()


def _fake_find_spec(monkeypatch, specs: dict[str, Any]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return specs[name] if name in specs else real(name, *args)

    monkeypatch.setattr(text_corpus.importlib.util, "find_spec", find_spec)


def test_minilm_weights_not_installed(monkeypatch):
    _fake_find_spec(monkeypatch, {text_corpus.MINILM_PACKAGE: None})
    with pytest.raises(text_corpus.CorpusError, match=r"MiniLM weights are not installed: pip"):
        text_corpus.minilm_dir()


def _package(root: Path, files: tuple[str, ...]) -> types.SimpleNamespace:
    (root / "model").mkdir()
    for name in files:
        (root / "model" / name).write_text("")
    return types.SimpleNamespace(submodule_search_locations=[str(root)])


def test_minilm_weights_incomplete(monkeypatch, tmp_path):
    _fake_find_spec(
        monkeypatch, {text_corpus.MINILM_PACKAGE: _package(tmp_path, ("tokenizer.json",))}
    )
    with pytest.raises(text_corpus.CorpusError, match=r"lacks \['model.safetensors'\]; reinstall"):
        text_corpus.minilm_dir()


def test_tokenizers_not_installed(monkeypatch, tmp_path):
    package = _package(tmp_path, ("model.safetensors", "tokenizer.json"))
    _fake_find_spec(monkeypatch, {text_corpus.MINILM_PACKAGE: package, "tokenizers": None})
    with pytest.raises(text_corpus.CorpusError, match=r"the tokenizers package is missing"):
        text_corpus.load_tokenizer()


# ---------------------------------------------------------------------------------- runs
def test_dlr_records_of_a_run_without_tracker(tmp_path):
    cfg = TrainConfig(task="x2", model="mlp", d_hidden=[3], act_fn="tanh", loss="mse",
                      weight_decay=0.0, steps=2, eval_every=1, n_samples=8, threads=1,
                      progress=False)  # fmt: skip
    train(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no richness.jsonl and no RichnessTracker state"):
        dlr_grokking.load_records(tmp_path)


def test_two_tasks_mixing_self_check(monkeypatch, tmp_path):
    real = modules_two_tasks.mixed_disconnected_net

    def broken(width: int, depth: int, seed: int, mix: bool = True) -> nn.Module:
        net = real(width, depth, seed, mix)
        if mix:  # a mixing that is not undone by the next layer changes the function
            with torch.no_grad():
                net.layers[-1].bias.add_(1.0)
        return net

    monkeypatch.setattr(modules_two_tasks, "mixed_disconnected_net", broken)
    with pytest.raises(RuntimeError, match=r"mixing changed the function by 1 \(seed 0\)"):
        modules_two_tasks.main(["--quick", "--out", str(tmp_path / "out")])
