"""The documentation: every ```python block in docs/*.md runs as written (each page's blocks in
one process) and prints the figures the page cites; the API reference covers every public name;
the site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# design.md sketches the API (DESIGN §5) rather than running it
PAGES = sorted(
    p for p in DOCS.glob("*.md") if p.name != "design.md" and BLOCK.search(p.read_text())
)
# a number not glued to a word ("top-3" gives 3, "float64" and "g23" give nothing)
NUMBER = re.compile(r"(?<![\w.])(?:[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan)")


def line(out: str, prefix: str) -> str:
    """The first printed line starting with ``prefix`` (stripped of leading blanks)."""
    for text in out.splitlines():
        if text.strip().startswith(prefix):
            return text.strip()
    raise AssertionError(f"no line starting with {prefix!r} in:\n{out}")


def numbers(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(text)]


def close(got: list[float], want: list[float], rel: float = 0.02, abs_: float = 0.0) -> None:
    assert got == pytest.approx(want, rel=rel, abs=abs_), (got, want)


# Figures each page's example prints. Counts (nodes, edges, nullities) are exact; measured
# floats get 2 % (seeded and float64: the runs reproduce to the printed digits, the slack is for
# BLAS differences between machines); statistical claims are checked as the page states them.


def _concepts(out: str) -> None:
    assert line(out, "edges for 90 %").endswith("[2, 2, 2]")
    assert numbers(line(out, "0 interaction"))[:2] == [0, 4]
    assert numbers(line(out, "2 interaction"))[:2] == [2, 9]
    close(numbers(line(out, "output neuron nodes")), [2, 0.0205, 0.0052])


def _curvature(out: str) -> None:
    close(numbers(line(out, "sharpness")), [2, 0.063, 0.057, 0.062])  # "sharpness·lr/2: [...]"
    tr, est, se = numbers(line(out, "tr H"))
    close([tr], [17.312], rel=1e-3)
    assert abs(est - tr) < 4 * se  # Hutchinson within 4 standard errors
    # K ⊗ G is exact for the linear output layer (seed 004 eq. 37)
    assert numbers(line(out, "2 K⊗G")) == [2, 0.0, 3, 1.0]
    close(numbers(line(out, "0 K⊗G"))[1:], [0.368, 3, 0.666])
    freq = numbers(line(out, "frequency of the top 3"))
    top, bottom = freq[2:5], freq[-3:]  # the line starts with "top 3 / bottom 3"
    assert max(top) < min(bottom), freq  # low-curvature modes oscillate more (seed 000)


def _degeneracy(out: str) -> None:
    assert numbers(line(out, "predicted nullity"))[0] == 16
    assert numbers(line(out, "measured nullity"))[0] == 16
    assert "eq. 22 sum s^2 = 7" in line(out, "1: 5 neurons")


def _experiments(out: str) -> None:
    assert line(out, "rib checkpoint").endswith("train split 100.00%")
    assert line(out, "resumed at") == "resumed at 40 finished at 60"


def _getting_started(out: str) -> None:
    assert line(out, "nodes per layer") == "nodes per layer: [5, 17, 3, 2]"
    assert line(out, "edges for 90 %").endswith("[5, 3, 2]")
    assert line(out, "module sizes") == "module sizes: (8, 6)"
    assert line(out, "output").endswith("modules [1, 0]")  # one module per output
    assert numbers(line(out, "training loss"))[0] < 1e-3


def _graphs(out: str) -> None:
    assert line(out, "InteractionGraph(").endswith("288 edges)")
    assert line(out, "edges for 90 %") == "edges for 90 %: [57, 57]"


def _interaction_graph(out: str) -> None:
    assert line(out, "[") == "[5, 9, 4, 3] [12, 9, 5]"
    assert line(out, "module sizes") == "module sizes: (9, 8)"


def _jacobian_spectra(out: str) -> None:
    qr = numbers(line(out, "QR estimate"))
    est, se = qr[:3], qr[3:]
    theory = numbers(line(out, "masked theory"))
    # the masked-Gaussian closed form is within 3 standard errors of the QR estimate
    assert all(abs(e - t) < 3 * s for e, t, s in zip(est, theory, se, strict=True)), qr
    close(theory, [-0.0413, -0.0772, -0.1161], rel=1e-3)
    assert numbers(line(out, "median sigma1/sigma2"))[-1] > 10


def _links(out: str) -> None:
    assert line(out, "stages:").endswith("modules: (8, 8)")  # find_modules, method="auto"
    close(numbers(line(out, "{'module 0'"))[-4:-2], [8.4093, 0.0186], rel=1e-3)  # between
    masses = numbers(line(out, "sum of masses"))
    assert masses[0] == pytest.approx(masses[1], rel=1e-9)  # curvature masses add to tr H
    close([masses[1]], [42.263982], rel=1e-4)
    assert "atlas.html" in line(out, "['atlas.html'")


def _modules(out: str) -> None:
    first = numbers(line(out, "(24, 20, 20)"))
    assert first[-1] == 1.0  # planted modules recovered: ARI 1
    assert numbers(line(out, "spectral ARI")) == [1.0]
    assert numbers(line(out, "null model z"))[0] > 3  # more modular than chance
    assert numbers(line(out, "stability")) == [1.0]


def _richness(out: str) -> None:
    rich = numbers(line(out, "rich:"))
    lazy = numbers(line(out, "lazy:"))
    close(rich, [0.0, 0.066, 9.3, 0.997], abs_=1e-3)
    close(lazy, [0.351, 0.363, 59.9, 0.562])
    assert rich[0] < lazy[0]  # the rich network's features are its outputs


def _spectral_edge(out: str) -> None:
    sigma = numbers(line(out, "sigma:"))
    assert sigma[:5] == sorted(sigma[:5], reverse=True)
    assert line(out, "sigma:").split("k* = ")[1].startswith("5 ")
    assert numbers(line(out, "gradient share"))[0] > 0.99


CHECKS: dict[str, Callable[[str], None]] = {
    "concepts": _concepts,
    "curvature": _curvature,
    "degeneracy": _degeneracy,
    "experiments": _experiments,
    "getting_started": _getting_started,
    "graphs": _graphs,
    "interaction_graph": _interaction_graph,
    "jacobian_spectra": _jacobian_spectra,
    "links": _links,
    "modules": _modules,
    "richness": _richness,
    "spectral_edge": _spectral_edge,
}


def test_every_capability_page_has_an_example() -> None:
    assert len(PAGES) >= 8, [p.name for p in PAGES]


def test_every_example_checks_a_figure() -> None:
    """A page's example is checked here (CHECKS) or asserts its own results."""
    unchecked = [
        p.name
        for p in PAGES
        if p.stem not in CHECKS and "assert " not in "".join(BLOCK.findall(p.read_text()))
    ]
    assert not unchecked, f"add a check to CHECKS in tests/test_docs.py for {unchecked}"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_docs_examples_run(page: Path, tmp_path: Path) -> None:
    code = "\n\n".join(BLOCK.findall(page.read_text()))
    script = tmp_path / f"docs_example_{page.stem}.py"  # not named like a package
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-3000:]}"
    if page.stem in CHECKS:
        CHECKS[page.stem](result.stdout)


def test_line_and_numbers_helpers() -> None:
    out = "a: 1\n  tr H = 17.312, Hutchinson 15.639 ± 1.958\nΛ [  nan 0.5 -1e-3] top-3 float64"
    assert numbers(line(out, "tr H")) == [17.312, 15.639, 1.958]
    got = numbers(line(out, "Λ"))
    assert got[0] != got[0] and got[1:] == [0.5, -1e-3, 3]  # nan; "float64" is no number
    with pytest.raises(AssertionError, match="no line starting with 'b:'"):
        line(out, "b:")


# --- the API reference (docs/api/*.md, rendered by mkdocstrings) ---

PUBLIC_PACKAGES = {
    "interbasis": "interbasis/__init__.py",
    "graphs": "graphs/__init__.py",
    "interbasis.curvature": "interbasis/curvature/__init__.py",
    "interbasis.richness": "interbasis/richness/__init__.py",
    "interbasis.spectral_edge": "interbasis/spectral_edge/__init__.py",
    "interbasis.jacobian_spectra": "interbasis/jacobian_spectra/__init__.py",
    "interbasis.degeneracy": "interbasis/degeneracy/__init__.py",
    "interbasis.links": "interbasis/links/__init__.py",
    "interbasis.ablation": "interbasis/ablation/__init__.py",
}
# documented in prose on docs/api/interbasis.md rather than by a directive of their own
NOT_RENDERED = {"interbasis.__version__", "interbasis.degeneracy"}


def _all_names(path: Path) -> list[str]:
    """``__all__`` of a module, read without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError(f"{path} has no __all__")


def test_api_reference_documents_every_public_name() -> None:
    directives = {
        m.group(1)
        for page in (DOCS / "api").glob("*.md")
        for m in re.finditer(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)
    }
    public = {
        f"{pkg}.{name}" for pkg, init in PUBLIC_PACKAGES.items() for name in _all_names(ROOT / init)
    }
    missing = sorted(public - directives - NOT_RENDERED)
    assert not missing, f"add `::: NAME` to a docs/api/*.md page for {missing}"
    unknown = sorted(d for d in directives - public if d not in PUBLIC_PACKAGES)
    assert not unknown, f"docs/api/ documents names that are not public: {unknown}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs / mkdocstrings not installed (pip install -e '.[docs]')",
)
def test_site_builds_strict(tmp_path: Path) -> None:
    """No broken link, no page missing from disk, no docstring griffe cannot parse."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [t for t in result.stderr.splitlines() if "WARNING" in t]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or result.stderr[-3000:]
    assert (tmp_path / "api" / "interbasis" / "index.html").is_file()
    assert (tmp_path / "getting_started" / "index.html").is_file()
