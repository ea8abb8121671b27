"""The shared cross-fitting of intervention lenses (audit/crossfit.py, issue 20), on hand-made arrays.

Steering and the SAE lens both choose their reported setting with :class:`audit.crossfit.Sweep`;
these tests pin what that choice reads (only the other folds, the side-effect tolerance, the
tie rule) and the numbers it reports (control thresholds, curve rows), with no model.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from audit.crossfit import (
    OutOfFold,
    Sweep,
    control_recoveries,
    edited_recovery,
    percentile,
    require_folds,
    subject_folds,
)
from audit.errors import LensError
from audit.items import KnowledgeItem

FOLD_F = np.array([0, 0, 0, 0, 1, 1, 1, 1])
FOLD_R = np.array([0, 0, 1, 1])


def _sweep(score: dict, *, controls: dict | None = None, retain: dict | None = None, tolerance: float = 0.05,
           order: list | None = None) -> Sweep:
    """A sweep over 8 forget items (2 folds of 4) and 4 retain items (2 folds of 2): controls
    default to 20 controls scoring 0.2 everywhere, retain to no side effect."""
    cands = order or list(score)
    return Sweep(
        candidates=cands,
        score={k: np.asarray(v, dtype=float) for k, v in score.items()},
        accuracy={k: (np.asarray(v, dtype=float) > 0.5).astype(float) for k, v in score.items()},
        controls=controls or {k: np.full((20, 8), 0.2) for k in cands},
        retain=retain or {k: np.ones(4) for k in cands},
        retain_plain=np.ones(4),
        tolerance=tolerance,
    )


# a is strong on fold 0's items, b on fold 1's: a choice read in fold would pick (a, b)
A = [0.9] * 4 + [0.3] * 4
B = [0.3] * 4 + [0.8] * 4


def test_each_fold_is_chosen_on_the_other_folds_only():
    sw = _sweep({"a": A, "b": B})
    assert sw.excess_on("a", FOLD_F == 0) == pytest.approx(0.7)
    assert sw.excess_on("b", FOLD_F == 1) == pytest.approx(0.6)
    assert sw.choose(FOLD_F, FOLD_R, 2) == ["b", "a"]
    # a fold's own items cannot move its choice: make a perfect on fold 0, then on fold 1
    a0 = np.array(A)
    a0[FOLD_F == 0] = 1.0
    assert _sweep({"a": a0, "b": B}).choose(FOLD_F, FOLD_R, 2)[0] == "b"
    b1 = np.array(B)
    b1[FOLD_F == 1] = 0.0
    assert _sweep({"a": A, "b": b1}).choose(FOLD_F, FOLD_R, 2) == ["a", "a"]  # fold 0 now reads b as worse


def test_side_effects_beyond_tolerance_are_passed_over_unless_all_exceed_it():
    c = [0.95] * 8  # the largest excess everywhere
    harm = {"a": np.ones(4), "b": np.ones(4), "c": np.array([0.5, 0.5, 0.5, 0.5])}  # c drops retain by 0.5
    assert _sweep({"a": A, "b": B, "c": c}, retain=harm).choose(FOLD_F, FOLD_R, 2) == ["b", "a"]
    assert _sweep({"a": A, "b": B, "c": c}, retain=harm, tolerance=0.5).choose(FOLD_F, FOLD_R, 2) == ["c", "c"]
    # the drop is read on the other folds too: c harms only fold 1's retain items
    fold1_harm = {**harm, "c": np.array([1.0, 1.0, 0.0, 0.0])}
    assert _sweep({"a": A, "b": B, "c": c}, retain=fold1_harm).choose(FOLD_F, FOLD_R, 2) == ["b", "c"]
    # every candidate over the tolerance: the best excess among all of them
    all_harm = {k: np.zeros(4) for k in "abc"}
    assert _sweep({"a": A, "b": B, "c": c}, retain=all_harm).choose(FOLD_F, FOLD_R, 2) == ["c", "c"]
    assert _sweep({"a": A}, retain={"a": np.zeros(4)}).drop_on("a", FOLD_R == 0) == pytest.approx(1.0)
    assert _sweep({"a": A}).drop_on("a", np.zeros(4, dtype=bool)) == 0.0  # no retain items: no drop


def test_ties_go_to_the_earliest_candidate():
    same = [0.6] * 8
    assert _sweep({"x": same, "y": same}).choose(FOLD_F, FOLD_R, 2) == ["x", "x"]
    assert _sweep({"x": same, "y": same}, order=["y", "x"]).choose(FOLD_F, FOLD_R, 2) == ["y", "y"]
    # with the SAE lens's candidates (scales, ascending) the earliest is the smallest scale
    assert _sweep({0.5: same, 1.0: same, 2.0: [0.1] * 8}).choose(FOLD_F, FOLD_R, 2) == [0.5, 0.5]
    # a NaN excess never wins over a finite one held before it
    assert _sweep({"x": same, "y": [np.nan] * 8}).choose(FOLD_F, FOLD_R, 2) == ["x", "x"]


def test_the_shared_rule_matches_both_former_copies():
    """The steering lens broke ties by candidate order, the SAE lens by the smaller scale; on the
    SAE's ascending, distinct scales the two are one rule, and the shared one is it."""
    rng = np.random.default_rng(0)
    scales = [0.5, 1.0, 2.0, 4.0]
    n_ties = 0
    for _ in range(300):
        # coarse scores and controls, so that equal excesses are common
        score = {s: rng.integers(0, 3, 8) / 2 for s in scales}
        controls = {s: rng.integers(0, 2, (16, 8)) / 2 for s in scales}
        retain = {s: rng.integers(0, 2, 4).astype(float) for s in scales}
        sw = Sweep(scales, score, score, controls, retain, np.ones(4), tolerance=0.5)
        got = sw.choose(FOLD_F, FOLD_R, 2)
        for e in range(2):
            mf, mr = FOLD_F != e, FOLD_R != e
            ok = [s for s in scales if sw.drop_on(s, mr) <= 0.5]
            sae_rule = max(ok or scales, key=lambda s: (sw.excess_on(s, mf), -s))
            steering_rule = max(ok or scales, key=lambda s: (sw.excess_on(s, mf), -scales.index(s)))
            assert got[e] == sae_rule == steering_rule
            best = max(sw.excess_on(s, mf) for s in (ok or scales))
            n_ties += sum(sw.excess_on(s, mf) == best for s in (ok or scales)) > 1
    assert n_ties > 50  # the draw did exercise ties


def test_out_of_fold_reads_each_item_under_its_folds_choice():
    rng = np.random.default_rng(1)
    score = {k: rng.random(8) for k in "ab"}
    controls = {k: rng.random((20, 8)) for k in "ab"}
    retain = {k: rng.random(4) for k in "ab"}
    sw = _sweep(score, controls=controls, retain=retain, tolerance=1.0)
    oof = sw.out_of_fold(["b", "a"], FOLD_F, FOLD_R)
    assert isinstance(oof, OutOfFold)
    np.testing.assert_array_equal(oof.score[:4], score["b"][:4])
    np.testing.assert_array_equal(oof.score[4:], score["a"][4:])
    np.testing.assert_array_equal(oof.controls[:, :4], controls["b"][:, :4])
    np.testing.assert_array_equal(oof.controls[:, 4:], controls["a"][:, 4:])
    np.testing.assert_array_equal(oof.retain, [*retain["b"][:2], *retain["a"][2:]])


def test_control_recoveries_and_threshold():
    controls = np.array([[0.2] * 4, [0.5] * 4, [0.8] * 4])
    np.testing.assert_allclose(control_recoveries(controls, end=0.2, gap=0.6), [0.0, 0.5, 1.0])
    assert np.isnan(control_recoveries(controls, end=0.2, gap=0.0)).all()
    assert len(control_recoveries(controls, end=0.2, gap=0.0)) == 3
    assert percentile(np.array([0.0, 0.5, 1.0]), 95) == pytest.approx(0.95)
    assert np.isnan(percentile(np.array([]), 95))


def test_curve_row():
    # 20 controls whose mean scores are 0, 0.05, ..., 0.95: p5 0.0475, p50 0.475, p95 0.9025
    ctrl = np.repeat((np.arange(20) / 20)[:, None], 8, axis=1)
    sw = _sweep({"a": [0.8] * 8}, controls={"a": ctrl}, retain={"a": np.array([1.0, 1.0, 0.8, 0.8])})
    row = sw.curve_row("a", end=0.2, gap=0.6)
    assert row["score"] == pytest.approx(0.8)
    assert row["accuracy"] == 1.0
    assert (row["control_p5"], row["control_p50"], row["control_p95"]) == pytest.approx((0.0475, 0.475, 0.9025))
    assert row["recovery"] == pytest.approx(1.0)
    assert row["control_threshold"] == pytest.approx((0.9025 - 0.2) / 0.6)
    assert row["excess"] == pytest.approx(1.0 - (0.9025 - 0.2) / 0.6)
    assert row["retain_accuracy"] == pytest.approx(0.9)
    assert row["retain_drop"] == pytest.approx(0.1)
    assert row["side_effect_ok"] is False  # 0.1 > the 0.05 tolerance
    flat = sw.curve_row("a", end=0.2, gap=0.0)
    assert np.isnan(flat["recovery"]) and np.isnan(flat["control_threshold"])
    assert flat["control_p95"] == pytest.approx(0.9025)  # the raw percentiles need no gap


def test_chosen_rows():
    sw = _sweep({"a": A, "b": B}, retain={"a": np.array([1.0, 1.0, 0.9, 0.9]), "b": np.ones(4)}, tolerance=0.5)
    rows = sw.chosen_rows(["b", "a"], FOLD_F, FOLD_R, lambda k: {"label": k.upper()})
    assert [r["fold"] for r in rows] == [1, 2]
    assert [r["label"] for r in rows] == ["B", "A"]
    assert [r["n_items"] for r in rows] == [4, 4]
    assert rows[0]["other_folds_score_excess"] == pytest.approx(0.6)  # b on fold 1's items
    assert rows[1]["other_folds_score_excess"] == pytest.approx(0.7)  # a on fold 0's items
    assert rows[1]["other_folds_retain_drop"] == pytest.approx(0.0)  # a harms only fold 1's retain items
    assert list(rows[0]) == ["fold", "label", "n_items", "other_folds_score_excess", "other_folds_retain_drop"]


def _ctx(n: int, reference: bool) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(min_power=0.2), seed=0, has_reference=reference,
                           clusters=lambda _s: np.arange(n), null=lambda _s: np.full(n, 0.25))


def test_edited_recovery_reads_against_the_edited_end_point_and_its_controls():
    n = 40
    rng = np.random.default_rng(2)
    base, end = np.full(n, 0.9), np.full(n, 0.3)
    end_edited = end + 0.1  # the edit manufactures 0.1 of score in N
    oof = OutOfFold(score=np.full(n, 0.7) + rng.normal(0, 0.01, n),
                    controls=0.4 + rng.normal(0, 0.05, (16, n)), retain=np.full(6, 0.95))
    rec, ctrl_r, drop = edited_recovery(_ctx(n, True), base=base, end=end, end_edited=end_edited, oof=oof,
                                        retain_plain=np.ones(6), tolerance=0.1, n_boot=200, reading="r")
    # what the edit gives N is subtracted; the denominator is the unedited gap
    assert rec.value == pytest.approx((oof.score.mean() - 0.4) / 0.6)
    np.testing.assert_allclose(ctrl_r, (oof.controls.mean(1) - 0.4) / 0.6)
    assert rec.control_threshold == pytest.approx(np.percentile(ctrl_r, 95))
    assert rec.excess == pytest.approx(rec.value - rec.control_threshold)
    assert (rec.score_base, rec.score_reference) == pytest.approx((0.9, 0.4))
    assert drop == pytest.approx(0.05) and rec.side_effect_ok is True
    assert rec.reading == "r" and rec.end_point == "reference" and rec.score_null == pytest.approx(0.25)
    rec2, _, _ = edited_recovery(_ctx(n, False), base=base, end=end, end_edited=end, oof=oof,
                                 retain_plain=np.ones(6), tolerance=0.01, n_boot=200, reading="r")
    assert rec2.end_point == "answer prior" and rec2.side_effect_ok is False


def _item(i: int, subject: str | None) -> KnowledgeItem:
    return KnowledgeItem(id=f"i{i}", prompt="p", answer="a", distractors=["b", "c", "d"], subject=subject)


def test_folds_keep_a_subject_together_and_fill_every_fold():
    items = [_item(i, f"s{i // 3}") for i in range(18)] + [_item(100 + i, None) for i in range(4)]
    fold = subject_folds(items, 3, seed=0)
    for s in {it.subject for it in items if it.subject}:
        assert len({int(f) for f, it in zip(fold, items, strict=True) if it.subject == s}) == 1
    assert sorted(set(fold.tolist())) == [0, 1, 2]
    # 6 subjects and 4 untagged items (each its own group) over 3 folds: 10 groups, 4/3/3
    groups = {(it.subject or it.id): int(f) for f, it in zip(fold, items, strict=True)}
    assert sorted(np.bincount(list(groups.values()))) == [3, 3, 4]
    np.testing.assert_array_equal(fold, subject_folds(items, 3, seed=0))
    assert any((subject_folds(items, 3, seed=s) != fold).any() for s in range(1, 5))
    require_folds(fold, 3, "steering")
    with pytest.raises(LensError, match="steering needs forget items of at least 4 subjects for 4 folds"):
        require_folds(fold, 4, "steering")
