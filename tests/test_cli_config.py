"""`--config FILE.yaml` for every command: resolved config.yaml, reruns, overrides, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from graphs import InteractionGraph, NodeLayer
from interbasis.cli import RIB_LAYERS, _apply_config, _subparsers, main


@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT, task_for_checkpoint

    path = tmp_path_factory.mktemp("data") / "inputs.pt"
    torch.save(task_for_checkpoint(RIB_MODADD_CHECKPOINT).train_inputs[:200].clone(), path)
    return path


def _same_graph(a: InteractionGraph, b: InteractionGraph) -> None:
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    for u, v in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(u.eigenvalues, v.eigenvalues)
        np.testing.assert_array_equal(u.activation_variance, v.activation_variance)
    for x, y in zip(a.edges, b.edges, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.modules is not None and b.modules is not None
    for x, y in zip(a.modules, b.modules, strict=True):
        np.testing.assert_array_equal(x, y)


def test_graph_run_config_rerun_identical(inputs_file: Path, tmp_path: Path) -> None:
    """run -> config.yaml -> `graph --config` (with --out overriding it) -> identical graph."""
    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT

    first, second = tmp_path / "first", tmp_path / "second"
    code = main(["graph", str(RIB_MODADD_CHECKPOINT), "--layers", *RIB_LAYERS[1:], "--data",
                 str(inputs_file), "--out", str(first), "--quiet"])  # fmt: skip
    assert code == 0
    cfg = yaml.safe_load((first / "config.yaml").read_text())
    assert cfg["layers"] == RIB_LAYERS[1:] and cfg["data"] == str(inputs_file)
    assert cfg["out"] == str(first) and cfg["basis"] == "interaction" and cfg["no_modules"] is False
    assert main(["graph", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    _same_graph(
        InteractionGraph.load(first / "graph.npz"), InteractionGraph.load(second / "graph.npz")
    )
    again = yaml.safe_load((second / "config.yaml").read_text())
    assert again == {**cfg, "out": str(second)}
    assert (second / "graph.html").stat().st_size > 10_000


def test_config_supplies_options_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("checkpoint: ck.pt\nlayers: [a, output]\nbasis: pca\nbatch-size: 7\n")
    _, subs = _subparsers()
    args = _apply_config(subs["graph"], ["--config", str(path), "--out", "o", "--basis", "neuron"],
                         "graph")  # fmt: skip
    assert (args.checkpoint, args.layers, args.batch_size) == ("ck.pt", ["a", "output"], 7)
    assert args.basis == "neuron" and args.out == "o"  # the command line wins
    _, subs = _subparsers()
    args = _apply_config(subs["graph"], ["other.pt", "--config", str(path)], "graph")
    assert args.checkpoint == "other.pt" and args.basis == "pca"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layers: [a]\nlayer_count: 3\n", "unknown key 'layer_count'"),
        ("basis: bogus\n", "'basis' must be one of"),
        ("batch_size: many\n", "'batch_size' must be of type int"),
        ("no_modules: maybe\n", "'no_modules' must be true or false"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["graph", "--config", str(path), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_missing_required_option_names_the_key(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["graph", "ck.pt", "--out", str(tmp_path / "o")])
    assert "layers is required (on the command line or as 'layers' in --config)" in (
        capsys.readouterr().err
    )


def test_failed_graph_leaves_no_output_directory(inputs_file: Path, tmp_path: Path, capsys) -> None:
    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT

    out = tmp_path / "deep" / "e"
    code = main(["graph", str(RIB_MODADD_CHECKPOINT), "--layers", "blocks.0.ln9", "output",
                 "--data", str(inputs_file), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 1 and "unknown node layer 'blocks.0.ln9'" in capsys.readouterr().err
    assert not out.exists() and not out.parent.exists()


def _small_graph() -> InteractionGraph:
    def layer(name: str, n: int) -> NodeLayer:
        lam = np.linspace(3.0, 1.0, n)
        return NodeLayer(name, n, lam, np.zeros(n, bool), lam / 2)

    rng = np.random.default_rng(0)
    g = InteractionGraph([layer("a", 4), layer("b", 3)], [rng.random((3, 4))], {"title": "t"})
    return g.with_modules({"a:0": 0, "b:0": 0, "a:1": 1, "b:1": 1})


def test_view_command_and_its_config(tmp_path: Path) -> None:
    graph = _small_graph()
    graph.save(tmp_path / "g.npz")
    out = tmp_path / "views" / "g.html"
    assert main(["view", str(tmp_path / "g.npz"), "--out", str(out), "--fraction", "0.5"]) == 0
    cfg_path = out.with_name("g.config.yaml")
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg == {"graph_file": str(tmp_path / "g.npz"), "out": str(out), "title": None,
                   "fraction": 0.5}  # fmt: skip
    page = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="ib-data">(.*?)</script>', page, re.S)[1])  # type: ignore[index]
    assert data["nodes"]["module"] == [0, 1, -1, -1, 0, 1, -1]  # modules from the file
    out.unlink()
    assert main(["view", "--config", str(cfg_path)]) == 0
    assert out.read_text(encoding="utf-8") == page


@pytest.mark.parametrize("suffix", [".graphml", ".gexf", ".json", ".np.json"])
def test_view_reads_every_graph_file(tmp_path: Path, suffix: str) -> None:
    import graphs

    graph = _small_graph()
    path = tmp_path / f"g{suffix}"
    writers = {".graphml": graphs.write_graphml, ".gexf": graphs.write_gexf,
               ".json": graphs.write_json, ".np.json": graphs.write_neuronpedia_json}  # fmt: skip
    writers[suffix](graph, path)
    assert main(["view", str(path), "--out", str(tmp_path / "v.html")]) == 0
    page = (tmp_path / "v.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="ib-data">(.*?)</script>', page, re.S)[1])  # type: ignore[index]
    assert data["nodes"]["module"] == [0, 1, -1, -1, 0, 1, -1]
    assert data["nodes"]["lam"][0] == 3.0 and len(data["pairs"][0]["w"]) == 12


def test_view_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit, match="not found"):
        main(["view", str(tmp_path / "none.npz")])
    (tmp_path / "g.txt").write_text("x")
    assert main(["view", str(tmp_path / "g.txt")]) == 1
    assert "graph files end in .npz" in capsys.readouterr().err


def test_train_config_flags_and_resolved_config(tmp_path: Path) -> None:
    """YAML -> flags before the user's (last wins); config.yaml = the run's full TrainConfig,
    and training again from it gives the same run."""
    path = tmp_path / "train.yaml"
    path.write_text("quick: true\nsteps: 6\neval_every: 3\nno_progress: true\nbetas: [0.9, 0.95]\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--steps", "4"]) == 0
    run_cfg = json.loads((out / "run.json").read_text())["config"]
    assert run_cfg["steps"] == 4 and run_cfg["betas"] == [0.9, 0.95]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["out"] == str(out) and resolved["no_progress"] is True
    assert {k: resolved[k] for k in run_cfg if k != "progress"} == {
        k: v for k, v in run_cfg.items() if k != "progress"
    }
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    assert json.loads((again / "run.json").read_text())["config"] == run_cfg
    a = (out / "metrics.jsonl").read_text().splitlines()
    b = (again / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if "time" not in k} for x in a]
    assert strip == [{k: v for k, v in json.loads(x).items() if "time" not in k} for x in b]


def test_train_and_atlas_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(SystemExit, match="unknown key 'stepz'.*interbasis train"):
        main(["train", "--config", str(path), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="unknown key 'stepz'.*interbasis atlas"):
        main(["atlas", "--config", str(path), "--out", str(tmp_path / "a")])
    assert not (tmp_path / "r").exists() and not (tmp_path / "a").exists()


def test_atlas_target_from_config(tmp_path: Path, capsys) -> None:
    path = tmp_path / "atlas.yaml"
    path.write_text(f"target: {tmp_path / 'missing'}\nout: {tmp_path / 'a'}\nk: 3\n")
    assert main(["atlas", "--config", str(path)]) == 1
    assert "missing" in capsys.readouterr().err and not (tmp_path / "a").exists()


@pytest.mark.slow
def test_atlas_config_is_resolved_and_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--quick", "--steps", "40", "--no-progress", "--out", str(run)]) == 0
    path = tmp_path / "atlas.yaml"
    path.write_text(f"target: {run}\nk: 2\nhessian_samples: 64\nmax_checkpoints: 2\nrandom: 2\n")
    out = tmp_path / "atlas"
    assert main(["atlas", "--config", str(path), "--out", str(out), "--k", "3"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["target"] == str(run) and cfg["out"] == str(out)
    assert (cfg["k"], cfg["hessian_samples"], cfg["random"], cfg["seed"]) == (3, 64, 2, 0)
    assert json.loads((out / "atlas.json").read_text())["settings"]["k"] == 3
