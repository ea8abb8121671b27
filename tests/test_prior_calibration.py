"""Behavior's ranking with each model's prior over answer values removed (docs/verdict.md)."""

from __future__ import annotations

import numpy as np
import pytest

from audit.context import AuditContext, placeholder_names


def test_placeholders_recombine_subjects_and_are_never_a_known_subject():
    pool = ["davair brupin", "kaistoux maigai", "vikrix boukon", "tepun vaifar"]
    known = {p.lower() for p in pool} | {"davair maigai"}
    names = placeholder_names(pool, known, 4, seed=3)
    assert len(names) == 4 and len(set(names)) == 4
    firsts, lasts = {p.split()[0] for p in pool}, {p.split()[-1] for p in pool}
    for n in names:
        assert n.lower() not in known
        first, last = n.split()
        assert first in firsts and last in lasts
    assert placeholder_names(pool, known, 4, seed=3) == names  # seeded
    one_word = placeholder_names(["Albania", "Austria", "Belgium"], {"albania", "austria", "belgium"}, 3, seed=0)
    assert one_word and all(n.lower() not in {"albania", "austria", "belgium"} for n in one_word)


@pytest.fixture(scope="module")
def ctx(suite, manifest):
    from audit.config import AuditConfig
    from audit.models import load_model
    from audit.sources import load_item_set

    for name in ("reference_b", "reference_b_t2", "reference_skewed"):
        assert name in manifest["checkpoints"], name
    items = {s: load_item_set(suite / f"{s}.jsonl", role=s).items for s in ("forget", "retain")}
    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / "reference_b_t2"),
                      reference=[str(suite / "reference_b")], forget=str(suite / "forget.jsonl"),
                      retain=str(suite / "retain.jsonl"), out="/nonexistent", lenses=["behavior"])
    models = {"base": load_model(suite / "base"), "unlearned": load_model(suite / "reference_b_t2"),
              "reference": load_model(suite / "reference_b")}
    return AuditContext(cfg, models, items)


def test_every_organism_item_is_calibrated_with_placeholders_that_replace_its_subject(ctx):
    ph = ctx.placeholder_items("forget")
    assert ctx.calibrated_items("forget") == len(ctx.items["forget"])
    for it, copies in zip(ctx.items["forget"], ph, strict=True):
        assert copies and all(it.subject not in c.prompt and c.candidates == it.candidates for c in copies)


def test_calibrated_ranking_ignores_sharpness(ctx):
    # reference_b_t2 is reference_b with its unembedding scaled by 0.5: same knowledge
    a, b = np.asarray(ctx.calibrated("unlearned")), np.asarray(ctx.calibrated("reference"))
    assert np.array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(a - a.mean(1, keepdims=True), 0.5 * (b - b.mean(1, keepdims=True)), atol=2e-3)


def test_calibration_keeps_what_base_knows(ctx):
    from audit.scoring import candidate_logprobs_to_result

    base = candidate_logprobs_to_result(ctx.calibrated("base"), ctx.score("base", "forget").greedy).score
    ref = candidate_logprobs_to_result(ctx.calibrated("reference"), ctx.score("reference", "forget").greedy).score
    chance = float(ctx.chance("forget").mean())
    assert base > 0.8 and abs(ref - chance) < 0.1, (base, ref, chance)
