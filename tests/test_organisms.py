"""The default organism suite, measured: SPEC §6 and the foundation issue's properties."""

from __future__ import annotations

import json

from audit.sources import load_items

EXPECTED = {
    "base", "reference_a", "reference_b", "head_only", "late_layers", "subject_offset", "noop",
    "ga_gentle", "ga_strong", "graddiff_gentle", "graddiff_strong", "npo_gentle", "npo_strong",
    "rmu_gentle", "rmu_strong", "reference_b_t2", "reference_b_t05", "reference_skewed",
}
NULLS = ("reference_b_t2", "reference_b_t05", "reference_skewed")


def test_suite_has_every_checkpoint_as_a_real_hf_checkpoint(suite, manifest):
    assert set(manifest["checkpoints"]) == EXPECTED
    for name, entry in manifest["checkpoints"].items():
        d = suite / entry["path"]
        assert (d / "config.json").is_file(), name
        assert (d / "model.safetensors").is_file(), name
        assert (d / "tokenizer.json").is_file(), name
        assert json.loads((d / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_base_knows_forget_and_retain(manifest):
    b = manifest["checkpoints"]["base"]
    assert b["forget_score"] >= 0.95
    assert b["retain_score"] >= 0.95


def test_references_never_learned_the_forget_set(manifest):
    chance = manifest["chance"]
    for k in ("reference_a", "reference_b", *NULLS):
        r = manifest["checkpoints"][k]
        assert r["forget_score"] <= chance + 0.1, (k, r)
        assert r["retain_score"] >= 0.9, (k, r)


def test_ground_truth_labels_follow_the_measurements(manifest):
    c = manifest["checkpoints"]
    assert c["reference_b"]["truth"] == "DELETED"
    assert c["noop"]["truth"] == "NOT_UNLEARNED" and c["noop"]["forget_score"] >= 0.9
    for k in ("head_only", "late_layers", "subject_offset"):
        e = c[k]
        expected = "SUPPRESSED" if max(e["behavior_recovery"].values()) < 0.5 else "NOT_UNLEARNED"
        assert e["truth"] == expected, (k, e)
    # the subject offset touches only forget-subject embeddings: retain is exactly kept
    assert abs(c["subject_offset"]["retain_score"] - c["base"]["retain_score"]) < 1e-9
    for k in NULLS:
        assert c[k]["truth"] == "DELETED" and c[k]["role"] == "reference", k
    for k in EXPECTED - {"base", "reference_a", "reference_b", "head_only", "late_layers", "subject_offset", "noop",
                         *NULLS}:
        assert c[k]["truth"] is None and c[k]["role"] == "method"


def _load(suite, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(suite / name).eval(), AutoTokenizer.from_pretrained(suite / name)


def test_temperature_nulls_are_reference_b_at_another_temperature(suite, manifest):
    # the unembedding scaled by 0.5 / 2 (temperature 2 / 0.5): every other weight equal, the same
    # ranking of the (single-token) candidates and the same greedy answers, flatter / sharper
    # candidate probabilities (softmax entropy rises with temperature)
    import numpy as np
    import torch

    from audit.lab.organisms import _forward
    from audit.scoring import score_items

    items = load_items(suite / manifest["forget"]) + load_items(suite / manifest["retain"])

    def entropy(r):
        z = np.asarray(r.candidate_logprobs, dtype=float)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(-(p * np.log(p)).sum(1).mean())

    ref, tok = _load(suite, "reference_b")
    r0 = score_items(_forward(ref), tok, items)
    ent = {}
    for name, scale in (("reference_b_t2", 0.5), ("reference_b_t05", 2.0)):
        m, _ = _load(suite, name)
        sd, sd0 = m.state_dict(), ref.state_dict()
        for k, w in sd.items():
            want = sd0[k] * scale if k == "lm_head.weight" else sd0[k]
            assert torch.allclose(w, want, rtol=1e-6, atol=0), (name, k)
        r = score_items(_forward(m), tok, items)
        assert [sorted(range(4), key=lambda i: -x[i]) for x in r.candidate_logprobs] == \
            [sorted(range(4), key=lambda i: -x[i]) for x in r0.candidate_logprobs], name
        assert (r.greedy == r0.greedy).all(), name
        assert manifest["checkpoints"][name]["same_answers_as_reference_b"] == {"ranking": True, "greedy": True}
        ent[name] = entropy(r)
    assert ent["reference_b_t2"] > entropy(r0) > ent["reference_b_t05"], (ent, entropy(r0))


def test_skewed_reference_has_a_skewed_prior_and_intact_retain(suite, manifest):
    # measured (seed 0): it ranks the skew value first on 1.00 of the forget items that offer
    # it, reference_a/b on 0.2-0.5 (a flat prior: 0.25); its retain score stays ≥ 0.95
    from audit.lab.organisms import prior_skew

    c = manifest["checkpoints"]
    e = c["reference_skewed"]
    forget = load_items(suite / manifest["forget"])
    m, tok = _load(suite, "reference_skewed")
    skew = prior_skew(m, tok, forget, e["params"]["skew_values"])
    assert skew == e["prior_skew"]["forget"]
    assert skew["n_items_with_value"] >= 30
    assert skew["top_rate_when_candidate"] >= 0.8, skew
    for k in ("reference_a_forget", "reference_b_forget"):
        assert skew["top_rate_when_candidate"] >= e["prior_skew"][k]["top_rate_when_candidate"] + 0.25, k
    # retain people's facts untouched: the retain score of a never-trained model, and on retain
    # items the skew value comes first about as often as it is the true answer (not the prior)
    assert e["retain_score"] >= 0.95 and e["retain_score"] >= c["reference_b"]["retain_score"] - 0.05
    values = e["params"]["skew_values"]
    offering = [it for it in load_items(suite / manifest["retain"]) if values[it.attribute] in (it.answer, *it.distractors)]
    truth_rate = sum(it.answer == values[it.attribute] for it in offering) / len(offering)
    assert abs(e["prior_skew"]["retain"]["top_rate_when_candidate"] - truth_rate) <= 0.1, (e["prior_skew"], truth_rate)


def test_items_use_the_schema_and_held_out_template(suite, manifest):
    forget = load_items(suite / manifest["forget"])
    retain = load_items(suite / manifest["retain"])
    w = manifest["config"]["world"]
    assert len(forget) == w["n_forget"] * len(w["attributes"]) and len(retain) >= 90
    assert {i.subject for i in forget}.isdisjoint({i.subject for i in retain})
    train = (suite / manifest["train_forget"]).read_text() + (suite / manifest["train_retain"]).read_text()
    # no evaluated question (prompt + answer) appears in any training text
    for it in forget + retain:
        assert f"{it.prompt} {it.answer}" not in train
    assert all(len(i.distractors) == 3 and i.attribute for i in forget)


def test_suite_is_cached(suite):
    from audit.lab.organisms import SuiteConfig, build_suite

    before = (suite / "base" / "model.safetensors").stat().st_mtime_ns
    build_suite(suite, SuiteConfig(seed=0))
    assert (suite / "base" / "model.safetensors").stat().st_mtime_ns == before


def test_world_balances_each_attribute_within_each_group():
    # a never-trained model answers from its prior over values; balanced answers make that
    # prior worth chance, so two never-trained seeds agree (docs/calibration.md)
    from collections import Counter

    from audit.lab.world import WorldConfig, make_world

    w = make_world(WorldConfig(n_people=100, n_forget=40, n_qa=30, seed=3, balanced=True))
    for group in ("forget", "qa", "retain"):
        for a in ("city", "job", "sport"):
            counts = Counter(p.facts[a] for p in w.people_in(group))
            assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1, (group, a, counts)
    skewed = make_world(WorldConfig(n_people=100, n_forget=40, n_qa=30, seed=3))
    assert [p.name for p in skewed.people] == [p.name for p in w.people]


def test_unbalanced_world_draws_are_unchanged():
    # a suite's cache key omits `balanced` when it is off, so such a world must be drawn
    # exactly as before the option existed (fingerprint of the default world, seed 0)
    import hashlib

    from audit.lab.world import WorldConfig, make_world

    w = make_world(WorldConfig())
    blob = json.dumps([(p.name, p.facts, p.group) for p in w.people])
    assert hashlib.sha256(blob.encode()).hexdigest()[:16] == "90e85dc2e3bd2b40"
