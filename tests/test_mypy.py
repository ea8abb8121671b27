"""``audit/``, ``probes/`` and ``reports/`` type-check clean under the project's mypy config (issue 20).

The same check as ``make lint``: mypy with ``[tool.mypy]`` of pyproject.toml, sharing its
cache (``.mypy_cache``), so only a clean checkout pays for reading torch's types (about
20 s of CPU; transformers' are skipped, see pyproject.toml); a rerun takes a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "probes", "reports")

pytest.importorskip("mypy", reason="mypy is not installed (it comes with the dev extra: make setup)")


def test_mypy_clean() -> None:
    # in a process of its own: mypy raises the interpreter's recursion limit for good, which
    # would change what later tests in this process see (deeply nested input)
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / ".mypy_cache"), *(str(ROOT / p) for p in PACKAGES)],
        capture_output=True, text=True, cwd=ROOT,
    )
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    assert res.returncode == 0, f"mypy found {len(errors)} error(s):\n{res.stdout}{res.stderr}"
