"""Session fixtures: organisms are trained once per test run and shared.

``AUDIT_TEST_SUITE_DIR`` may point at a folder to keep the suite between runs while
developing (``build_suite`` reuses it only if its config key matches); by default the
suite is trained afresh into the session's temp folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one torch / BLAS thread each (and in
    # the processes they start), or the workers' thread pools spin against each other and
    # training slows many-fold
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["AUDIT_CACHE"] = str(tmp_path_factory.mktemp("audit_cache"))


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> Path:
    from audit.lab.organisms import SuiteConfig, build_suite

    d = os.environ.get("AUDIT_TEST_SUITE_DIR")
    path = Path(d) if d else tmp_path_factory.mktemp("suite")
    build_suite(path, SuiteConfig(seed=0))
    return path


@pytest.fixture(scope="session")
def manifest(suite) -> dict:
    import json

    return json.loads((suite / "manifest.json").read_text())


@pytest.fixture(scope="session")
def base_model(suite):
    from audit.models import load_model

    return load_model(suite / "base", "base")


def audit_run_args(suite: Path, out: Path, unlearned: str = "head_only", lenses: str = "behavior", **extra) -> list[str]:
    """``audit run`` arguments for an organism of ``suite`` (B = base, N = reference_a)."""
    a = ["run", "--base", str(suite / "base"), "--unlearned", str(suite / unlearned),
         "--reference", str(suite / "reference_a"), "--forget", str(suite / "forget.jsonl"),
         "--retain", str(suite / "retain.jsonl"), "--out", str(out), "--lenses", lenses]
    for k, v in extra.items():
        a += [f"--{k.replace('_', '-')}", str(v)]
    return a


@pytest.fixture(scope="session")
def run_args():
    """The :func:`audit_run_args` builder, for tests that invoke the CLI."""
    return audit_run_args
