"""Imports run one way (issue 20): ``cli.py → audit → probes``, and ``reports`` reads results files only.

- importing the library (``audit`` and its entry points) loads no ``reports`` module, and no
  file under ``audit/`` or ``probes/`` imports ``reports``, even inside a function;
- importing ``reports`` loads no ``torch``;
- no import cycle among the modules of ``audit``, ``probes`` and ``reports`` at import time,
  and no new one through deferred (function-level) imports;
- the organism lab (``audit.lab``) depends on the core, never the other way: no module of the
  core (``audit`` outside ``audit/lab/``, ``probes``, ``reports``) imports ``audit.lab``, even
  inside a function, and importing the library loads no ``audit.lab`` module.

Each import check runs in a fresh interpreter, so what an earlier test imported cannot hide
what this one pulls in.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "probes", "reports")


def _loaded_after(statement: str) -> set[str]:
    """Names in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


def _reports(mods: set[str]) -> set[str]:
    return {m for m in mods if m == "reports" or m.startswith("reports.")}


@pytest.mark.parametrize("module", ["audit", "audit.run", "audit.lab.calibrate", "audit.lab.suite", "audit.verdict",
                                    "audit.registry", "audit.schema"])
def test_the_library_loads_no_reports(module):
    assert _reports(_loaded_after(f"import {module}")) == set()


def test_the_lens_registry_loads_no_reports():
    # the registry imports every lens (probes/): neither they nor it may pull reports in
    assert _reports(_loaded_after("from audit.registry import available_lenses; available_lenses()")) == set()


def test_reports_loads_no_torch():
    mods = _loaded_after("import reports, reports.calibration")
    assert "reports.render" in mods  # the import did load the package's sections
    assert {m for m in mods if m == "torch" or m.startswith("torch.")} == set()


def test_the_lens_models_load_no_torch():
    # every lens's config and data model is read by reports and `audit report` without torch
    mods = _loaded_after("import audit.lensdata; from audit.lensdata import LENS_MODELS; assert len(LENS_MODELS) > 1")
    assert "audit.lensdata" in mods
    assert {m for m in mods if m == "torch" or m.startswith("torch.")} == set()


# ---------------------------------------------------------------------------------------
# The import graph, read from the source with ast
# ---------------------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, *, deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run: at module level (in ``if``/``try``/``with`` blocks too,
    never under ``if TYPE_CHECKING``), and with ``deferred`` those inside functions as well."""
    found, stack = [], list(tree.body)
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            found.append(n)
        elif isinstance(n, ast.If):
            stack += ([] if _type_checking(n) else n.body) + n.orelse
        elif isinstance(n, ast.Try):
            stack += n.body + n.orelse + n.finalbody + [s for h in n.handlers for s in h.body]
        elif isinstance(n, (ast.With, ast.AsyncWith, ast.ClassDef, ast.For, ast.AsyncFor, ast.While)):
            stack += n.body + getattr(n, "orelse", [])
        elif deferred and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack += n.body
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names of what ``node`` imports; ``from pkg import sub`` names the submodule."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = (module if is_package else module.rpartition(".")[0]).split(".")
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def import_graph(*, deferred: bool) -> dict[str, set[str]]:
    """Module → the modules of :data:`PACKAGES` it imports."""
    mods = _modules()
    graph = {}
    for name, f in mods.items():
        is_pkg = f.name == "__init__.py"
        deps = set()
        for node in _imports(ast.parse(f.read_text(encoding="utf-8")), deferred=deferred):
            names = _targets(node, name, is_pkg)
            if isinstance(node, ast.ImportFrom):  # the submodules named, else the module itself
                subs = [t for t in names[1:] if t in mods]
                names = subs or names[:1]
            deps |= {t for t in names if t in mods and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


KNOWN_DEFERRED_CYCLES: set[frozenset[str]] = set()
"""Cycles through function-level imports that are known and accepted: none since issue 20 split
the item adapters by job (items → formats → sources; prepare; itemcheck). A new entry needs a reason."""


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == {frozenset({"a", "b", "c"})}
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\ndef f():\n    import z\n")
    assert [n.names[0].name for n in _imports(tree, deferred=False)] == ["x"]
    assert sorted(n.names[0].name for n in _imports(tree, deferred=True)) == ["x", "z"]


def test_no_import_cycle_at_import_time():
    graph = import_graph(deferred=False)
    assert "audit.schema" in graph["audit.run"]  # the graph is read at all
    assert cycles(graph) == set()


def test_no_new_cycle_through_deferred_imports():
    assert cycles(import_graph(deferred=True)) == KNOWN_DEFERRED_CYCLES


def test_audit_and_probes_never_import_reports():
    # deferred imports too: a lazy ``from reports import ...`` in the library is still a
    # dependency running back up (rendering is cli.py's job)
    graph = import_graph(deferred=True)
    back = {m: sorted(d for d in deps if d.split(".")[0] == "reports")
            for m, deps in graph.items() if m.split(".")[0] in ("audit", "probes")}
    assert {m: d for m, d in back.items() if d} == {}


# ---------------------------------------------------------------------------------------
# The organism lab is not the tool (issue 20)
# ---------------------------------------------------------------------------------------


def _lab(mods) -> set[str]:
    return {m for m in mods if m == "audit.lab" or m.startswith("audit.lab.")}


def test_the_core_never_imports_the_lab():
    # deferred imports too: a lazy ``from audit.lab import ...`` in the core is still a dependency
    graph = import_graph(deferred=True)
    assert "audit.lab.organisms" in graph and "audit.training" in graph["audit.lab.organisms"]  # the lab is read
    back = {m: sorted(_lab(deps)) for m, deps in graph.items() if not _lab([m])}
    assert {m: d for m, d in back.items() if d} == {}


def test_the_lab_guard_sees_deferred_and_aliased_imports():
    # the forms a lab import can take in the core, each found by the graph the guard reads
    for src in ("def f():\n    from audit.lab import organisms\n", "def f():\n    import audit.lab.suite as s\n",
                "from audit.lab.calibrate import calibrate\n", "from .lab import world\n"):
        nodes = _imports(ast.parse(src), deferred=True)
        names = {t for n in nodes for t in _targets(n, "audit.run", False)}
        assert _lab(names), src


@pytest.mark.parametrize("statement", ["import audit.run", "import audit.plan",
                                       "from audit.registry import available_lenses; available_lenses()"])
def test_the_library_loads_no_lab(statement):
    assert _lab(_loaded_after(statement)) == set()
