"""The atlas report: HTML + JSON of a --quick run, every number in both, atomic writes."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments import atlas_modadd
from interbasis.links import report as report_io
from interbasis.links.cli import atlas_command

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
PUNCT = "()[]{},;:'\""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    if isinstance(obj, str):  # settings shown as JSON text (e.g. nested dicts)
        try:
            return json_numbers(json.loads(obj))
        except ValueError:
            return []
    return []


def assert_every_number_in_json(html: str, report: dict[str, Any]) -> int:
    values = json_numbers(report)
    shown = shown_numbers(html)
    for token in shown:
        t = float(token)
        digits = len(token.lower().split("e")[0].lstrip("+-").replace(".", "").lstrip("0"))
        tol = 0.5 * 10 ** (1 - max(digits, 1)) * abs(t) if t else 0.0  # the shown precision
        assert any(abs(v - t) <= tol + 1e-300 for v in values), f"{token} is not in the JSON"
    return len(shown)


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


def test_cli_bad_inputs_leave_nothing_behind(quick: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert atlas_command([str(empty), "--out", str(tmp_path / "r1")]) == 1
    assert "no checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()  # the probe directory is removed again
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
