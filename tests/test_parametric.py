"""The parametric-traces lens (issue 21): measured properties on the organisms.

B = base, N = reference_a unless said otherwise (the nulls take the references the
conformance suite gives them: the temperature copies their unscaled twin, the skewed-prior
model both never-trained references).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.lensdata import ParametricData, check_lens_data
from audit.models import Residency, load_model
from audit.registry import get_lens
from audit.schema import LensResult
from audit.sources import load_items

NULLS = {"reference_b": ["reference_a"], "reference_b_t05": ["reference_b"], "reference_b_t2": ["reference_b"],
         "reference_skewed": ["reference_a", "reference_b"]}
SUPPRESSED = ("head_only", "late_layers", "subject_offset")
# read at import, before the session fixture points AUDIT_CACHE at a temporary folder (as test_realmodel)
_PERSISTENT = Path(os.environ.get("AUDIT_TEST_SMOLLM2_CACHE")
                   or os.environ.get("AUDIT_CACHE", Path.home() / ".cache" / "unlearning-audit"))
WEIGHTED = "answer-writing value vectors, top-16 (activation-weighted)"


@pytest.fixture(scope="module")
def lens(suite):
    """``lens(unlearned, references, **options)``: the parametric lens's result, memoised."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    models: dict = {}
    items = {"forget": load_items(suite / "forget.jsonl"), "retain": load_items(suite / "retain.jsonl")}
    done: dict = {}

    def model(name, role):
        if (name, role) not in models:
            models[(name, role)] = load_model(suite / name, role)
        return models[(name, role)]

    def run(unlearned, references=("reference_a",), fresh=False, **options) -> LensResult:
        key = (unlearned, tuple(references), json.dumps(options, sort_keys=True))
        if fresh or key not in done:
            refs = list(references)
            cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / unlearned),
                              reference=[str(suite / r) for r in refs] or None,
                              forget=str(suite / "forget.jsonl"), retain=str(suite / "retain.jsonl"),
                              lenses=["parametric"])
            ms = {"base": model("base", "base"), "unlearned": model(unlearned, "unlearned")}
            for i, r in enumerate(refs):
                role = "reference" if i == 0 else f"reference_{i + 1}"
                ms[role] = model(r, role)
            spec = get_lens("parametric")
            done[key] = spec.fn(AuditContext(cfg, ms, items), spec.make_config(options))
        return done[key]

    yield run
    torch.set_num_threads(before)


def _weighted(res: LensResult):
    return next(r for r in res.recoveries if r.reading == WEIGHTED)


def test_reads_the_base_far_above_a_never_trained_model(lens):
    r = _weighted(lens("reference_b"))
    assert r.informative and r.score_base - r.score_reference > 0.5, r
    # N reads about chance among 4 candidates: its vectors write no subject's answer
    assert abs(r.score_reference - 0.25) < 0.1, r


@pytest.mark.parametrize("organism", sorted(NULLS))
def test_a_never_trained_model_reads_no_recovery(lens, organism):
    res = lens(organism, NULLS[organism])
    for r in res.recoveries:
        if r.informative and math.isfinite(r.value):
            assert r.ci_low <= 1e-6 <= r.ci_high + 2e-6, (organism, r.reading, r.value, r.ci_low, r.ci_high)


def test_the_reading_is_temperature_free(lens):
    # the _t05 / _t2 copies differ from reference_b only in a scaled unembedding: every
    # candidate's strength scales alike, so every item reads exactly as reference_b's
    per = {u: lens(u, ["reference_a"]).data["per_item"]["readings"][WEIGHTED]["unlearned"]
           for u in ("reference_b", "reference_b_t05", "reference_b_t2")}
    assert per["reference_b_t05"] == per["reference_b"] == per["reference_b_t2"]


def test_a_suppressed_organism_recovers_above_its_control(lens):
    above = []
    for u in SUPPRESSED:
        r = _weighted(lens(u))
        assert r.control_threshold is not None
        if r.informative and r.ci_low > r.control_threshold:
            above.append(u)
    assert above, [(u, _weighted(lens(u)).value, _weighted(lens(u)).control_threshold) for u in SUPPRESSED]
    # measured: head_only R 0.39 (CI 0.25-0.53) over a control threshold of 0.16
    assert "head_only" in above
    # late_layers retrained its last block to hide the answers: over every layer its vectors
    # read below N, but the layers before it still write them (the per-layer scan)
    late = lens("late_layers")
    assert _weighted(late).value < 0
    scan = next(r for r in late.recoveries if "best of" in r.reading)
    assert scan.informative and scan.ci_low > 0, scan


def test_random_vectors_of_matched_norm_read_chance(lens):
    d = lens("head_only").data
    for role, xs in d["controls"].items():
        assert len(xs) == 16 and abs(float(np.mean(xs)) - d["chance"]) < 0.1, (role, xs)


def test_survival_of_answer_writing_vectors_is_read_against_matched_random_ones(lens):
    d = ParametricData.model_validate(lens("head_only").data)
    # head_only trained only its unembedding: every value vector of B is there, at both index sets
    assert d.survival["unlearned"].selected == pytest.approx(1.0, abs=1e-4)
    assert d.survival["unlearned"].random == pytest.approx(1.0, abs=1e-4)
    # an independent model shares nothing with B at either
    assert abs(d.survival["reference"].selected) < 0.1 and abs(d.survival["reference"].random) < 0.1


def test_every_reading_is_support_fits_its_model_and_repeats(lens):
    res = lens("head_only")
    assert res.recoveries and all(r.kind == "support" for r in res.recoveries)
    assert any("support only" in n for n in res.notes)
    d = check_lens_data(res)  # strict: every key declared
    assert isinstance(d, ParametricData) and d.per_item is not None
    assert LensResult.model_validate_json(res.model_dump_json()).recoveries == res.recoveries
    again = lens("head_only", fresh=True)
    strip = {k: v for k, v in again.data.items() if k != "seconds"}
    assert strip == {k: v for k, v in res.data.items() if k != "seconds"}
    assert again.recoveries == res.recoveries


def test_without_a_reference_the_end_point_is_the_answer_prior(lens):
    res = lens("head_only", references=())
    r = _weighted(res)
    assert r.end_point == "answer prior" and abs(r.score_reference - 0.25) < 0.05
    assert any("no reference" in n.lower() or "without a reference" in n.lower() for n in res.notes), res.notes
    assert "null" in res.data["per_item"]["readings"][WEIGHTED]


def test_low_memory_holds_one_model_and_reads_the_same(suite, lens):
    import torch

    torch.set_num_threads(1)
    res = Residency(low_memory=True)
    items = {"forget": load_items(suite / "forget.jsonl"), "retain": load_items(suite / "retain.jsonl")}
    ms = {role: load_model(suite / name, role, residency=res)
          for role, name in (("base", "base"), ("unlearned", "head_only"), ("reference", "reference_a"))}
    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / "head_only"),
                      reference=str(suite / "reference_a"), forget=str(suite / "forget.jsonl"),
                      retain=str(suite / "retain.jsonl"), lenses=["parametric"], low_memory=True)
    spec = get_lens("parametric")
    low = spec.fn(AuditContext(cfg, ms, items), spec.make_config({}))
    fast = lens("head_only")
    assert res.peak == 1
    assert {k: v for k, v in low.data.items() if k != "seconds"} == {k: v for k, v in fast.data.items()
                                                                     if k != "seconds"}
    assert low.recoveries == fast.recoveries


def test_a_gpt2_shaped_model_is_read(suite, tmp_path):
    """GPT-2 keeps its value vectors in a Conv1D (``mlp.c_proj``, stored (in, out)) behind a
    LayerNorm: the lens finds them and reads every model (a random, untrained one here)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from probes.parametric import _parts, _values

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(suite / "base")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(
        tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    m = load_model(tmp_path / "gpt2", "base")
    p = _parts(m)
    assert p.centred and len(p.outs) == 2 and tuple(_values(p.outs[0]).shape) == (128, 32)
    items = {"forget": load_items(suite / "forget.jsonl")[:40], "retain": load_items(suite / "retain.jsonl")[:20]}
    cfg = AuditConfig(base=str(tmp_path / "gpt2"), unlearned=str(tmp_path / "gpt2"), forget=str(suite / "forget.jsonl"),
                      retain=str(suite / "retain.jsonl"), lenses=["parametric"])
    spec = get_lens("parametric")
    res = spec.fn(AuditContext(cfg, {"base": m, "unlearned": m}, items), spec.make_config({"n_controls": 2}))
    check_lens_data(res)
    d = res.data
    assert d["n_items"] == 40 and len(d["per_layer"]["base"]) == 2
    assert d["scores"]["weighted"]["base"] == d["scores"]["weighted"]["unlearned"]


def test_the_report_draws_the_section_and_the_plan_counts_it(suite, tmp_path):
    from audit.plan import COUNTERS
    from audit.run import run
    from reports import render_file

    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / "head_only"),
                      reference=str(suite / "reference_a"), forget=str(suite / "forget.jsonl"),
                      retain=str(suite / "retain.jsonl"), out=str(tmp_path / "out"), lenses=["parametric"],
                      lens_options={"parametric": {"n_controls": 4}})
    log = run(cfg)
    assert log.lenses["parametric"].error is None
    html = render_file(tmp_path / "out" / "audit_log.json", tmp_path / "r.html").read_text()
    assert "Parametric traces (support only)" in html
    assert "parametric" in COUNTERS


def test_smollm2_capitals_runs(tmp_path, monkeypatch):
    """SmolLM2-135M (a ``.gguf`` with tied embeddings) on the capitals items: the lens runs."""
    from audit.lab.realmodel import GGUF_NAME, capital_items

    gguf = _PERSISTENT / "smollm2" / GGUF_NAME
    if not gguf.is_file():
        pytest.skip("SmolLM2 is not cached here (tests/test_realmodel.py fetches it)")
    # its own cache: the session's stays empty for test_realmodel, which checks that its load converts
    monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / "cache"))
    items = capital_items()
    forget, retain = items[:24], items[24:48]
    m = load_model(gguf, "base")
    assert m.hf.config.tie_word_embeddings
    cfg = AuditConfig(base=str(gguf), unlearned=str(gguf), forget="forget.jsonl", retain="retain.jsonl",
                      lenses=["parametric"])
    spec = get_lens("parametric")
    t0 = time.perf_counter()
    res = spec.fn(AuditContext(cfg, {"base": m, "unlearned": m}, {"forget": forget, "retain": retain}),
                  spec.make_config({}))
    took = time.perf_counter() - t0
    check_lens_data(res)
    d = res.data
    assert len(d["per_layer"]["base"]) == 30 and d["scores"]["weighted"]["base"] == d["scores"]["weighted"]["unlearned"]
    print(f"parametric on SmolLM2, 24 + 24 capitals items, B = U: {took:.1f}s; scores {d['scores']}; "
          f"recoveries {[(r.reading, round(r.value, 3), r.informative) for r in res.recoveries]}")
