"""The test suite itself: what it needs is required (a missing test dependency is an error, not a
quiet skip), and it stands on the package alone (benchmarks are not imported by tests)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_the_serve_suite_errors_when_openai_is_missing(tmp_path):
    # For one collection run, `openai` is missing: a package in front of the real one says it is not there.
    (tmp_path / "openai").mkdir()
    (tmp_path / "openai" / "__init__.py").write_text("raise ModuleNotFoundError('openai hidden by the test', name='openai')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(TESTS / "serve" / "test_server.py")],
                          capture_output=True, text=True, cwd=TESTS.parent, env=env, timeout=300)
    assert done.returncode not in (0, 5), done.stdout  # 5: nothing collected, as a module-level skip gives
    assert "openai hidden by the test" in done.stdout and "skipped" not in done.stdout, done.stdout


def test_no_test_imports_from_bench():
    offenders = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(TESTS)}: {n}" for n in names if n == "bench" or n.startswith("bench.")]
    assert not offenders, offenders
