"""Verdicts on the construction-truth organisms, from measured runs of the full battery.

Each organism is audited with base as B and reference_a as N; the ground truth comes
from the suite's manifest (SPEC §6), which is written from behavioural measurements at
build time, never from what the auditor says.

head_only and late_layers, audited here until 2026-11-26, are audited with every lens (light
grids) in tests/test_conformance.py, which asserts their labels too; auditing them a second
time at the default grids cost about 3 minutes of the 30-minute `make test` budget.
subject_offset is the SUPPRESSED-truth organism here: the one whose evidence needs steering
at its default grid. noop (NOT_UNLEARNED: behaviour alone decides it) was audited here until
2026-11-26 too; its label is asserted on the small calibration preset's two suites (every lens
but SAE, light grids; tests/test_calibrate.py) and with behavior alone in tests/test_cli.py,
and its full-battery audit at the default grids cost about 2 minutes of `make test`.
"""

from __future__ import annotations

import pytest

from audit.config import AuditConfig
from audit.registry import available_lenses
from audit.run import run

BATTERY = ["behavior", "linear_probe", "logit_lens", "steering", "quantization", "relearn", "leak_at_k", "similarity"]
ORGANISMS = ["reference_b", "subject_offset"]


@pytest.fixture(scope="module")
def verdicts(suite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verdicts")
    lenses = [x for x in BATTERY if x in available_lenses()]
    out = {}
    for u in ORGANISMS:
        cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / u), reference=str(suite / "reference_a"),
                          forget=str(suite / "forget.jsonl"), retain=str(suite / "retain.jsonl"),
                          out=str(tmp / u), lenses=lenses)
        out[u] = run(cfg)
    return out


@pytest.mark.parametrize("organism", ORGANISMS)
def test_label_matches_ground_truth(verdicts, manifest, organism):
    truth = manifest["checkpoints"][organism]["truth"]
    v = verdicts[organism].verdicts[0]
    assert v.label == truth, (organism, v.reason)
    if truth == "DELETED":  # the reason names every lens tried, with its budget
        assert all(f"{lens} (" in v.reason for lens in verdicts[organism].lenses), v.reason


def test_deletion_score_ranks_deleted_above_suppressed(verdicts, manifest):
    deleted = [u for u in ORGANISMS if manifest["checkpoints"][u]["truth"] == "DELETED"]
    suppressed = [u for u in ORGANISMS if manifest["checkpoints"][u]["truth"] == "SUPPRESSED"]
    assert deleted and suppressed
    assert min(verdicts[u].verdicts[0].deletion_score for u in deleted) > max(
        verdicts[u].verdicts[0].deletion_score for u in suppressed)


def test_suppressed_verdicts_name_their_evidence(verdicts):
    for u in ("subject_offset",):
        v = verdicts[u].verdicts[0]
        assert v.evidence and v.evidence[0].lens != "behavior"
        assert "recovers" in v.reason


def test_every_lens_ran_and_is_in_the_report(verdicts):
    from reports.render import render

    log = verdicts["subject_offset"]
    assert all(res.error is None for res in log.lenses.values()), {k: v.error for k, v in log.lenses.items()}
    page = render(log)
    for lens in log.lenses:
        if lens != "behavior":
            assert f'id="{lens}"' in page, lens
