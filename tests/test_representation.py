"""Representation lenses (probe, logit lens, similarity) measured on the organisms.

Numbers measured on the default suite (seed 0) when this was written: the probe reads
the head-only and late-layers organisms' forgotten answers with recovery 1.00 at the
best layer (their trunks are untouched up to the edited part); on reference_b audited
with reference_a as N the primary probe reading is R = -0.00 (CI -0.11–0.09) and the
logit lens R = 0.03 (CI -0.09–0.13).
"""

from __future__ import annotations

import json
import math

import pytest

from audit import activations as A
from audit.config import AuditConfig
from audit.run import run
from audit.schema import AuditLog, LensResult
from audit.verdict import Thresholds

LENSES = ["behavior", "linear_probe", "logit_lens", "similarity"]


def _run(suite, tmp_path, unlearned, lenses=LENSES, seed=0, lens_options=None):
    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / unlearned),
                      reference=str(suite / "reference_a"), forget=str(suite / "forget.jsonl"),
                      retain=str(suite / "retain.jsonl"), out=str(tmp_path / unlearned), lenses=lenses, seed=seed,
                      lens_options=lens_options or {})
    return run(cfg)


@pytest.fixture(scope="module")
def logs(suite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repr")
    return {u: _run(suite, tmp, u) for u in ("head_only", "late_layers", "reference_b")}


def _best_layer_recovery(res: LensResult) -> float:
    return max(r.value for r in res.recoveries if r.informative)


@pytest.mark.parametrize("organism", ["head_only", "late_layers"])
def test_probe_reads_suppressed_constructions(logs, organism):
    probe = logs[organism].lenses["linear_probe"]
    assert _best_layer_recovery(probe) >= 0.8
    # the probe reads the base far above the never-trained reference at its primary layer
    p = probe.recoveries[0]
    assert p.kind == "primary" and p.score_base - p.score_reference >= 0.5


def test_reference_b_recovers_nothing(logs):
    log = logs["reference_b"]
    for lens in ("linear_probe", "logit_lens"):
        primary = [r for r in log.lenses[lens].recoveries if r.kind == "primary"]
        assert primary, lens
        for r in primary:
            # inside the deletion band the verdict uses (τ_d 0.25 since f23810d; measured on
            # the Intel-trained suite of 2026-12-07: linear probe 0.10, CI 0.02-0.16)
            assert r.ci_high < Thresholds().tau_d, (lens, r)
            # through B's head only against a reference in B's basis: reference_a, an
            # independent retrain, is not (docs/lenses.md), so those readings do not count
            assert r.informative == (not r.reading.startswith("base head")), (lens, r)
    basis = log.lenses["logit_lens"].data["base_head_basis"]
    assert not basis["reference"]["in_basis"] and not basis["unlearned"]["in_basis"], basis


def test_shuffled_label_controls_never_count_as_recovery(logs):
    for log in logs.values():
        for r in log.lenses["linear_probe"].recoveries:
            assert r.control_threshold is not None and r.control_threshold < 0.3, r


def test_similarity_is_support_only(logs):
    sim = logs["head_only"].lenses["similarity"]
    assert sim.recoveries == []
    # head-only leaves the trunk untouched: B and U activations are identical
    assert all(math.isclose(v, 1.0, abs_tol=1e-6) for v in sim.data["forget_base_vs_unlearned"])
    assert min(logs["reference_b"].lenses["similarity"].data["forget_base_vs_unlearned"]) < 0.99


def test_results_round_trip_and_are_deterministic(suite, tmp_path, logs):
    again = _run(suite, tmp_path, "late_layers")
    for lens in LENSES:
        a = logs["late_layers"].lenses[lens].model_copy(update={"seconds": 0.0})
        b = again.lenses[lens].model_copy(update={"seconds": 0.0})
        assert a.model_dump_json() == b.model_dump_json(), lens
        assert LensResult.model_validate_json(a.model_dump_json()).model_dump_json() == a.model_dump_json()
    AuditLog.model_validate_json(again.model_dump_json())


def test_report_has_per_layer_sections(logs):
    from reports.render import render

    page = render(logs["head_only"])
    for sid in ("linear_probe", "logit_lens", "similarity"):
        assert f'id="{sid}"' in page


def test_activation_cache_is_shared_across_lenses(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / "fresh"))
    before = A.FORWARD_COUNTER["capture"]
    # steering at one scale and site: its grid does not change what it captures
    log = _run(suite, tmp_path, "noop", lenses=["linear_probe", "logit_lens", "similarity", "steering"],
               lens_options={"steering": {"scales": [1.0], "poolings": ["mean"], "max_layers": 1}})
    n_forget, n_retain = log.items["forget"].n_items, log.items["retain"].n_items
    batches = math.ceil(n_forget / 32) + math.ceil(n_retain / 32)
    # three models, each forwarded once per item set for capture, whatever the number of
    # lenses (steering's own forwards are interventions, not captures)
    assert A.FORWARD_COUNTER["capture"] - before == 3 * batches
    json.loads((tmp_path / "noop" / "audit_log.json").read_text())
