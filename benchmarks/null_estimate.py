"""The no-reference end point against a real never-trained model, per lens reading.

Without ``--reference`` every reading's end point is the lens's knowledge-free estimate
(docs/verdict.md). Every audit records that estimate next to the real S(N) when a
reference was given (``Recovery.score_null``), so audits *with* N measure how far the
estimate is from the model it stands in for. This script reads the audit logs under a
folder (e.g. ``make demo``'s ``demo_out/``) and prints, per lens reading, S(N), the
estimate and their gap, in units of the reading's own span S(B) − S(N) (the recovery
error an estimate that far off would make on a U at N).

Run: ``python -m benchmarks.null_estimate demo_out``
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _reading_key(lens: str, reading: str) -> str:
    # "layer 3 (most powerful)" and "best of 4 layers (layer 2)" vary by organism: keep the kind
    reading = re.sub(r"\(layer \d+\)", "(layer *)", reading)
    reading = re.sub(r"^layer \d+", "layer *", reading)
    return f"{lens}: {reading}"


def collect(folder: Path) -> dict[str, list[tuple[float, float, float]]]:
    """Per lens reading: (S(N), estimate, S(B)) over every audit log with a reference."""
    out: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for path in sorted(folder.rglob("audit_log.json")):
        log = json.loads(path.read_text())
        for name, res in log.get("lenses", {}).items():
            for r in res.get("recoveries", []):
                if r.get("end_point") != "reference" or r.get("score_null") is None:
                    continue
                out[_reading_key(name, r["reading"])].append(
                    (r["score_reference"], r["score_null"], r["score_base"]))
    return out


def table(rows: dict[str, list[tuple[float, float, float]]]) -> str:
    lines = ["| lens: reading | audits | S(N) | estimate | estimate − S(N) | in recovery units |",
             "|---|---|---|---|---|---|"]
    for key in sorted(rows):
        a = np.array(rows[key])
        sn, est, sb = a[:, 0].mean(), a[:, 1].mean(), a[:, 2].mean()
        span = sb - sn
        rel = f"{(sn - est) / span:+.2f}" if abs(span) > 1e-6 else "n/a"
        lines.append(f"| {key} | {len(a)} | {sn:.3f} | {est:.3f} | {est - sn:+.3f} | {rel} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m benchmarks.null_estimate FOLDER_WITH_AUDIT_LOGS", file=sys.stderr)
        return 2
    rows = collect(Path(argv[0]))
    if not rows:
        print(f"no audit log with a reference and recorded estimates under {argv[0]}", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
