"""Audit every organism of a suite against its ground truth (what ``make demo`` runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.config import AuditConfig
from audit.errors import InputError
from audit.run import run

# the checkpoints that are audited as "unlearned" models (base and reference_a are end points);
# a lineage reference (issue 18) is audited like the never-trained ones, with reference_a as N
AUDITED_ROLES = ("reference", "lineage_reference", "suppressed_construction", "not_unlearned_construction", "method")


def read_manifest(suite: str | Path) -> dict[str, Any]:
    p = Path(suite) / "manifest.json"
    if not p.is_file():
        raise InputError(f"{suite} is not an organism suite (no manifest.json); build one with `audit organisms build`")
    return json.loads(p.read_text())


def audit_suite(
    suite: str | Path, out: str | Path, *, lenses: list[str] | None = None, only: list[str] | None = None,
    seed: int = 0, options: dict[str, Any] | None = None, reference: bool = True,
) -> list[dict[str, Any]]:
    """Run ``audit.run`` on each audited organism with base and ``reference_a`` as end points.

    A suite without ``reference_a`` (``audit organisms build --from smollm2``), or any suite
    with ``reference=False`` (the calibration's no-reference table), is audited without a
    reference: the same organisms, N withheld.

    Writes ``OUT/<organism>/audit_log.json`` and ``report.html`` per organism and
    ``OUT/summary.json``; returns one row per organism (truth vs verdict).
    """
    suite, out = Path(suite), Path(out)
    man = read_manifest(suite)
    options = dict(options or {})
    if "sae" in (lenses or []):  # the SAE trains on the organisms' training sentences too
        texts = [str(suite / f) for f in ("train_forget.txt", "train_retain.txt") if (suite / f).is_file()]
        lens_options = dict(options.get("lens_options") or {})
        lens_options["sae"] = {"text": texts, **(lens_options.get("sae") or {})}
        options["lens_options"] = lens_options
    rows = []
    for name, entry in man["checkpoints"].items():
        if entry["role"] not in AUDITED_ROLES or name == "reference_a" or (only and name not in only):
            continue
        cfg = AuditConfig(
            base=str(suite / "base"), unlearned=str(suite / entry["path"]),
            # a real-model suite has no never-trained model: its end points are then estimated
            reference=str(suite / "reference_a") if reference and "reference_a" in man["checkpoints"] else None,
            forget=str(suite / man["forget"]), retain=str(suite / man["retain"]), out=str(out / name),
            lenses=lenses or ["behavior"], seed=seed, **options,
        )
        log = run(cfg)
        v = log.verdicts[0]
        rows.append({
            "organism": name, "role": entry["role"], "truth": entry["truth"], "reference": cfg.reference is not None,
            "verdict": v.label, "deletion_score": v.deletion_score,
            "reason": v.reason, "forget_score": entry["forget_score"], "retain_score": entry["retain_score"],
            "report": str(out / name / "report.html"),
        })
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows
