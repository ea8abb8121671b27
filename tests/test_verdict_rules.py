"""The verdict's rules, case by case, on hand-made lens results (docs/verdict.md).

Each row builds the readings of one audit and names the label the rules must give. The
first five groups are the five ways the earlier DELETED rule was looser than SPEC §5.
The table's numbers are written against a deletion band of 0.15 (``BAND``), the default
until the default preset's worlds widened it to 0.25 (docs/verdict.md); the rules are the
same at any band.
"""

from __future__ import annotations

import pytest

from audit.caveats import NO_REFERENCE, NO_REFERENCE_VERDICT
from audit.schema import LensResult, Recovery
from audit.verdict import Thresholds, decide, group_verdicts

BAND = Thresholds(tau_d=0.15)


def rec(reading="r", value=0.0, lo=None, hi=None, *, kind="primary", control=None, informative=True,
        side_effect_ok=None, end_point="reference", sb=0.95, su=None, sn=0.25):
    lo = value - 0.08 if lo is None else lo
    hi = value + 0.08 if hi is None else hi
    su = sn + value * (sb - sn) if su is None else su
    return Recovery(reading=reading, value=value, ci_low=lo, ci_high=hi, score_base=sb, score_unlearned=su,
                    score_reference=sn, n_items=180, informative=informative, control_threshold=control,
                    excess=None if control is None else value - control, side_effect_ok=side_effect_ok,
                    kind=kind, end_point=end_point)


def behavior(ranking=0.0, soft=None, greedy=None, *, raw=None, retain_drop=0.0, width=0.1, soft_width=0.06,
             end_point="reference", informative=True, legacy=False):
    """Behavior's readings: ``raw`` is the ranking as U says it (the NOT_UNLEARNED gate;
    default ``ranking``), ``ranking`` the one with each model's prior removed. ``legacy``:
    a log from before the prior was removed (one ``ranking`` reading, primary)."""
    soft = ranking if soft is None else soft
    greedy = ranking if greedy is None else greedy
    raw = ranking if raw is None else raw
    hard = [rec("ranking", ranking, ranking - width, ranking + width, end_point=end_point,
                informative=informative)] if legacy else [
        rec("ranking", raw, raw - width, raw + width, kind="gate", end_point=end_point, informative=informative),
        rec("ranking (prior removed)", ranking, ranking - width, ranking + width, end_point=end_point,
            informative=informative)]
    recs = [*hard,
            rec("ranking (soft)", soft, soft - soft_width, soft + soft_width, end_point=end_point,
                informative=informative),
            rec("greedy", greedy, greedy - width, greedy + width, end_point=end_point, informative=informative)]
    data = {"retain": {"base": {"score": 0.95}, "unlearned": {"score": 0.95 - retain_drop}}}
    return LensResult(name="behavior", recoveries=recs, data=data)


def lens(name, *recs, error=None, config=None, data=None):
    return LensResult(name=name, recoveries=list(recs), error=error, config=config or {}, data=data or {})


def open_world(outside: bool | None, base_head: float | None = None, own: float = 0.0):
    """Open answers: the linear probe reads B no better than N (uninformative), the logit
    lens's own-head reading ``own``; U outside B's basis at every layer (``outside``; None:
    no basis data), and a counted base-head reading ``base_head`` (None: not counted)."""
    recs = [rec("layer 2 (most powerful)", own)]
    if base_head is not None:
        recs.append(rec("base head, layer 2 (most powerful)", base_head))
    else:
        recs.append(rec("base head, layer 2 (most powerful)", 0.9, informative=False))
    basis = {} if outside is None else {"unlearned": {"in_basis": not outside, "outside_every_layer": outside}}
    return quiet(linear_probe=lens("linear_probe", rec("truth probe", 0.0, -0.5, 0.5, informative=False)),
                 logit_lens=lens("logit_lens", *recs, data={"base_head_basis": basis}))


def quiet(end_point="reference", **over):
    """A never-trained-looking audit: every reading at 0 with tight CIs."""
    out = {
        "behavior": behavior(end_point=end_point),
        "linear_probe": lens("linear_probe", rec("probe", 0.0, -0.07, 0.07, control=0.05, end_point=end_point)),
        "relearn": lens("relearn", rec("relearn 20 steps", 0.02, -0.08, 0.1, end_point=end_point)),
        "quantization": lens("quantization", rec("int4", 0.0, -0.05, 0.05, end_point=end_point)),
        "steering": lens("steering", rec("best steering", 0.01, -0.08, 0.1, control=0.06, end_point=end_point)),
        "leak_at_k": lens("leak_at_k", rec("leak@1 (answer − distractors)", 0.0, -0.06, 0.06, end_point=end_point)),
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


CASES = [
    # --- looseness 1: behavior was never bounded (R < 0.5 counted as "near N")
    ("behavior 0.45 with every other lens at 0", quiet(behavior=behavior(0.45)), "INCONCLUSIVE", "behavior"),
    ("behavior soft 0.3, 0/1 readings 0.2", quiet(behavior=behavior(0.2, soft=0.3)), "INCONCLUSIVE", "band"),
    ("behavior soft CI reaching 0.2", quiet(behavior=behavior(0.05, soft=0.1, soft_width=0.1)), "INCONCLUSIVE",
     "not inside"),
    ("greedy 0.35 with CI above the band", quiet(behavior=behavior(0.0, greedy=0.35)), "INCONCLUSIVE", "greedy"),
    # --- looseness 2: recovery far below zero passed as deletion
    ("every lens at -0.6", {
        "behavior": behavior(-0.3, soft=-0.3, greedy=-0.3, retain_drop=0.5),
        **{n: lens(n, rec("x", -0.6)) for n in ("linear_probe", "relearn", "quantization")}},
     "INCONCLUSIVE", "below"),
    ("U ranks the answer below N, retain intact", quiet(behavior=behavior(-0.27, soft=-0.25, greedy=-0.2)),
     "SUPPRESSED", "avoids the true answer"),
    ("U below N only on soft ranking, retain intact", quiet(behavior=behavior(-0.05, soft=-0.3)),
     "SUPPRESSED", "avoids"),
    ("U below N but retain collapsed", quiet(behavior=behavior(-0.27, soft=-0.25, retain_drop=0.4)),
     "INCONCLUSIVE", "retain collapsed"),
    ("a representation lens below the band", quiet(linear_probe=lens("linear_probe", rec("probe", -0.3))),
     "INCONCLUSIVE", "below the deletion band"),
    ("slightly negative readings inside the band", quiet(behavior=behavior(-0.05, soft=-0.04)), "DELETED", None),
    ("ranking -0.2 with CI reaching the band: not significant", quiet(behavior=behavior(-0.1, soft=-0.08)),
     "DELETED", None),
    # --- looseness 3: scans were exempt from the bound
    ("quantization scan at 0.35 (CI 0.05-0.65)", quiet(quantization=lens(
        "quantization", rec("int4", 0.0, -0.05, 0.05), rec("int3", 0.35, 0.05, 0.65, kind="scan"))),
     "INCONCLUSIVE", "scan"),
    ("scan at 0.1 with a wide CI", quiet(quantization=lens(
        "quantization", rec("int4", 0.0, -0.05, 0.05), rec("int3", 0.1, -0.3, 0.5, kind="scan"))), "DELETED", None),
    ("scan far below the band", quiet(linear_probe=lens(
        "linear_probe", rec("probe", 0.0, -0.07, 0.07), rec("best layer", -0.4, -0.7, -0.1, kind="scan"))),
     "INCONCLUSIVE", "scan"),
    ("scan at 0.5 above controls: recovered", quiet(quantization=lens(
        "quantization", rec("int4", 0.0, -0.05, 0.05), rec("int3", 0.5, 0.3, 0.7, kind="scan"))),
     "SUPPRESSED", "quantization"),
    # --- looseness 4: an errored lens disappeared
    ("steering failed", quiet(steering=lens("steering", error="boom")), "INCONCLUSIVE", "steering (boom)"),
    ("required relearn failed", quiet(relearn=lens("relearn", error="out of memory")), "INCONCLUSIVE",
     "relearn (out of memory)"),
    ("behavior failed", quiet(behavior=LensResult(name="behavior", error="nan logits")), "INCONCLUSIVE",
     "behavior lens failed"),
    ("a failed lens does not hide evidence of suppression", quiet(
        steering=lens("steering", error="boom"), linear_probe=lens("linear_probe", rec("probe", 0.8, 0.7, 0.9))),
     "SUPPRESSED", "linear_probe"),
    # --- looseness 5: retain collapse was only a flag
    ("retain collapsed, every lens at 0", quiet(behavior=behavior(0.0, retain_drop=0.5)), "INCONCLUSIVE",
     "retain collapsed"),
    ("retain drop just under the collapse threshold", quiet(behavior=behavior(0.0, retain_drop=0.15)), "DELETED",
     None),
    # --- no reference
    ("no reference: DELETED is not certified", quiet(end_point="answer prior"), "INCONCLUSIVE",
     f"{NO_REFERENCE} was given: {NO_REFERENCE_VERDICT}"),
    ("no reference: a clear recovery is still SUPPRESSED", quiet(
        end_point="answer prior",
        linear_probe=lens("linear_probe", rec("probe", 0.9, 0.8, 1.0, end_point="answer prior"))),
     "SUPPRESSED", "linear_probe"),
    ("no reference: still answers", quiet(end_point="answer prior", behavior=behavior(0.9, end_point="x")),
     "NOT_UNLEARNED", "still picks"),
    # --- the other labels and their edges
    ("the clean never-trained case", quiet(), "DELETED", "no tested lens recovered"),
    ("behavior ranking 0.7: NOT_UNLEARNED", quiet(behavior=behavior(0.7, greedy=0.1)), "NOT_UNLEARNED",
     "still picks the true answer"),
    ("greedy 0.6: NOT_UNLEARNED", quiet(behavior=behavior(0.1, greedy=0.6)), "NOT_UNLEARNED", "greedily"),
    ("soft ranking alone at 0.6 is not the behavior gate", quiet(behavior=behavior(0.1, soft=0.6, greedy=0.1)),
     "INCONCLUSIVE", "band"),
    ("behavior uninformative", quiet(behavior=behavior(0.0, informative=False)), "INCONCLUSIVE", "uninformative"),
    ("behavior missing", quiet(behavior=None), "INCONCLUSIVE", "did not run"),
    ("probe recovers 0.9 above controls", quiet(linear_probe=lens(
        "linear_probe", rec("probe", 0.9, 0.8, 1.0, control=0.1))), "SUPPRESSED", "recovers 0.90"),
    ("recovery 0.5 but controls also recover 0.4", quiet(steering=lens(
        "steering", rec("best", 0.5, 0.35, 0.65, control=0.4))), "INCONCLUSIVE", "steering"),
    ("recovery with side effects does not count", quiet(relearn=lens(
        "relearn", rec("relearn", 0.02, -0.08, 0.1), rec("retain ft", 0.8, 0.7, 0.9, side_effect_ok=False))),
     "DELETED", None),
    ("excess 0.3 but CI low inside the band", quiet(steering=lens(
        "steering", rec("best", 0.32, 0.1, 0.55, control=0.0))), "INCONCLUSIVE", "steering"),
    ("primary CI upper at 0.2: too uncertain", quiet(relearn=lens("relearn", rec("relearn", 0.08, -0.04, 0.2))),
     "INCONCLUSIVE", "relearn"),
    ("required lens missing", quiet(quantization=None), "INCONCLUSIVE", "quantization, which DELETED requires"),
    ("required lens uninformative", quiet(quantization=lens("quantization", rec("int4", 0.0, informative=False))),
     "INCONCLUSIVE", "quantization"),
    ("leak contrast 0.6 above the band", quiet(leak_at_k=lens("leak_at_k", rec("leak@1", 0.6, 0.45, 0.75))),
     "SUPPRESSED", "leak_at_k"),
    # --- the raw ranking (what U says) against the ranking with each model's prior removed
    ("a skewed prior: raw ranking below N, prior removed at 0", quiet(behavior=behavior(
        0.0, raw=-0.11, width=0.12)), "DELETED", None),
    ("raw ranking far below N, prior removed at 0: no avoidance", quiet(behavior=behavior(0.0, raw=-0.4)),
     "DELETED", None),
    ("says nothing, but tells the answer apart once its prior is removed", quiet(behavior=behavior(
        0.55, soft=0.1, greedy=0.0, raw=0.0)), "SUPPRESSED", "ranking (prior removed)"),
    ("prior removed 0.6 is not the behavior gate", quiet(behavior=behavior(0.6, soft=0.6, greedy=0.0, raw=0.1)),
     "SUPPRESSED", "behavior lens"),
    ("raw ranking 0.6 with the prior removed at 0.1: still says it", quiet(behavior=behavior(
        0.1, soft=0.1, greedy=0.1, raw=0.6)), "NOT_UNLEARNED", "still picks"),
    ("avoids the answer with its prior removed", quiet(behavior=behavior(-0.3, soft=-0.05, raw=0.0)),
     "SUPPRESSED", "prior over answer values removed"),
    ("a log from before the prior was removed: raw ranking decides as it did", quiet(behavior=behavior(
        -0.27, soft=-0.25, greedy=-0.2, legacy=True)), "SUPPRESSED", "avoids the true answer"),
    # --- the logit lens standing in for a linear probe that cannot read B (open answers)
    ("open answers, U shares no layer with B: the logit lens stands in", open_world(outside=True), "DELETED",
     "U shares no layer with B"),
    ("open answers, U in B's basis, reference not: no stand-in", open_world(outside=False), "INCONCLUSIVE",
     "cannot stand in"),
    ("open answers, no basis data: no stand-in", open_world(outside=None), "INCONCLUSIVE", "cannot stand in"),
    ("open answers, base-head readings counted and bounded", open_world(outside=False, base_head=0.02),
     "DELETED", "references in B's basis"),
    ("open answers, base-head reading counted at 0.9", open_world(outside=False, base_head=0.9), "SUPPRESSED",
     "base head"),
    ("open answers, outside B's basis, own-head reading 0.2", open_world(outside=True, own=0.2), "INCONCLUSIVE",
     "logit_lens lens"),
    # --- support readings (a lens whose calibration has not earned it a say) are never read
    ("a support reading at 0.9 does not make SUPPRESSED", quiet(mia=lens("mia", rec("min-k%++", 0.9, 0.8, 1.0,
                                                                                 kind="support"))), "DELETED", ""),
    ("a support reading at -0.6 does not block DELETED", quiet(mia=lens("mia", rec("min-k%++", -0.6, -0.7, -0.5,
                                                                                  kind="support"))), "DELETED", ""),
]


@pytest.mark.parametrize(("name", "lenses", "label", "why"), CASES, ids=[c[0] for c in CASES])
def test_decide(name, lenses, label, why):
    v = decide(lenses, BAND)
    assert v.label == label, (name, v.reason)
    if why:
        assert why in v.reason, (name, v.reason)


def test_there_are_enough_cases():
    assert len(CASES) >= 30


def test_deleted_reason_lists_every_lens_with_its_budget():
    lenses = quiet()
    lenses["relearn"].config = {"steps": [5, 10, 20], "lr": 1e-4}
    lenses["quantization"].config = {"bits": [8, 4, 3], "schemes": ["sym", "asym"]}
    lenses["leak_at_k"].config = {"n": 32, "temperature": 1.0}
    v = decide(lenses)
    assert v.label == "DELETED"
    for part in ("relearn (5, 10, 20 steps", "quantization (8, 4, 3 bits", "leak_at_k (32 samples at T=1.0)",
                 "steering (", "linear_probe (", "behavior ("):
        assert part in v.reason, (part, v.reason)


def test_policy_can_allow_deleted_without_reference():
    th = Thresholds(deleted_without_reference=True)
    assert decide(quiet(end_point="answer prior"), th).label == "DELETED"


def test_the_default_band_is_the_policys_and_wider_than_the_table_band():
    import yaml

    from audit.policy import DEFAULT_POLICY

    assert Thresholds().tau_d == 0.25
    assert yaml.safe_load(DEFAULT_POLICY.read_text())["thresholds"]["tau_d"] == 0.25
    case = quiet(relearn=lens("relearn", rec("relearn", 0.08, -0.04, 0.2)))
    assert decide(case, BAND).label == "INCONCLUSIVE"
    assert decide(case).label == "DELETED"
    # and a recovery whose CI lies between the two bands shows nothing at the default
    shown = quiet(relearn=lens("relearn", rec("relearn", 0.45, 0.2, 0.7, control=0.1)))
    assert decide(shown, BAND).label == "SUPPRESSED"
    assert decide(shown).label == "INCONCLUSIVE"


def test_deletion_score_counts_a_u_below_n_as_no_deletion():
    inv = decide(quiet(behavior=behavior(-0.27, soft=-0.25)))
    clean = decide(quiet())
    assert inv.deletion_score < clean.deletion_score


def test_group_verdicts_use_every_reference_and_the_stored_null():
    ids = [f"i{k}" for k in range(40)]
    ones, zeros = [1.0] * 40, [0.0] * 40
    quarter = [1.0 if k % 4 == 0 else 0.0 for k in range(40)]
    per = {"ranking": {"base": ones, "unlearned": quarter, "reference": quarter, "reference_2": quarter}}
    beh = LensResult(name="behavior", recoveries=[rec("ranking", 0.0)],
                     data={"per_item": {"ids": ids, "readings": per},
                           "retain": {"base": {"score": 1.0}, "unlearned": {"score": 1.0}}})
    g = group_verdicts({"behavior": beh}, {"attribute=a": ids[:20]}, {i: 0.25 for i in ids})
    assert g[0].scope == "attribute=a"
    # U equals both references on the group's items: recovery 0, so not NOT_UNLEARNED
    assert g[0].label == "INCONCLUSIVE" and "DELETED requires" in g[0].reason, g[0].reason
    per["ranking"]["unlearned"] = ones
    g = group_verdicts({"behavior": beh}, {"attribute=a": ids[:20]}, {i: 0.25 for i in ids})
    assert g[0].label == "NOT_UNLEARNED", g[0].reason
    # without references the stored per-item null is the end point
    per["ranking"] = {"base": ones, "unlearned": zeros, "null": zeros}
    beh.recoveries = [rec("ranking", 0.0, end_point="answer prior")]
    g = group_verdicts({"behavior": beh}, {"attribute=a": ids[:20]}, {i: 0.25 for i in ids})
    assert f"{NO_REFERENCE} was given: {NO_REFERENCE_VERDICT}" in g[0].reason
