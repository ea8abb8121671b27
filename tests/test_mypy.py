"""``audit/``, ``probes/`` and ``reports/`` type-check clean under the project's mypy config (issue 20).

The same check as ``make lint``: mypy with ``[tool.mypy]`` of pyproject.toml, sharing its
cache (``.mypy_cache``), so only a clean checkout pays for reading torch's types (about
20 s of CPU; transformers' are skipped, see pyproject.toml); a rerun takes a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "probes", "reports")

mypy_api = pytest.importorskip("mypy.api", reason="mypy is not installed (it comes with the dev extra: make setup)")


def test_mypy_clean() -> None:
    stdout, stderr, status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(ROOT / ".mypy_cache"),
        *(str(ROOT / p) for p in PACKAGES),
    ])
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert status == 0, f"mypy found {len(errors)} error(s):\n{stdout}{stderr}"
