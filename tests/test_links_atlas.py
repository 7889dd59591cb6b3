"""The atlas report: HTML + JSON of a --quick run, every number in both, atomic writes."""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from experiments import atlas_modadd
from interbasis.links import report as report_io
from interbasis.links.cli import atlas_command

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
PUNCT = "()[]{},;:'\""


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class _Text(HTMLParser):
    """Visible text of a page (attributes such as embedded images are not text)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def shown_numbers(html: str) -> list[str]:
    """Every word of the page's text that is a number (identifiers like ``blocks.0.ln1`` are
    words with letters and are not numbers)."""
    parser = _Text()
    parser.feed(html)
    words = " ".join(parser.parts).split()
    return [w.strip(PUNCT) for w in words if NUMBER.fullmatch(w.strip(PUNCT))]


def json_numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in json_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in json_numbers(v)]
    if isinstance(obj, str):  # settings shown as JSON text (nested dicts), or words of a text
        try:
            return json_numbers(json.loads(obj))
        except ValueError:
            words = (w.strip(PUNCT) for w in obj.split())
            return [float(w) for w in words if NUMBER.fullmatch(w)]
    return []


def assert_every_number_in_json(html: str, report: dict[str, Any]) -> int:
    """Every number on the page is a JSON value rounded as the page rounds (4 significant
    digits; integers exactly). Returns how many numbers the page shows."""
    values = np.array(json_numbers(report))
    shown = shown_numbers(html)
    for token in shown:
        t = float(token)
        tol = 0.5 * 10 ** (math.floor(math.log10(abs(t))) - 3) if t else 0.0
        assert np.any(np.abs(values - t) <= tol * (1 + 1e-9)), f"{token} is not in the JSON"
    return len(shown)


def test_the_number_check_can_fail() -> None:
    report = {"a": 0.123456, "b": [7, 1.5e-7]}
    page = "<table><tr><td>0.1235</td><td>7</td><td>1.5e-07</td></tr></table>"
    assert assert_every_number_in_json(page, report) == 3
    for wrong in ("0.1236", "8", "1.6e-07", "9.877e+05"):
        with pytest.raises(AssertionError, match="not in the JSON"):
            assert_every_number_in_json(page.replace("</table>", f"<p>{wrong}</p></table>"), report)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("atlas")
    assert atlas_modadd.main(["--quick", "--skip-rib", "--out", str(out)]) == 0
    return out


def test_quick_run_atlas_has_every_number_of_the_html_in_the_json(quick: Path) -> None:
    """Issue 12 test 4, on the experiment's --quick run."""
    html = (quick / "atlas_run" / "atlas.html").read_text()
    report = json.loads((quick / "atlas_run" / "atlas.json").read_text())
    n = assert_every_number_in_json(html, report)
    assert n > 150  # the page really shows the numbers (tables of the series, Hessian, ...)
    assert html.count("data:image/png;base64,") >= 5  # figures embedded: self-contained
    for section in ("settings", "series", "graph", "hessian", "dlr", "edge"):
        assert section in report
    assert report["settings"]["seed"] == 0 and report["settings"]["node_layers"]
    rows = report["series"]["rows"]
    assert [r["step"] for r in rows] == [0, 80, 120]
    assert all(r["graph_size"] > 0 and r["lambda_1"] > 0 for r in rows)
    assert report["edge"]["source"].startswith("spectral edge at step 120")
    block = report["hessian"]["block"]
    assert block["method"] == "dense" and block["trace"] == pytest.approx(
        sum(m["mass"] for m in block["mass"]), rel=1e-9
    )
    summary = json.loads((quick / "atlas_modadd.json").read_text())
    assert summary["series"]["rows"] == rows


def test_cli_atlas_of_the_run_and_the_checks(quick: Path, capsys: pytest.CaptureFixture) -> None:
    out = quick / "cli"
    argv = [str(quick / "run"), "--out", str(out), "--k", "2", "--random", "1",
            "--max-checkpoints", "2", "--hessian-samples", "64"]  # fmt: skip
    assert atlas_command(argv) == 0
    report = json.loads((out / "atlas.json").read_text())
    assert_every_number_in_json((out / "atlas.html").read_text(), report)
    assert [r["step"] for r in report["series"]["rows"]] == [0, 120]
    assert report["settings"]["target"] == str(quick / "run")
    assert "wrote" in capsys.readouterr().out


def test_cli_atlas_of_a_relu_mlp_run(tmp_path: Path) -> None:
    """An MLP run: every weight layer is a graph stage, the Hessian is dense (only the top
    and bottom k rows are listed, the masses use all P eigenpairs), the null space is
    attributed to the degeneracy mechanisms, the spectral edge tracks the weight matrices."""
    from experiments.train import TrainConfig, train

    cfg = TrainConfig(
        task="x2", model="mlp", d_hidden=[5, 5], act_fn="relu", n_samples=96, lr=1e-2,
        steps=20, eval_every=10, checkpoint_every=5, loss="mse", weight_decay=0.0,
        optimizer="adam", threads=1, progress=False,
    )  # fmt: skip
    train(cfg, tmp_path / "run")
    out = tmp_path / "report"
    argv = [str(tmp_path / "run"), "--out", str(out), "--k", "2", "--random", "1",
            "--max-checkpoints", "2", "--window", "3"]  # fmt: skip
    assert atlas_command(argv) == 0
    report = json.loads((out / "atlas.json").read_text())
    assert_every_number_in_json((out / "atlas.html").read_text(), report)
    assert report["settings"]["edge_params"] == r"(^|\.)weight$"
    assert report["edge"]["source"] == "spectral edge at step 20"
    h = report["hessian"]
    assert h["method"] == "dense" and len(h["stages"]) == 3  # layers.k -> acts.k / output
    n_params = 1 * 5 + 5 + 5 * 5 + 5 + 5 * 1 + 1
    assert h["block"]["n_params"] == n_params == h["null_space"]["n_params"]
    assert [r["eigenvector"] for r in h["full"]["rows"]] == [1, 2, n_params - 1, n_params]
    assert sum(m["mass"] for m in h["full"]["mass"]) == pytest.approx(h["block"]["trace"])
    assert h["full"]["sum_lambda"] == pytest.approx(h["block"]["trace"], rel=1e-9)
    null = h["null_space"]
    assert null["nullity"] >= 10  # at least one rescaling per hidden ReLU
    assert sum(m["dominates"] for m in null["mechanisms"]) == null["nullity"]
    assert (out / "atlas.json").stat().st_mode & 0o044  # readable like any written file


def test_cli_bad_inputs_leave_nothing_behind(quick: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert atlas_command([str(empty), "--out", str(tmp_path / "r1")]) == 1
    assert "no checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()  # the probe directory is removed again
    bare = tmp_path / "bare"  # no checkpoints/ folder and no checkpoint file either
    bare.mkdir()
    assert atlas_command([str(bare), "--out", str(tmp_path / "r1")]) == 1
    assert "no checkpoints in" in capsys.readouterr().err and not (tmp_path / "r1").exists()
    assert atlas_command([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r1")]) == 1
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "r1").exists()
    mixed = tmp_path / "mixed"
    shutil.copytree(quick / "run", mixed)
    spec = torch.load(mixed / "checkpoints" / "step_0000040.pt", weights_only=True)
    spec["model"]["config"]["d_mlp"] = 32
    torch.save(spec, mixed / "checkpoints" / "step_0000040.pt")
    assert atlas_command([str(mixed), "--out", str(tmp_path / "r2")]) == 1
    assert "step_0000040.pt (step 40) differs" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert atlas_command([str(quick / "run"), "--out", str(blocker / "report")]) == 1
    assert "not writable" in capsys.readouterr().err and blocker.read_text() == "x"


def test_write_files_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"settings": {"seed": 0}, "value": 1.5}
    out = tmp_path / "r"
    with pytest.raises(TypeError):  # not JSON-serialisable: nothing is created
        report_io.write_files(out, "<html></html>", {"bad": object()})
    assert not out.exists()
    calls = []
    real_replace = report_io.os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the JSON is in place, the HTML fails
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(report_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        report_io.write_files(out, "<html>1.5</html>", report)
    assert list(out.iterdir()) == []  # neither the JSON nor a temporary file is left
    monkeypatch.setattr(report_io.os, "replace", real_replace)
    html_path, json_path = report_io.write_files(out, "<html>1.5</html>", report)
    assert json.loads(json_path.read_text()) == report and html_path.read_text().endswith("</html>")
    nan_report = {"x": math.nan, "y": [1.0, math.inf]}
    _, json_path = report_io.write_files(out, "<html></html>", nan_report)
    assert json.loads(json_path.read_text()) == {"x": None, "y": [1.0, None]}  # strict JSON


@pytest.mark.slow
def test_quick_experiment_with_the_rib_atlas(tmp_path: Path) -> None:
    """The whole --quick experiment, the shipped checkpoint's atlas included."""
    assert atlas_modadd.main(["--quick", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "atlas_rib" / "atlas.html").read_text()
    report = json.loads((tmp_path / "atlas_rib" / "atlas.json").read_text())
    assert_every_number_in_json(html, report)
    assert report["edge"]["source"].startswith("top Hessian eigenvectors")
    assert report["hessian"]["stages"] == ["unembed -> output"]
