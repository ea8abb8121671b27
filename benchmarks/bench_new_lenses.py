"""9. the issue-21 lenses on a real model: seconds of mia, prompt_attacks and parametric.

SmolLM2-135M-Instruct (``make smollm2``) audited against itself (B = U, no reference: the
lenses' knowledge-free end points) on the capitals items, 40 forget + 40 retain, with
``--lenses mia,prompt_attacks,parametric`` and each lens's default options: the seconds of
each lens as its audit log records them, and whether each ran without error (the issue's
"Done when": each new lens runs on SmolLM2 with the capitals items, its seconds in the log
and here). Each run starts from an empty ``$AUDIT_CACHE``, so no lens reads cached scores.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.common import Row, Section, smollm2_dir

BENCH = "9. issue-21 lenses on SmolLM2"
LENSES = ("mia", "prompt_attacks", "parametric")


def run(quick: bool = False) -> Section:
    from audit.config import AuditConfig
    from audit.items import write_items
    from audit.lab.realmodel import capital_items
    from audit.run import run as run_audit

    hf = smollm2_dir()
    if hf is None:
        return Section([Row(BENCH, "—", "skipped: SmolLM2 is not fetched (make smollm2)", "runs without error", None)])
    n = 20 if quick else 40
    items = capital_items()
    work = Path(tempfile.mkdtemp(prefix="bench_new_lenses_"))
    write_items(items[:n], work / "forget.jsonl")
    write_items(items[n:2 * n], work / "retain.jsonl")
    old_cache = os.environ.get("AUDIT_CACHE")
    os.environ["AUDIT_CACHE"] = str(work / "cache")
    try:
        log = run_audit(AuditConfig(base=str(hf), unlearned=str(hf), forget=str(work / "forget.jsonl"),
                                    retain=str(work / "retain.jsonl"), out=str(work / "out"), lenses=list(LENSES)))
    finally:
        if old_cache is None:
            os.environ.pop("AUDIT_CACHE", None)
        else:
            os.environ["AUDIT_CACHE"] = old_cache
    secs = {k: log.lenses[k].seconds for k in LENSES if k in log.lenses}
    errors = {k: log.lenses[k].error for k in LENSES if k in log.lenses and log.lenses[k].error}
    missing = [k for k in LENSES if k not in log.lenses]
    ok = not errors and not missing
    case = f"SmolLM2-135M-Instruct, B = U, no reference; capitals, {n} forget + {n} retain items"
    measured = ", ".join(f"{k} {s:.1f} s" for k, s in secs.items())
    note = "; ".join([*(f"{k}: {e}" for k, e in errors.items()), *(f"{k} did not run" for k in missing)])
    details = [f"{k}: {secs.get(k, float('nan')):.1f} s; recoveries "
               f"{[(r.reading, round(r.value, 3), r.informative) for r in log.lenses[k].recoveries]}"
               for k in LENSES if k in log.lenses]
    details.append(f"audit total {log.timings.get('total', float('nan')):.1f} s (loading included)")
    return Section([Row(BENCH, case, measured or "—", "runs without error", ok, note)], details)
