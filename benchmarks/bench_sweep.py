"""8. sweep overhead: ``audit sweep`` on Ray vs the same audits one by one (issue 22).

Every audited organism of the suite (each against B and reference_a; three with
``--quick``), with the lenses of ``$BENCH_SWEEP_LENSES`` (default behavior, linear probe
and logit lens: seconds an audit on the organisms, where the default battery takes
minutes, so the fixed costs weigh more here than in real use), audited twice: one after
another with :func:`audit.run.run` in this process (its imports already paid), and by
:func:`audit.sweep.sweep` on a local Ray instance of one CPU, so that the audits run one at
a time there too. What the sweep adds: starting Ray, the plan (loads B once), the
worker's imports, scheduling, shutdown. Each side has its own empty ``$AUDIT_CACHE``
(neither reads the other's cached scores). Target (issue 22): the sweep's time not spent
in the audits themselves is at most 10% of it; beside it, the sweep's time against the
one-by-one run (one round each: the machine's load moves both).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, Section, organisms_dir

TARGET = 0.10
BENCH = "8. sweep overhead"


def _organisms(suite: Path) -> list[str]:
    man = json.loads((suite / "manifest.json").read_text())
    return [k for k, v in man["checkpoints"].items() if v["role"] not in ("base",) and k != "reference_a"]


def run(quick: bool = False) -> Section:
    import yaml

    from audit.config import AuditConfig
    from audit.run import run as run_audit
    from audit.sweep import sweep

    suite = organisms_dir()
    if not (suite / "manifest.json").is_file():
        return Section([Row(BENCH, "—", f"skipped: no organism suite at {suite}", "≤ 10%", None)])
    names = _organisms(suite)[: 3 if quick else None]
    lenses = os.environ.get("BENCH_SWEEP_LENSES", "behavior,linear_probe,logit_lens").split(",")
    shared = {"base": str(suite / "base"), "reference": str(suite / "reference_a"),
              "forget": str(suite / "forget.jsonl"), "retain": str(suite / "retain.jsonl"), "lenses": lenses}
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    old_cache = os.environ.get("AUDIT_CACHE")
    try:
        # one by one, in this process
        os.environ["AUDIT_CACHE"] = str(work / "cache_seq")
        t = time.perf_counter()
        for n in names:
            run_audit(AuditConfig(**shared, unlearned=str(suite / n), out=str(work / "seq" / n)))
        t_seq = time.perf_counter() - t

        # the sweep: a local Ray instance of one CPU, one audit at a time
        os.environ["AUDIT_CACHE"] = str(work / "cache_sweep")
        manifest = work / "manifest.yaml"
        manifest.write_text(yaml.safe_dump({"defaults": shared,
                                            "audits": [{"name": n, "unlearned": str(suite / n)} for n in names]}))
        t = time.perf_counter()
        res = sweep(manifest, work / "sweep", num_cpus=1)
        t_sweep = time.perf_counter() - t
    finally:
        if old_cache is None:
            os.environ.pop("AUDIT_CACHE", None)
        else:
            os.environ["AUDIT_CACHE"] = old_cache
    eng = res["engine"]
    in_audits = sum(res["session"]["audit_s"].values())
    imports = sum(res["session"]["import_s"].values())
    overhead = (t_sweep - in_audits) / t_sweep
    versus = (t_sweep - t_seq) / t_sweep
    failed = [r["name"] for r in res["rows"] if r["status"] != "done"]
    case = f"{len(names)} organism audits ({', '.join(lenses)}), 1 CPU"
    rows = [
        Row(BENCH, case + ": sweep time not spent auditing",
            f"{overhead:.1%} of the sweep's {t_sweep:.0f} s", "≤ 10%", overhead <= TARGET and not failed,
            f"Ray start {eng.get('start_s')} s, plan {eng.get('plan_s')} s, worker imports {imports:.1f} s, "
            f"shutdown {eng.get('shutdown_s')} s" + (f"; failed: {', '.join(failed)}" if failed else "")),
        Row(BENCH, case + ": sweep vs one by one in one process", f"{versus:+.1%} of the sweep's {t_sweep:.0f} s "
            f"(one by one: {t_seq:.0f} s)", "≤ 10%", versus <= TARGET and not failed,
            "one round each, not interleaved: on a shared machine the two sides see different loads"),
    ]
    details = [
        f"organisms: {', '.join(names)}; lenses {', '.join(lenses)}; suite {suite}",
        f"one by one in this process (imports already paid): {t_seq:.1f} s",
        f"sweep on a local Ray instance of 1 CPU: {t_sweep:.1f} s wall, of which Ray start {eng.get('start_s')} s, "
        f"plan {eng.get('plan_s')} s, shutdown {eng.get('shutdown_s')} s, the workers' imports {imports:.1f} s, "
        f"the audits themselves (audit.run) {in_audits:.1f} s",
        f"(sweep − audits) / sweep: {overhead:.1%}; (sweep − one by one) / sweep: {versus:+.1%}",
    ]
    return Section(rows, details)
