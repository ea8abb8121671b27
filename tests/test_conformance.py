"""Registry conformance: every registered lens against knowledge-free nulls (docs/verdict.md).

For every lens in the registry, on organisms trained in this test session:

- never-trained models that differ from the reference only in being more random
  (unembedding × 0.5: temperature 2), more peaked (× 2: temperature 0.5), or in their prior
  over answer values, read a recovery whose CI covers 0, with the unscaled never-trained
  ``reference_a`` as N: randomness and priors are not knowledge;
- a construction-SUPPRESSED organism still reads recovery through the lens.

N for the temperature copies is the unscaled never-trained model they were made from
(``reference_b``), as the issue states the null: they differ from it only in temperature.
The skewed-prior model has no unscaled twin; its N is both never-trained references
(``reference_a`` and ``reference_b``), so the spread between never-trained models enters
its CIs as it does in a user's audit with several references. The construction-SUPPRESSED
organisms are audited with N = ``reference_a``.

Lens grids are lighter than the defaults (this is about nulls, not attack strength).
"""

from __future__ import annotations

import math

import pytest

from audit.registry import available_lenses
from audit.verdict import Thresholds

NULLS = ("reference_b_t05", "reference_b_t2", "reference_skewed")
REFERENCES = {"reference_b_t05": ["reference_b"], "reference_b_t2": ["reference_b"],
              "reference_skewed": ["reference_a", "reference_b"]}
SUPPRESSED = ("late_layers", "head_only")
FLOAT_TOL = 1e-6
# Readings measured to miss the null, kept visible (xfail names the measured value) rather
# than dropped; each must still lie inside the deletion band (asserted before the xfail).
# Before behavior's ranking was read with each model's prior removed (docs/verdict.md),
# the skewed-prior model's hard ranking read -0.11 (CI -0.25 to -0.02) here.
# Two measured on the suite trained on an Intel Xeon (2026-12-07; the AMD EPYC suites of
# earlier sessions read neither): small and far inside the deletion band, but their 95% CIs
# exclude 0. Among the ~20 null readings checked here about one such miss is expected by
# chance alone; the leak@1 one also has a mechanism: a never-trained model whose prior
# slightly favours the answer values names them a little more often than the distractors
# when it samples more randomly (temperature 2), so the contrast is not exactly
# temperature-free (docs/lenses.md).
KNOWN_MISSES: dict[tuple[str, str, str], str] = {
    ("reference_b_t05", "relearn", "relearn split (A→B, B→A) 10 steps"):
        "temperature-0.5 copy relearns 1% more than its unscaled twin (CI just above 0)",
    ("reference_b_t2", "leak_at_k", "leak@1 (answer − distractors)"):
        "temperature-2 copy's leak@1 contrast sits 0.04 above its unscaled twin's",
}
# lenses that return no recoveries by design (support only)
NO_RECOVERY = {"similarity"}
LIGHT = {
    "steering": {"scales": [1.0], "max_layers": 2},
    "quantization": {"bits": [4], "schemes": ["sym"], "bitsandbytes": False},
    "relearn": {"steps": [10], "retain_variant": False, "side_effect_items": 24},
    "leak_at_k": {"n": 16},
    "sae": {"scales": [1.0, 4.0]},
    # one subject-replaced name per item for each attack's prior, not two (each is a scoring
    # pass per attack, model and item set: the lens's largest cost)
    "prompt_attacks": {"placeholders": 1},
}


@pytest.fixture(scope="module")
def audits(suite, manifest, tmp_path_factory):
    from audit.config import AuditConfig
    from audit.run import run

    missing = [u for u in (*NULLS, *SUPPRESSED) if u not in manifest["checkpoints"]]
    assert not missing, f"the organism suite lacks {missing}"
    tmp = tmp_path_factory.mktemp("conformance")
    texts = [str(suite / f) for f in ("train_forget.txt", "train_retain.txt")]
    opts = {**LIGHT, "sae": {**LIGHT["sae"], "text": texts}}
    out = {}
    for u in (*NULLS, *SUPPRESSED):
        refs = [str(suite / r) for r in REFERENCES.get(u, ["reference_a"])]
        cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / u), reference=refs,
                          forget=str(suite / "forget.jsonl"), retain=str(suite / "retain.jsonl"),
                          out=str(tmp / u), lenses=["full"], lens_options=opts)
        out[u] = run(cfg)
    return out


def test_every_registered_lens_ran(audits):
    for u, log in audits.items():
        assert set(log.lenses) == set(available_lenses()), u
        assert {k: v.error for k, v in log.lenses.items() if v.error} == {}, u


@pytest.mark.parametrize("lens", sorted(set(available_lenses()) - NO_RECOVERY))
@pytest.mark.parametrize("organism", NULLS)
def test_a_never_trained_model_reads_no_recovery(audits, organism, lens):
    res = audits[organism].lenses[lens]
    assert res.recoveries, (organism, lens)
    misses = []
    for r in res.recoveries:
        if not (r.informative and math.isfinite(r.value)):
            continue
        if r.kind == "gate":
            # what U says as it is (behavior's raw ranking) decides NOT_UNLEARNED only: a prior
            # over answer values may move it (the skewed model's reads about -0.1), but it must
            # never reach the gate
            assert r.value < 0.5, (organism, lens, r.reading, r.value)
            continue
        # FLOAT_TOL: a quantized copy of a scaled model reads U = N up to rounding (R ~ 1e-9)
        if not (r.ci_low <= FLOAT_TOL and r.ci_high >= -FLOAT_TOL):
            misses.append((r.reading, round(r.value, 3), round(r.ci_low, 3), round(r.ci_high, 3)))
    known = [m for m in misses if (organism, lens, m[0]) in KNOWN_MISSES]
    band = Thresholds().tau_d
    assert all(-band <= lo and hi <= band for _, _, lo, hi in known), (organism, lens, known)
    if misses and misses == known:
        pytest.xfail(f"{KNOWN_MISSES[(organism, lens, known[0][0])]}: measured {known}")
    assert not misses, (organism, lens, misses)


@pytest.mark.parametrize("organism", NULLS)
def test_a_never_trained_model_is_never_suppressed_or_not_unlearned(audits, organism):
    v = audits[organism].verdicts[0]
    assert v.label not in ("SUPPRESSED", "NOT_UNLEARNED"), (organism, v.reason)


@pytest.mark.parametrize("lens", sorted(set(available_lenses()) - NO_RECOVERY - {"behavior"}))
def test_a_suppressed_organism_reads_recovery(audits, lens):
    # behavior is the reading suppression hides; every other lens must see through one of them
    best = []
    for u in SUPPRESSED:
        for r in audits[u].lenses[lens].recoveries:
            if r.informative and math.isfinite(r.value):
                best.append((r.ci_low, u, r.reading, r.value))
    assert best, lens
    lo, u, reading, value = max(best)
    # "reads recovery": a CI above 0 (light grids here; the verdict's own bar, tau_s, is
    # tested on the default grids in tests/test_verdicts.py)
    assert lo > 0.0, (lens, u, reading, value, lo)


@pytest.mark.parametrize("organism", SUPPRESSED)
def test_a_suppressed_construction_gets_its_label_with_its_evidence(audits, manifest, organism):
    # the label the manifest measured (SUPPRESSED on the demo suite), from a lens other than
    # behavior, whose reason says what it recovered (tests/test_verdicts.py does the same for
    # subject_offset at the default grids)
    v = audits[organism].verdicts[0]
    assert v.label == manifest["checkpoints"][organism]["truth"], (organism, v.reason)
    if v.label == "SUPPRESSED":
        assert v.evidence and v.evidence[0].lens != "behavior" and "recovers" in v.reason, v.reason


def test_every_reading_records_its_no_reference_estimate(audits):
    """Each recovery keeps the estimate that would stand in for N without a reference
    (``score_null``), so ``benchmarks/null_estimate.py`` can set it against the real N."""
    missing = [(u, name, r.reading) for u, log in audits.items() for name, res in log.lenses.items()
               for r in res.recoveries if r.score_null is None or not math.isfinite(r.score_null)]
    assert not missing, missing
