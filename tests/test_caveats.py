"""The no-reference caveat has one home (audit.caveats): lenses write it through the
context, and the report's header uses the same wording."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from audit.caveats import NO_REFERENCE, NO_REFERENCE_VERDICT, no_reference_note
from audit.context import AuditContext

ROOT = Path(__file__).resolve().parents[1]


def test_a_lens_gets_the_caveat_only_without_a_reference():
    note = "the end point is chance, not a quantized N"
    assert AuditContext.no_reference_notes(SimpleNamespace(has_reference=True), note) == []
    assert AuditContext.no_reference_notes(SimpleNamespace(has_reference=False), note) == [
        f"{NO_REFERENCE}: {note}"] == [no_reference_note(note)]


def test_no_lens_spells_the_caveat_itself():
    spelled = {p.name for p in (ROOT / "probes").glob("*.py")
               if re.search(r"[\"']" + re.escape(NO_REFERENCE), p.read_text(encoding="utf-8"))}
    assert not spelled, f"write the caveat with ctx.no_reference_notes(...) in {sorted(spelled)}"


def test_the_report_header_says_what_a_missing_reference_costs():
    from audit.schema import AuditLog, ModelInfo
    from reports.render import render

    base = ModelInfo(role="base", path="b", hash="0" * 16, architecture="x", model_type="x", n_layers=1, d_model=1,
                     n_params=1)
    log = AuditLog(created="now", config={}, models={"base": base, "unlearned": base}, items={}, lenses={})
    assert f"none ({NO_REFERENCE_VERDICT})" in render(log)

