"""Which ``raise`` statements in interbasis/, graphs/ and experiments/ does no test trigger?

Run:  python benchmarks/raise_coverage.py [--data FILE] [--list] [pytest args ...]

Runs the default test suite (``pytest``, which excludes ``slow``) under ``coverage`` (with
subprocesses followed, so the CLI tests count), finds every ``raise`` statement of the three
packages with :mod:`ast`, and prints how many were never executed, per file, and with
``--list`` each one as ``path:line``. ``--data FILE`` reuses a coverage data file from an
earlier run instead of running the suite again (the suite takes minutes). A ``raise`` counts
as triggered when its first line ran. Bare re-raises (``raise`` in an ``except``) are counted
separately, since they only pass on an error raised elsewhere.

Needs ``coverage`` (a dev dependency). Issue 19 asks for fewer than 60 untriggered raises.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("interbasis", "graphs", "experiments")


def raise_lines(path: Path) -> tuple[list[int], list[int]]:
    """Line numbers of ``raise X`` statements and of bare ``raise`` statements in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    raises = [n for n in ast.walk(tree) if isinstance(n, ast.Raise)]
    return (
        sorted(n.lineno for n in raises if n.exc is not None),
        sorted(n.lineno for n in raises if n.exc is None),
    )


def run_suite(data_file: Path, pytest_args: list[str]) -> int:
    """Run pytest under coverage (subprocesses too) and combine the data into ``data_file``."""
    rc_file = data_file.parent / "coveragerc"  # not ".coverage.*": combine would read it
    rc_file.write_text(
        "[run]\n"
        f"source = {', '.join(PACKAGES)}\n"
        "parallel = true\n"
        "patch = subprocess\n"
        f"data_file = {data_file}\n"
    )
    env = {**os.environ, "COVERAGE_RCFILE": str(rc_file)}
    cmd = [sys.executable, "-m", "coverage", "run", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    code = subprocess.call(cmd + pytest_args, cwd=ROOT, env=env)
    subprocess.check_call([sys.executable, "-m", "coverage", "combine", "-q"], cwd=ROOT, env=env)
    return code


def untriggered(data_file: Path) -> tuple[dict[str, list[int]], int, int, int]:
    """Per file the untriggered ``raise X`` lines; totals of ``raise X``, bare, bare untriggered."""
    import coverage

    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    missing: dict[str, list[int]] = {}
    total = bare_total = bare_missing = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines, bare = raise_lines(path)
            executed = set(data.lines(str(path)) or ())
            total += len(lines)
            bare_total += len(bare)
            bare_missing += sum(line not in executed for line in bare)
            never = [line for line in lines if line not in executed]
            if never:
                missing[str(path.relative_to(ROOT))] = never
    return missing, total, bare_total, bare_missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="coverage data file of an earlier run")
    parser.add_argument("--list", action="store_true", help="print every untriggered raise")
    args, pytest_args = parser.parse_known_args()
    if args.data is None:
        args.data = Path(tempfile.mkdtemp(prefix="raise_coverage_")) / ".coverage"
        code = run_suite(args.data, pytest_args)
        print(f"pytest exit code {code}; coverage data in {args.data}")
    missing, total, bare_total, bare_missing = untriggered(args.data)
    n_missing = sum(len(v) for v in missing.values())
    for path, lines in sorted(missing.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(lines):4d}  {path}")
        if args.list:
            print("".join(f"        {path}:{line}\n" for line in lines), end="")
    print(f"untriggered raise statements: {n_missing} of {total} (packages: {', '.join(PACKAGES)})")
    print(f"bare re-raises (not counted above): {bare_missing} of {bare_total} untriggered")


if __name__ == "__main__":
    main()
