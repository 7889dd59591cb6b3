"""The deep-Jacobian-spectra experiment runs end to end in --quick mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys


def test_quick_run_writes_results(tmp_path) -> None:
    out = tmp_path / "js"
    subprocess.run(
        [sys.executable, "-m", "experiments.jacobian_spectra", "--quick", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert any(f.endswith(".png") for f in files), files
    results = [p for p in out.rglob("*.json")]
    assert results, files
    data = json.loads(results[0].read_text())

    def finite_numbers(x: object) -> list[float]:
        if isinstance(x, dict):
            return [v for y in x.values() for v in finite_numbers(y)]
        if isinstance(x, list):
            return [v for y in x for v in finite_numbers(y)]
        return [float(x)] if isinstance(x, (int, float)) and not isinstance(x, bool) else []

    numbers = finite_numbers(data)
    assert len(numbers) > 10 and any(math.isfinite(v) and v != 0 for v in numbers)
