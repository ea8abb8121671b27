"""The membership-inference lens (``probes/mia.py``) on the organism suite, B = base, N = reference_a.

Measured properties (docs/lenses.md, "mia"): the lens reads B far above N; never-trained
models (another seed, the same at sampling temperature 0.5 and 2, a skewed answer prior)
read a recovery whose CI covers 0; a construction-SUPPRESSED organism reads recovery above
its shuffled-label control; every reading is support only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

NEVER_TRAINED = ("reference_b", "reference_b_t05", "reference_b_t2", "reference_skewed")
SUPPRESSED = ("head_only", "late_layers", "subject_offset")
OPTIONS = {"mia": {"n_boot": 500}}


def _audit(suite, out, unlearned: str, reference: list[str] | None = None, **kw):
    from audit.config import AuditConfig
    from audit.run import run

    refs = [str(suite / r) for r in (["reference_a"] if reference is None else reference)]
    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / unlearned), reference=refs,
                      forget=str(suite / "forget.jsonl"), retain=str(suite / "retain.jsonl"), out=str(out),
                      lenses=["mia"], lens_options=OPTIONS, **kw)
    res = run(cfg).lenses["mia"]
    assert res.error is None, res.error
    return res


@pytest.fixture(scope="module")
def audits(suite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mia")
    return {u: _audit(suite, tmp / u, u) for u in (*NEVER_TRAINED, *SUPPRESSED)}


def test_every_reading_is_support_only_and_fits_its_data_model(audits):
    from audit.lensdata import MiaData, check_lens_data

    for u, res in audits.items():
        assert [r.kind for r in res.recoveries] == ["support"] * 4, u
        assert res.recoveries[0].reading.startswith("Min-K%++"), u  # the primary reading first
        d = check_lens_data(res)
        assert isinstance(d, MiaData) and d.primary == res.recoveries[0].reading
        assert d.fallback_items == 0 and d.n_counterfactuals >= 3
        assert any("support only" in n for n in res.notes)


def test_the_lens_reads_b_far_above_n(audits):
    for res in audits.values():
        for r in res.recoveries:
            assert r.informative, r
            assert r.score_base >= 0.9 and abs(r.score_reference - 0.5) <= 0.05, r
            assert r.score_null == 0.5


@pytest.mark.parametrize("organism", NEVER_TRAINED)
def test_a_never_trained_model_reads_no_recovery(audits, organism):
    for r in audits[organism].recoveries:
        assert r.ci_low <= 0.0 <= r.ci_high, (organism, r.reading, r.value, r.ci_low, r.ci_high)
        assert r.side_effect_ok, (organism, r.reading)  # its retain AUC is B's


def test_a_suppressed_organism_reads_recovery_above_its_control(audits):
    above = []
    for u in SUPPRESSED:
        r = audits[u].recoveries[0]
        assert r.control_threshold is not None and r.excess is not None, u
        if r.ci_low > r.control_threshold:
            above.append((u, round(r.value, 3), round(r.ci_low, 3), round(r.control_threshold, 3)))
    assert above, [(u, audits[u].recoveries[0]) for u in SUPPRESSED]


def test_never_trained_controls_are_small(audits):
    # the shuffled-label control of a model that cannot tell true from swapped texts sits near 0
    for u in NEVER_TRAINED:
        r = audits[u].recoveries[0]
        assert r.control_threshold is not None and abs(r.control_threshold) < 0.25, (u, r.control_threshold)


def test_without_a_reference_the_end_point_is_the_exchangeable_auc(suite, tmp_path):
    res = _audit(suite, tmp_path / "noref", "head_only", reference=[])
    r = res.recoveries[0]
    assert r.end_point.startswith("exchangeable") and r.score_reference == 0.5
    assert r.informative and r.ci_low > 0
    assert res.data["per_item"]["readings"][r.reading]["null"] == [0.5] * len(res.data["per_item"]["ids"])


def test_low_memory_reads_the_same_numbers(suite, tmp_path, monkeypatch, audits):
    monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / "cache"))  # computed afresh, one model resident at a time
    res = _audit(suite, tmp_path / "low", "head_only", low_memory=True)
    for a, b in zip(res.recoveries, audits["head_only"].recoveries, strict=True):
        assert math.isclose(a.value, b.value, abs_tol=1e-9) and a.reading == b.reading


def test_the_pairing_is_symmetric_so_a_prior_over_answer_values_reads_one_half():
    """A model that scores a text only by its answer value (any prior, any length bias) wins
    exactly half of all comparisons: whenever item j's answer is item i's counterfactual, i's is j's."""
    from audit.items import KnowledgeItem
    from probes.mia import _beats, counterfactual_design

    rng = np.random.default_rng(0)
    values = ["paris", "rome", "oslo", "lima", "cairo"]
    items = [KnowledgeItem(id=f"i{i}", prompt=f"where does p{i} live ?", answer=str(rng.choice(values, p=[.5, .2, .1, .1, .1])),
                           distractors=["x", "y", "z"], attribute="city") for i in range(40)]
    d = counterfactual_design(items, rounds=4, seed=3)
    prior = {v: float(rng.normal()) for v in values}
    wins = total = 0.0
    for it, vals, w in zip(items, d.values, d.weights, strict=True):
        assert vals[0] == it.answer and it.answer not in vals[1:]
        x = np.array([prior[v] for v in vals])
        wins += float((_beats(x[0], x[1:]) * np.asarray(w)).sum())
        total += sum(w)
    assert total > 0 and wins == pytest.approx(total / 2)
