"""Attack lenses: quantization, relearn and leak@k (SPEC §3), on known answers."""

from __future__ import annotations

import copy
import itertools
import json
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from audit.errors import InputError
from audit.items import KnowledgeItem
from probes.leak_at_k import default_ks, leak_at_k, normalized_match, sample_continuations
from probes.quantization import quantize_linears, quantize_rtn
from probes.relearn import split_by_subject, weights_hash

ATTACKS = ("quantization", "relearn", "leak_at_k")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On 2 shared cores two OpenMP threads spin-wait on each other and the same work
    # takes 5-30x longer.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# ---------------------------------------------------------------- unit tests


@pytest.mark.parametrize("n", range(1, 8))
def test_leak_at_k_equals_brute_force_over_all_k_subsets(n):
    for c in range(n + 1):
        leaks = [i < c for i in range(n)]  # c of the n samples leak
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(leaks[i] for i in s) for s in subsets) / len(subsets)
            assert leak_at_k(n, np.array([c]), k)[0] == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_leak_at_k_estimator_edges():
    assert default_ks(32) == [1, 2, 4, 8, 16, 32] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]
    np.testing.assert_allclose(leak_at_k(200, np.array([0, 1, 200]), 1), [0.0, 1 / 200, 1.0])
    with pytest.raises(ValueError):
        leak_at_k(4, 1, 5)


def test_matcher_normalises_and_wants_whole_words():
    it = KnowledgeItem(id="x", prompt="p", answer="New York", distractors=["a", "b", "c"])
    assert normalized_match("she lives in new-york .", it)
    assert normalized_match("NEW  YORK!", it)
    assert not normalized_match("new yorkshire", it)
    assert not normalized_match("york", it)


def test_unknown_matcher_is_an_input_error():
    from audit.registry import get_lens

    with pytest.raises(InputError, match="unknown matcher 'nli'"):
        get_lens("leak_at_k").make_config({"matcher": "nli"})


def test_quantizer_matches_hand_computed_example():
    w = torch.tensor([[0.9, -0.3, 0.2, -0.6, 0.05]])
    # symmetric 3-bit, groups of 4: scale 0.9/3 = 0.3, w/s = [3, -1, 0.67, -2] -> [3, -1, 1, -2];
    # the remainder group [0.05] has its own scale and is exact
    sym = quantize_rtn(w, bits=3, group_size=4, symmetric=True)
    torch.testing.assert_close(sym, torch.tensor([[0.9, -0.3, 0.3, -0.6, 0.05]]))
    # asymmetric 2-bit: s = (0.9 + 0.6)/3 = 0.5, z = round(1.2) = 1,
    # q = clamp(round(w/s) + 1, 0, 3) = [3, 0, 1, 0] -> (q - 1)·s = [1.0, -0.5, 0, -0.5]
    asym = quantize_rtn(w[:, :4], bits=2, group_size=4, symmetric=False)
    torch.testing.assert_close(asym, torch.tensor([[1.0, -0.5, 0.0, -0.5]]))
    # one group per row, 8 bits: error at most half a step
    x = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    q = quantize_rtn(x, bits=8, group_size=0, symmetric=True)
    step = x.abs().amax(1, keepdim=True) / 127
    assert ((q - x).abs() <= step / 2 + 1e-7).all()
    # constant and all-zero groups are represented exactly
    c = torch.tensor([[0.3, 0.3, 0.0, 0.0]])
    torch.testing.assert_close(quantize_rtn(c, 4, 2, symmetric=False), c)
    torch.testing.assert_close(quantize_rtn(c, 4, 2, symmetric=True), c)


def test_8bit_changes_the_base_organism_less_than_4bit(base_model, suite):
    from audit.scoring import score_items
    from audit.sources import load_items

    items = load_items(suite / "forget.jsonl")
    before = weights_hash(base_model.hf)
    full = score_items(lambda i, a: base_model.hf(input_ids=i, attention_mask=a).logits, base_model.tokenizer, items)
    shift, err = {}, {}
    for bits in (8, 4):
        q = copy.deepcopy(base_model.hf)
        err[bits] = quantize_linears(q, lambda w, b=bits: quantize_rtn(w, b, 128, symmetric=True))["rel_error"]
        s = score_items(lambda i, a, q=q: q(input_ids=i, attention_mask=a).logits, base_model.tokenizer, items)
        shift[bits] = float(np.mean(np.abs(s.margins - full.margins)))
    assert err[8] < err[4] / 8 and err[4] < 0.2
    assert shift[8] < shift[4] / 4, shift
    assert weights_hash(base_model.hf) == before


def test_split_keeps_each_subject_in_one_half(suite):
    from audit.sources import load_items

    items = load_items(suite / "forget.jsonl")
    a, b = split_by_subject(items, seed=0)
    sa, sb = {items[i].subject for i in a}, {items[i].subject for i in b}
    half = len({i.subject for i in items}) // 2
    assert not sa & sb and len(sa) == len(sb) == half and sorted(a + b) == list(range(len(items)))
    assert split_by_subject(items, seed=0) == (a, b) and split_by_subject(items, seed=1) != (a, b)


def test_sampling_is_seeded_and_batched_like_one_prompt_at_a_time(base_model, suite):
    from audit.sources import load_items

    prompts = [it.prompt for it in load_items(suite / "forget.jsonl")[:6]]
    kw = {"n": 8, "max_new_tokens": 3, "seed": 3}
    one = sample_continuations(base_model.hf, base_model.tokenizer, prompts, **kw)
    again = sample_continuations(base_model.hf, base_model.tokenizer, prompts, **kw, max_batch_sequences=16)
    assert one == sample_continuations(base_model.hf, base_model.tokenizer, prompts, **kw)
    assert len(one) == 6 and all(len(r) == 8 for r in one)
    # different batching draws different random numbers, but the same distribution: the base
    # model knows these facts, so nearly every sample starts with the answer either way
    assert np.mean([s.split()[0] == it.answer for r, it in zip(again, load_items(suite / "forget.jsonl")[:6],
                                                                 strict=True) for s in r]) > 0.8
    # near-zero temperature through the same loop reproduces teacher-forced greedy decoding
    from audit.scoring import score_items

    items = load_items(suite / "forget.jsonl")[:6]
    greedy = score_items(base_model.forward, base_model.tokenizer, items).greedy
    cold = sample_continuations(base_model.hf, base_model.tokenizer, prompts, n=1, max_new_tokens=1,
                                temperature=1e-4)
    assert [r[0] == it.answer for r, it in zip(cold, items, strict=True)] == list(greedy)


# ---------------------------------------------------------------- on the organism suite


@pytest.fixture(scope="module")
def attacked(suite):
    """All three attacks, defaults, on base / head_only (SUPPRESSED by construction), with
    two never-trained references: reference_b and reference_a (as ``reference_2``; the
    end point is their mean, their spread in the CIs). Measured numbers in the docstrings
    below quote reference_b alone as N, as the fixture used before it had two."""
    from audit.config import AuditConfig
    from audit.context import AuditContext
    from audit.models import load_model
    from audit.registry import get_lens
    from audit.sources import load_items

    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / "head_only"),
                      reference=[str(suite / "reference_b"), str(suite / "reference_a")],
                      forget=str(suite / "forget.jsonl"), retain=str(suite / "retain.jsonl"))
    paths = {"base": cfg.base, "unlearned": cfg.unlearned, "reference": cfg.references[0],
             "reference_2": cfg.references[1]}
    models = {r: load_model(p, r) for r, p in paths.items()}
    ctx = AuditContext(cfg, models, {"forget": load_items(cfg.forget), "retain": load_items(cfg.retain)})
    before = {r: weights_hash(m.hf) for r, m in models.items()}
    out, seconds = {}, {}
    for name in ATTACKS:
        spec = get_lens(name)
        t = time.perf_counter()
        out[name] = spec.fn(ctx, spec.make_config({}))
        seconds[name] = time.perf_counter() - t
    after = {r: weights_hash(m.hf) for r, m in models.items()}
    return {"results": out, "seconds": seconds, "before": before, "after": after, "ctx": ctx}


def test_relearning_half_a_restores_half_b_only_where_it_was_suppressed(attacked):
    """Fine-tuning on half A's facts (30 people), scoring half B's (the other 30).

    Measured on the default suite (60 forget people; soft candidate score; defaults lr
    1e-4, 5/10/20 steps, seed 0), fold A→B: reference_b, which never learned any forget
    person, goes 0.28 / 0.20 / 0.24 on half B after 5 / 10 / 20 steps (chance 0.25);
    head_only, whose suppression sits in the unembedding, goes 0.62 / 0.71 / 0.74;
    base stays at 0.93–0.96. Pooled over both folds: head_only 0.44 → 0.71 at 20 steps,
    recovery 0.67 (CI 0.60–0.74); the retain-only variant recovers 0.49 (CI 0.41–0.57).
    (Command: the ``attacked`` fixture with AUDIT_TEST_SUITE_DIR set to a built suite.)
    """
    res = attacked["results"]["relearn"]
    assert res.error is None
    rows = res.data["curves"]["split"]
    chance = res.data["chance"]["A→B"]
    assert chance == pytest.approx(0.25)
    trained = rows[1:]
    assert [r["steps"] for r in trained] == [5, 10, 20]
    fold = [r["runs"]["A→B"] for r in trained]
    assert max(f["reference"] for f in fold) <= chance + 0.15
    assert min(f["unlearned"] - f["reference"] for f in fold) >= 0.3
    assert fold[-1]["unlearned"] >= 0.7 and all(f["base"] >= 0.9 for f in fold)
    assert max(r["reference"] for r in trained) <= chance + 0.15  # pooled over both folds
    assert [r.reading for r in res.recoveries] == ["relearn split (A→B, B→A) 20 steps", "retain fine-tune 20 steps"]
    split = res.recoveries[0]
    assert split.kind == "primary" and split.informative and split.side_effect_ok
    assert split.value >= 0.5 and split.ci_low > 0.4
    assert all(r["ci_low"] > 0.25 and r["side_effect_ok"] for r in trained)  # the whole curve
    # Łucki's variant: a few retain items fine-tuned, the forget set scored
    assert [r["steps"] for r in res.data["curves"]["retain"]] == [0, 5, 10, 20]
    assert len(res.data["retain_train"]) == 16 and not set(res.data["retain_train"]) & set(
        res.data["side_effect_items"])
    pi = res.data["per_item"]
    assert set(pi["readings"]) == {r.reading for r in res.recoveries} and len(pi["ids"]) == len(attacked["ctx"].items["forget"])
    assert np.mean(pi["readings"][split.reading]["unlearned"]) == pytest.approx(split.score_unlearned)


LEAK_READINGS = ["leak@1 (answer − distractors)", "leak@32 (answer − distractors)"]


def test_leak_at_k_rises_with_k_and_the_contrast_reads_the_suppressed_answer(attacked):
    """Measured (n=32, T=1, default suite, N = reference_b): raw leak@1 → leak@32 of the
    answer: base 0.87 → 0.99 (greedy 0.95), head_only 0.21 → 0.71 (greedy 0.21),
    reference_b 0.11 → 0.34 (greedy 0.07): a never-trained model names a closed-set answer
    by luck, but names each distractor as often (0.11 → 0.36), so its contrast is ≈ 0,
    while head_only's distractors reach only 0.09 → 0.43: contrast 0.12 / 0.28."""
    res = attacked["results"]["leak_at_k"]
    d = res.data
    assert d["ks"] == [1, 2, 4, 8, 16, 32] and d["max_new_tokens"] == 3
    for role in ("base", "unlearned", "reference"):
        assert np.all(np.diff(d["leak"][role]) >= -1e-12), role
        assert np.all(np.diff(d["leak_distractors"][role]) >= -1e-12), role
    assert d["leak"]["base"][-1] >= d["greedy"]["base"] and d["leak"]["base"][0] > 0.8
    assert d["leak"]["unlearned"][-1] > d["greedy"]["unlearned"] + 0.3  # sampling shows what greedy hides
    # the raw leak of a never-trained model rises with k; the contrast does not
    assert d["leak"]["reference"][-1] > d["greedy"]["reference"] + 0.1
    # sampling more (larger k) manufactures no positive contrast for the never-trained model
    # (|contrast| < 0.06 at every k on suites trained on AMD EPYC). It need not be 0: on the
    # suite trained on an Intel Xeon (2026-12-07) reference_b's prior disfavours the answer
    # values (contrast -0.06 at k=1 to -0.12 at k=32; reference_a -0.01 to 0.01), which is
    # why recovery takes N's own contrast as its end point
    assert max(d["contrast"]["reference"]) < 0.06, d["contrast"]["reference"]
    assert min(d["contrast"]["base"]) > 0.75
    assert min(np.array(d["contrast"]["unlearned"]) - d["contrast"]["reference"]) > 0.08
    assert [r.reading for r in res.recoveries] == LEAK_READINGS
    assert [r.kind for r in res.recoveries] == ["primary", "scan"]  # leak@n never bounds recovery
    one, top = res.recoveries
    assert one.informative and one.ci_low > 0.05
    assert top.informative and top.ci_low > 0.15 and top.value > 0.25
    # the per-item readings are the contrast of the counts kept per item, for every role
    pi = d["per_item"]
    assert list(pi["readings"]) == LEAK_READINGS
    assert all(set(v) == set(attacked["ctx"].roles) for v in pi["readings"].values())
    n = d["n"]
    for role in attacked["ctx"].roles:
        c1 = [r[f"{role}_leaks"] / n - np.mean(r[f"{role}_distractor_leaks"]) / n for r in d["items"]]
        np.testing.assert_allclose(pi["readings"][LEAK_READINGS[0]][role], c1, atol=1e-12)
    assert np.mean(pi["readings"][top.reading]["unlearned"]) == pytest.approx(top.score_unlearned)


def test_quantization_reads_all_settings_with_quantized_end_points(attacked):
    """Measured on head_only (N = reference_b, soft score): recovery 0.26 / 0.22 / 0.25 (sym
    8/4/3 bits) and 0.26 / 0.36 / 0.26 (asym); relative weight error 0.7% / 12% / 28%
    (sym). The primary
    reading is int3 (fewest bits at which quantized B still knows the set), asym on the
    organisms trained on AMD EPYC, sym on those trained on an Intel Xeon (2026-12-07): the
    tie between them goes to the larger B - N gap, which the CPU's rounding decides."""
    res = attacked["results"]["quantization"]
    rows = res.data["settings"]
    labels = [f"rtn int{b} {s} g128" for s in ("sym", "asym") for b in (8, 4, 3)]
    assert [r["label"] for r in rows] == labels
    primary = res.recoveries[0]
    # the rule, fixed without looking at U: the fewest RTN bits at which quantized B still
    # knows the set, ties to the larger B - N gap (int3 sym or asym, by the organisms' numbers)
    informative = [r for r in rows if r["informative"]]
    fewest = min(r["bits"] for r in informative)
    expected = max((r for r in informative if r["bits"] == fewest), key=lambda r: r["power"])["label"]
    assert fewest == 3
    assert primary.kind == "primary" and primary.reading == res.data["primary"] == expected
    assert sorted(r.reading for r in res.recoveries) == sorted(labels)
    assert all(r.kind == "scan" for r in res.recoveries[1:])
    # a scan's CI is widened for the six settings it was picked from
    row = next(r for r in rows if r["label"] == res.recoveries[1].reading)
    assert res.recoveries[1].ci_high - res.recoveries[1].ci_low > row["ci_high"] - row["ci_low"]
    for s in ("sym", "asym"):
        errs = [r["weight_error"]["base"]["rel_error"] for r in rows if r["scheme"] == s]
        assert errs[0] < errs[1] < errs[2] < 0.35
    # 8 bits barely moves anything: each model keeps its full-precision forget score
    for role, full in res.data["full_precision"].items():
        assert abs(rows[0]["scores"][role]["score"] - full["score"]) <= 0.05
    assert all(r.informative for r in res.recoveries)
    assert any("no CUDA" in n or "not installed" in n for n in res.notes) or torch.cuda.is_available()
    assert list(res.data["per_item"]["readings"]) == [primary.reading]


def test_attacks_leave_models_untouched_and_read_more_on_suppressed_than_never_trained(attacked):
    """Each attack's primary reading, re-scored from its per-item data with reference_b
    alone as N: on head_only (SUPPRESSED by construction) against reference_a (never
    trained on the forget people) in U's place. Measured (default suite, seed 0), head_only
    (R, CI low) vs reference_a (R, CI): quantization int3 asym 0.26, 0.16 vs 0.02 (−0.08–0.11);
    relearn split 20 steps 0.67, 0.61 vs −0.01 (−0.10–0.06); leak@1 contrast 0.14, 0.07 vs
    0.03 (−0.04–0.10)."""
    from audit.stats import recovery

    assert attacked["before"] == attacked["after"]
    # quantization edited the weights in place and read them back from the checkpoint
    assert attacked["results"]["quantization"].data["in_place"] == dict.fromkeys(ctx_roles(attacked), True)
    hashes = attacked["results"]["relearn"].data["weights_hash"]
    assert all(h["before"] == h["after"] for h in hashes.values()) and len(hashes) == 4
    ctx = attacked["ctx"]
    for name in ATTACKS:
        res = attacked["results"][name]
        primary = res.recoveries[0]
        assert primary.kind == "primary" and primary.n_references == 2 and res.data["seconds"]
        per = {r: np.asarray(v, dtype=float) for r, v in res.data["per_item"]["readings"][primary.reading].items()}
        assert set(per) == set(ctx.roles), name
        kw = {"reading": primary.reading, "clusters": ctx.clusters("forget"), "min_power": ctx.config.min_power}
        sup = recovery(per["base"], per["unlearned"], per["reference"], **kw)
        null = recovery(per["base"], per["reference_2"], per["reference"], **kw)
        msg = (name, primary.reading, round(sup.value, 3), round(sup.ci_low, 3), round(null.value, 3),
               round(null.ci_low, 3), round(null.ci_high, 3))
        # U recovers (CI above 0), and more than the never-trained model could: U's estimate
        # lies above the whole CI of the never-trained one
        assert sup.informative and sup.ci_low > 0 and sup.value > null.ci_high, msg
        # a never-trained model audited against another recovers nothing: its CI covers 0
        assert null.ci_low <= 0 <= null.ci_high, msg


def test_attacks_run_through_the_cli_and_the_log_round_trips(run_args, suite, tmp_path):
    """head_only (suppressed in its unembedding), 90 items (30 people), N = reference_a.
    Measured: relearn split 0.68 (CI 0.60–0.76), quantization int3 asym 0.23 (0.14–0.32),
    leak@32 contrast 0.29 (0.14–0.43), behavior ranking (soft) 0.25: SUPPRESSED by relearn.
    (With 24 items no attack reaches τ_s: INCONCLUSIVE; subject_offset, whose offset sits on
    the subject's tokens, reads no recovery on these attacks at 24 items: INCONCLUSIVE.)"""
    from audit.schema import read_log, write_log
    from cli import app

    out = tmp_path / "o"
    res = CliRunner().invoke(app, run_args(suite, out, "head_only", "behavior," + ",".join(ATTACKS),
                                           max_items=90))
    raw = json.loads((out / "audit_log.json").read_text())
    # suppressed by construction, and the attacks see it; the default policy fails every label but DELETED
    verdict = next(v for v in raw["verdicts"] if v["scope"] == "forget set")
    assert verdict["label"] == "SUPPRESSED", verdict["reason"]
    assert verdict["evidence"] and verdict["evidence"][0]["lens"] in ATTACKS, verdict["evidence"]
    assert res.exit_code == 1, res.output
    for name in ATTACKS:
        lens = raw["lenses"][name]
        assert lens["error"] is None and lens["recoveries"] and lens["seconds"] > 0
        assert raw["timings"][f"lens:{name}"] == lens["seconds"]
    log = read_log(out / "audit_log.json")
    write_log(log, tmp_path / "copy.json")
    assert read_log(tmp_path / "copy.json").model_dump_json() == log.model_dump_json()
    html = (out / "report.html").read_text()
    for sid in ATTACKS:
        assert f"<section id=\"{sid}\">" in html
    assert "leak@k over 32 samples" in html and "Fine-tune on one half of the forget subjects" in html


def ctx_roles(attacked) -> list[str]:
    return attacked["ctx"].roles


def test_in_place_quantization_reads_as_a_quantized_copy_and_restores_every_bit(attacked, monkeypatch):
    """The in-place path (weights quantized in place, read back from the checkpoint) gives
    the numbers of the copy path, and leaves each model bit-identical."""
    import probes.quantization as pq
    from audit.registry import get_lens

    ctx = attacked["ctx"]
    spec = get_lens("quantization")
    cfg = spec.make_config({"bits": [4], "schemes": ["asym"], "bitsandbytes": False})
    before = {r: weights_hash(m.hf) for r, m in ctx.models.items()}
    in_place = spec.fn(ctx, cfg)
    assert {r: weights_hash(m.hf) for r, m in ctx.models.items()} == before
    monkeypatch.setattr(pq, "weight_sources", lambda m: None)
    copied = spec.fn(ctx, cfg)
    assert in_place.data["in_place"] == dict.fromkeys(ctx.roles, True)
    assert copied.data["in_place"] == dict.fromkeys(ctx.roles, False)
    assert any("on a copy" in n for n in copied.notes)
    assert in_place.recoveries == copied.recoveries
    assert [r["scores"] for r in in_place.data["settings"]] == [r["scores"] for r in copied.data["settings"]]
    assert [r["weight_error"] for r in in_place.data["settings"]] == [r["weight_error"] for r in copied.data["settings"]]


def test_relearn_runs_are_cached_by_everything_they_read(suite, monkeypatch, tmp_path):
    # a fine-tuning run is made once per (checkpoint content, items, grid, settings): audits
    # that share B or N reuse it, bit for bit; any change to what the run reads is a new run,
    # and an unreadable entry is recomputed
    import probes.relearn as R
    from audit.models import load_model
    from audit.sources import load_items

    monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / "cache"))
    calls = []
    real = R.relearn_curve
    monkeypatch.setattr(R, "relearn_curve", lambda *a, **k: calls.append(k["lr"]) or real(*a, **k))
    m = load_model(suite / "reference_a", "reference")
    forget = load_items(suite / "forget.jsonl")
    train, evals = forget[:8], {"target": forget[8:16]}

    def curve(**kw):
        args = {"lr": 1e-4, "batch_size": 4, "seed": 0, **kw}
        return R.cached_relearn_curve(m, train, evals, [2, 4], **args)

    first, again = curve(), curve()
    assert calls == [1e-4]
    for s in (2, 4):
        a, b = first[s]["target"], again[s]["target"]
        assert a.candidate_logprobs == b.candidate_logprobs and np.array_equal(a.correct, b.correct)
        assert np.array_equal(a.greedy, b.greedy) and np.allclose(a.margins, b.margins)
    # the cached scores are those of a real run: training moved them
    assert first[4]["target"].candidate_logprobs != first[2]["target"].candidate_logprobs
    curve(lr=2e-4)
    curve(seed=1)
    assert calls == [1e-4, 2e-4, 1e-4]
    entries = sorted((tmp_path / "cache" / "relearn").glob("*.json"))
    assert len(entries) == 3
    for e in entries:
        e.write_text("{not json")
    curve()
    assert len(calls) == 4
    assert weights_hash(m.hf) == weights_hash(load_model(suite / "reference_a", "reference").hf)


def test_lora_relearning_recovers_a_suppressed_organism_and_not_a_never_trained_one(attacked):
    """LoRA relearning (peft adapters on the loaded model, removed afterwards) reads as full
    fine-tuning does: head_only recovers, the never-trained reference_a in U's place does
    not, and no loaded model is changed (the lens's own before/after hashes)."""
    from audit.registry import get_lens
    from audit.stats import recovery

    ctx = attacked["ctx"]
    spec = get_lens("relearn")
    res = spec.fn(ctx, spec.make_config({"method": "lora", "retain_variant": False, "seeds": 1, "steps": [20]}))
    assert res.data["method"] == "lora" and res.data["lora"]["rank"] == 8
    assert all(h["before"] == h["after"] for h in res.data["weights_hash"].values())
    primary = res.recoveries[0]
    per = {r: np.asarray(v, dtype=float) for r, v in res.data["per_item"]["readings"][primary.reading].items()}
    kw = {"reading": primary.reading, "clusters": ctx.clusters("forget"), "min_power": ctx.config.min_power}
    sup = recovery(per["base"], per["unlearned"], per["reference"], **kw)
    null = recovery(per["base"], per["reference_2"], per["reference"], **kw)
    msg = (round(sup.value, 3), round(sup.ci_low, 3), round(null.value, 3), round(null.ci_low, 3),
           round(null.ci_high, 3))
    assert sup.informative and sup.ci_low > 0 and sup.value > null.ci_high, msg
    assert null.ci_low <= 0 <= null.ci_high, msg
    # and it is what `method: auto` picks above lora_above parameters (300M by default)
    from probes.relearn import resolve_method

    auto = spec.make_config({})
    assert auto.method == "auto"
    assert resolve_method(auto, 135_000_000) == "full" and resolve_method(auto, 1_200_000_000) == "lora"
    assert resolve_method(spec.make_config({"method": "full"}), 8_000_000_000) == "full"
