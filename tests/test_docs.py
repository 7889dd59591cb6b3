"""Every ```python block in docs/*.md runs as written (each page's blocks in one process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# design.md sketches the API (DESIGN §5) rather than running it
PAGES = sorted(
    p for p in DOCS.glob("*.md") if p.name != "design.md" and BLOCK.search(p.read_text())
)


def test_every_capability_page_has_an_example() -> None:
    assert len(PAGES) >= 8, [p.name for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_docs_examples_run(page: Path, tmp_path: Path) -> None:
    code = "\n\n".join(BLOCK.findall(page.read_text()))
    script = tmp_path / f"docs_example_{page.stem}.py"  # not named like a package
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-3000:]}"
