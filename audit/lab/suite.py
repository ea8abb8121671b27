"""Audit every organism of a suite against its ground truth (what ``make demo`` runs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit.config import AuditConfig
from audit.errors import InputError
from audit.progress import log as logger
from audit.run import run
from audit.schema import AuditLog
from audit.sweep import finished_log

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
    seed: int = 0, options: dict[str, Any] | None = None, reference: bool = True, resume: bool = False,
    on_log_written: Callable[[Path], None] | None = None, reference_name: str = "reference_a",
) -> list[dict[str, Any]]:
    """Run ``audit.run`` on each audited organism with base and ``reference_a`` as end points.

    ``reference_name`` picks another of the suite's never-trained models as N (e.g.
    ``lineage_b``, a reference in B's basis); that model is then not audited itself.

    A suite without ``reference_a`` (``audit organisms build --from smollm2``), or any suite
    with ``reference=False`` (the calibration's no-reference table), is audited without a
    reference: the same organisms, N withheld.

    With ``resume``, an organism whose ``OUT/<organism>/audit_log.json`` finished under the
    same settings, checkpoint and item contents, policy and package version (see
    :func:`audit.sweep.stale_reason`) is not audited again: its row is read back from that log. Any other
    organism runs with ``AuditConfig(resume=True)``, so one stopped mid-way continues from
    its finished lenses.

    Writes ``OUT/<organism>/audit_log.json`` per organism and ``OUT/summary.json``; returns
    one row per organism (truth vs verdict). ``on_log_written`` is called with each
    organism's ``audit_log.json`` once it is written, and with a log read back whose
    ``report.html`` is missing (``cli.py`` renders the report there).
    """
    suite, out = Path(suite), Path(out)
    man = read_manifest(suite)
    options = dict(options or {})
    if reference and reference_name != "reference_a" and reference_name not in man["checkpoints"]:
        raise InputError(f"the suite {suite} has no checkpoint '{reference_name}' to use as the reference")
    if "sae" in (lenses or []):  # the SAE trains on the organisms' training sentences too
        texts = [str(suite / f) for f in ("train_forget.txt", "train_retain.txt") if (suite / f).is_file()]
        lens_options = dict(options.get("lens_options") or {})
        lens_options["sae"] = {"text": texts, **(lens_options.get("sae") or {})}
        options["lens_options"] = lens_options
    rows, reused = [], []
    for name, entry in man["checkpoints"].items():
        if entry["role"] not in AUDITED_ROLES or name in ("reference_a", reference_name) or (only and name not in only):
            continue
        cfg = AuditConfig(
            base=str(suite / "base"), unlearned=str(suite / entry["path"]),
            # a real-model suite has no never-trained model: its end points are then estimated
            reference=(str(suite / man["checkpoints"][reference_name]["path"])
                       if reference and reference_name in man["checkpoints"] else None),
            forget=str(suite / man["forget"]), retain=str(suite / man["retain"]), out=str(out / name),
            lenses=lenses or ["behavior"], seed=seed, resume=resume, **options,
        )
        log = _finished(cfg, on_log_written) if resume else None
        if log is None:
            log = run(cfg, on_log_written=on_log_written)
        else:
            reused.append(name)
        v = log.verdicts[0]
        rows.append({
            "organism": name, "role": entry["role"], "truth": entry["truth"], "reference": cfg.reference is not None,
            "reference_name": reference_name if cfg.reference is not None else None,
            "verdict": v.label, "deletion_score": v.deletion_score,
            "reason": v.reason, "forget_score": entry["forget_score"], "retain_score": entry["retain_score"],
            "report": str(out / name / "report.html"),
        })
    if resume:
        logger.info("%s: %d organism(s) read back from their finished audits%s", out, len(reused),
                    f" ({', '.join(reused)})" if reused else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows


def _finished(cfg: AuditConfig, on_log_written: Callable[[Path], None] | None = None) -> AuditLog | None:
    """The finished ``audit_log.json`` in ``cfg.out`` if nothing is stale against it
    (:func:`audit.sweep.stale_reason`, the same check ``audit sweep`` makes)."""
    log = finished_log(cfg)
    if log is not None and on_log_written is not None and not (Path(cfg.out) / "report.html").is_file():
        on_log_written(Path(cfg.out) / "audit_log.json")  # the run stopped between the log and its report
    return log
