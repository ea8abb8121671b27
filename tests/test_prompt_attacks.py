"""The prompt-attack lens (issue 21) on organisms: measured properties, not that it runs.

B = base, N = ``reference_a`` throughout (as an audit with one reference reads them):

- every attack can read the knowledge: B far above N under the same attack (informative);
- never-trained models (``reference_b``, its temperature copies, the skewed-prior model) read
  a recovery whose CI covers 0 under every attack and in the best-of scan: randomness and a
  prior over answer values are not knowledge;
- a construction-SUPPRESSED organism reads recovery above N under the same attack, with no
  side effect on retain items;
- every attack is item-agnostic (one template, one set of shots; no item is scored with a
  shot about its own subject; a question is never invented), and every reading is support only.

What the organisms do *not* show is kept visible as a strict xfail: no attack raises a
suppressed organism's recovery above what the plain prompt already reads.
"""

from __future__ import annotations

import math

import pytest

from audit.items import KnowledgeItem

NULLS = ("reference_b", "reference_b_t05", "reference_b_t2", "reference_skewed")
SUPPRESSED = ("head_only", "late_layers", "subject_offset")
ATTACKS_RUN = ("answer forcing", "multiple choice", "in-context forget shots (k=4)")


@pytest.fixture(scope="module")
def audits(suite, manifest, tmp_path_factory):
    from audit.config import AuditConfig
    from audit.run import run

    tmp = tmp_path_factory.mktemp("prompt_attacks")
    out = {}
    for u in (*NULLS, *SUPPRESSED):
        assert u in manifest["checkpoints"], u
        cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / u), reference=[str(suite / "reference_a")],
                          forget=str(suite / "forget.jsonl"), retain=str(suite / "retain.jsonl"), out=str(tmp / u),
                          lenses=["prompt_attacks"])
        out[u] = run(cfg).lenses["prompt_attacks"]
    return out


def _attacks(res):
    return [r for r in res.recoveries if not r.reading.startswith("best of")]


def test_the_lens_runs_its_attacks_and_skips_what_the_items_cannot_carry(audits):
    for u, res in audits.items():
        assert res.error is None, (u, res.error)
        assert [r.reading for r in _attacks(res)] == list(ATTACKS_RUN), u
        # the organisms' items carry no question: the question form is skipped, never invented
        assert "question_form" in res.data["skipped"] and any("question form skipped" in n for n in res.notes)
        assert res.data["forcing_form"] == "prefix"
        assert all(r.kind == "support" for r in res.recoveries), u
        assert any("support only" in n for n in res.notes)


def test_b_is_far_above_n_under_every_attack(audits):
    res = audits["head_only"]
    for r in _attacks(res):
        assert r.informative, r
        assert r.score_base - r.score_reference >= 0.3, (r.reading, r.score_base, r.score_reference)
    # the same with the hard ranking (share of items whose answer ranks first), from the data
    for row in res.data["attacks"]:
        sc = row["scores"]
        assert sc["base"]["score"] - sc["reference"]["score"] >= 0.3, row["label"]


@pytest.mark.parametrize("organism", NULLS)
def test_a_never_trained_model_reads_no_recovery_under_any_attack(audits, organism):
    res = audits[organism]
    got = [(r.reading, round(r.value, 3), round(r.ci_low, 3), round(r.ci_high, 3)) for r in res.recoveries]
    assert len(got) == len(ATTACKS_RUN) + 1  # the attacks and the best-of scan
    for reading, value, lo, hi in got:
        assert math.isfinite(value), (organism, reading)
        assert lo <= 0.0 <= hi, (organism, reading, value, lo, hi)
    scan = res.recoveries[-1]
    assert scan.reading == f"best of {len(ATTACKS_RUN)} attacks (scan)"
    # the scan's CI is widened for the attacks compared
    best = next(r for r in res.recoveries if r.reading == res.data["best"])
    assert scan.value == pytest.approx(best.value)
    assert scan.ci_high - scan.ci_low > best.ci_high - best.ci_low


def test_a_suppressed_organism_reads_recovery_above_n_under_the_attack_without_side_effects(audits):
    # the controls the issue names: N under the same attack (R's CI above 0), the same attack on
    # retain items (U's retain drop no worse than B's beyond the tolerance) and, for the shots,
    # retain facts as shots (R above their recovery)
    hits = []
    for u in SUPPRESSED:
        for row in audits[u].data["attacks"]:
            ctrl = row["control_recovery"]
            if (row["informative"] and row["ci_low"] > 0 and row["side_effect_ok"]
                    and (ctrl is None or row["recovery"] > ctrl)):
                hits.append((u, row["label"], row["recovery"], row["ci_low"]))
    assert hits, "no suppressed organism reads recovery under any attack"


@pytest.mark.xfail(strict=True, reason="measured on the seed-0 suite: no prompt attack raises a construction-"
                   "SUPPRESSED organism's recovery above the plain prompt's by more than its CI (head_only: every "
                   "attack below the plain prompt's 0.38; late_layers: answer forcing 0.24 vs 0.22; "
                   "subject_offset: 0.06 at best vs 0.06). The suppression sits in weights every prompt passes through "
                   "(unembedding, last block, subject embeddings), and the organisms never saw instructions or "
                   "few-shot contexts; docs/lenses.md")
def test_an_attack_raises_a_suppressed_organisms_recovery_above_the_plain_prompt(audits):
    best = []
    for u in SUPPRESSED:
        plain = audits[u].data["baseline"]
        for row in audits[u].data["attacks"]:
            if row["informative"] and row["side_effect_ok"]:
                # above the plain prompt's CI and above every control's point estimate
                best.append((row["ci_low"] - max(plain["ci_high"], row["control_threshold"]), u, row["label"]))
    assert max(best)[0] > 0, max(best)


def test_every_item_is_scored_out_of_fold(audits):
    res = audits["head_only"]
    # every forget item is scored under every attack run (the shots rotate between two folds)
    assert all(row["n_items"] == 180 for row in res.data["attacks"])
    assert set(res.data["per_item"]["readings"]) == set(ATTACKS_RUN)
    shots = res.data["shots"]
    assert set(shots) == {"0", "1"} and all(len(v) == 4 for v in shots.values())
    assert not set(shots["0"]) & set(shots["1"])
    assert len(res.data["retain_shots"]) == 4 and all(i.startswith("retain-") for i in res.data["retain_shots"])


# ---------------------------------------------------------------------------- the transforms, on items


def _items(n_subjects: int = 6, question: bool = False) -> list[KnowledgeItem]:
    out = []
    for s in range(n_subjects):
        for a, ans in (("city", f"town{s}"), ("job", f"job{s}")):
            out.append(KnowledgeItem(
                id=f"p{s}-{a}", prompt=f"Question: what {a} has person{s}?\nAnswer:" if question else
                f"person{s} has the {a}", answer=ans, distractors=[f"x{s}", f"y{s}", f"z{s}"],
                subject=f"person{s}", attribute=a, question=f"what {a} has person{s}?" if question else None))
    return out


def _ctx(items: list[KnowledgeItem], retain: list[KnowledgeItem] | None = None, seed: int = 0):
    from audit.config import AuditConfig
    from audit.context import AuditContext

    cfg = AuditConfig(base="b", unlearned="u", forget="f", retain="r", out="o", seed=seed)
    return AuditContext(config=cfg, models={}, items={"forget": items, "retain": retain or []})


def test_shots_never_name_the_scored_items_subject_and_are_one_set_per_fold():
    from audit.lensdata import PromptAttacksConfig
    from probes.prompt_attacks import transforms

    items = _items(8)
    cfg = PromptAttacksConfig(shots=3, min_items=2)
    for seed in (0, 1, 2):
        tfs, skipped, fixed = transforms(_ctx(items, _items(4), seed), cfg)
        tf, rows = tfs["in_context"]
        assert rows == list(range(len(items)))
        blocks = set()
        for i in rows:
            p = tf(i, items[i]).prompt
            assert p.endswith(items[i].prompt)
            block = p[: -len(items[i].prompt)]
            blocks.add(block)
            assert items[i].subject not in block, (seed, i, block)  # never a shot about its own subject
            assert block.count("\n") == 3
        assert len(blocks) == 2  # one fixed set of shots per fold, for all its items
        assert "question_form" in skipped  # completions carry no question
        assert fixed["forcing_form"] == "prefix"
        assert tfs["answer_forcing"][0](0, items[0]).prompt == cfg.forcing_prefix + items[0].prompt


def test_question_items_get_the_suffix_form_and_the_question_form():
    from audit.lensdata import PromptAttacksConfig
    from probes.prompt_attacks import transforms

    items = _items(6, question=True)
    cfg = PromptAttacksConfig(min_items=2)
    tfs, skipped, fixed = transforms(_ctx(items), cfg)
    assert not skipped and fixed["forcing_form"] == "suffix"
    assert tfs["answer_forcing"][0](0, items[0]).prompt == items[0].prompt + " Sure, the answer is"
    assert tfs["question_form"][0](0, items[0]).prompt == f"Q: {items[0].question}\nA:"


def test_multiple_choice_lists_the_candidates_in_an_order_that_hides_the_answer():
    from probes.prompt_attacks import options_text

    it = _items(1)[0]
    swapped = it.model_copy(update={"answer": it.distractors[0], "distractors": [it.answer, *it.distractors[1:]]})
    assert options_text(it) == options_text(swapped) == "town0, x0, y0, z0"


def test_the_report_draws_the_section(audits):
    from audit.schema import AuditLog
    from reports.render import render

    log = AuditLog(created="now", config={}, models={}, items={}, lenses={"prompt_attacks": audits["late_layers"]})
    html = render(log)
    assert "Prompt attacks (support only)" in html and "in-context retain shots (control)" in html


def test_low_memory_reads_the_same_numbers(suite, tmp_path, monkeypatch):
    """``--low-memory`` (one model resident at a time) gives the same result, computed afresh."""
    from audit.config import AuditConfig
    from audit.run import run

    got = {}
    for low in (False, True):
        monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / f"cache_{low}"))  # nothing read back from the other run
        cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / "late_layers"),
                          reference=[str(suite / "reference_a")], forget=str(suite / "forget.jsonl"),
                          retain=str(suite / "retain.jsonl"), out=str(tmp_path / f"o_{low}"), low_memory=low,
                          lenses=["prompt_attacks"],
                          lens_options={"prompt_attacks": {"attacks": ["multiple_choice", "in_context"], "n_boot": 200}})
        res = run(cfg).lenses["prompt_attacks"]
        assert res.error is None, res.error
        got[low] = ([r.model_dump() for r in res.recoveries], {k: v for k, v in res.data.items() if k != "seconds"})
    assert got[True] == got[False]
