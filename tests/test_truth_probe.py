"""The linear-probe lens on open answers: the contrastive truth probe (issue 17).

The organisms' answers repeat (closed sets), so the truth probe is forced with
``read_out: truth_probe``: it reads each item's candidates by themselves, exactly as it
reads data whose every answer is its own (TOFU, capitals). Numbers measured on the
default suite (seed 0, 3 folds, 2 shuffles) when this was written: soft score at the
primary reading (crossfit, layer 3) B 0.72, never-trained N 0.24 (chance 0.25), shuffled
controls 0.01; head-only U reads B's numbers (R = 1.00); the never-trained reference_b
as U reads R = 0.03 (CI -0.10 to 0.14).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.items import KnowledgeItem
from audit.sources import load_items
from probes.linear_probe import LinearProbeConfig, _classifier_schemes, _folds, _truth_fit, linear_probe

FAST = {"n_shuffles": 2, "folds": 3}


@pytest.fixture(scope="module")
def models(suite):
    from audit.models import load_model

    return {name: load_model(suite / name, "base" if name == "base" else "unlearned")
            for name in ("base", "head_only", "reference_a", "reference_b")}


def _ctx(suite, models, unlearned: str, forget=None, retain=None) -> AuditContext:
    cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / unlearned),
                      reference=str(suite / "reference_a"), forget=str(suite / "forget.jsonl"),
                      retain=str(suite / "retain.jsonl"), out=str(suite / "unused"), seed=0)
    items = {"forget": forget if forget is not None else load_items(suite / "forget.jsonl"),
             "retain": retain if retain is not None else load_items(suite / "retain.jsonl")}
    return AuditContext(cfg, {"base": models["base"], "unlearned": models[unlearned],
                              "reference": models["reference_a"]}, items)


def _truth(ctx, **opts):
    t = time.perf_counter()
    res = linear_probe(ctx, LinearProbeConfig(read_out="truth_probe", **{**FAST, **opts}))
    return res, time.perf_counter() - t


@pytest.fixture(scope="module")
def head_only(suite, models):
    return _truth(_ctx(suite, models, "head_only"))[0]


def test_truth_probe_reads_base_far_above_never_trained(head_only):
    res = head_only
    assert res.error is None and res.data["read_out"] == "truth_probe"
    assert all(r.reading.startswith("truth_probe ") for r in res.recoveries)
    p = res.recoveries[0]
    assert p.kind == "primary" and p.informative and p.end_point == "reference"
    assert p.score_base - p.score_reference >= 0.3, p  # soft score: chance 0.25
    informative = [r for r in res.data["layer_recoveries"]["crossfit"] if r["informative"]]
    assert informative
    # the suppressed organism (only its output head changed) still reads as recovered
    assert p.value >= 0.8 and p.ci_low > 0.5, p
    for r in res.recoveries:  # shuffled-label controls stay far below real recovery
        assert r.control_threshold is not None and r.control_threshold < 0.5, r
    _renders(res)


def test_base_vs_itself_recovers_fully(suite, models):
    res, _ = _truth(_ctx(suite, models, "base"), n_shuffles=1)
    p = res.recoveries[0]
    assert p.informative and p.value == pytest.approx(1.0, abs=1e-6)


def test_never_trained_u_recovers_nothing(suite, models):
    res, _ = _truth(_ctx(suite, models, "reference_b"))
    p = res.recoveries[0]
    assert p.informative and p.ci_low <= 0.0 <= p.ci_high, p
    assert p.value < 0.2


def test_candidate_features_alone_also_run(suite, models):
    """The candidate-position block alone is weak on the organisms (they never learned to
    represent truth after the answer) but must still produce a valid, honest result."""
    res, _ = _truth(_ctx(suite, models, "head_only"), truth_features="candidate", n_shuffles=1)
    assert res.error is None and res.recoveries and res.data["read_out"] == "truth_probe"


def test_one_class_folds_never_raise(suite, models):
    """Forget items that all share one answer: the classifier's cross-fitting has one class
    in every fold, which is skipped with a note rather than raising."""
    forget = load_items(suite / "forget.jsonl")
    top = max({it.answer for it in forget}, key=[it.answer for it in forget].count)
    same = [it for it in forget if it.answer == top]
    ctx = _ctx(suite, models, "head_only", forget=same)
    res = linear_probe(ctx, LinearProbeConfig(read_out="classifier", **FAST))
    assert res.error is None
    assert any("crossfit" in n for n in res.notes), res.notes
    auto = linear_probe(ctx, LinearProbeConfig(**FAST))
    assert auto.error is None and auto.data["classifier_criterion"]["crossfit"]


def test_closed_set_criterion():
    lab = [[a, "x", "y"] for a in "aabbccdd"]
    groups = np.array(list("abcdefgh"))
    folds = _folds(2, groups)
    why = _classifier_schemes(lab, [["a"], ["b"], ["c"], ["d"]], folds, 0.8)
    assert why == {"transfer": "", "crossfit": ""}
    open_ = [[f"v{i}", "x", "y"] for i in range(8)]  # every answer its own
    why = _classifier_schemes(open_, [["w"], ["z"]], folds, 0.8)
    assert why["transfer"] and why["crossfit"]
    assert _classifier_schemes(lab, [["a"]], [], 0.8)["crossfit"] == "fewer than 2 subjects"


def test_truth_fit_with_one_class_is_none():
    X = np.random.default_rng(0).normal(size=(4, 3))
    cfg = LinearProbeConfig()
    assert _truth_fit(cfg, X, np.array([0, 1, 2, 3]), np.array([0, 0, 0, 0]), 0) is None
    assert _truth_fit(cfg, X, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 0) is not None


def _renders(res) -> None:
    """The result survives a JSON round trip and the report draws its section."""
    from audit.schema import LensResult
    from reports.render import SECTIONS, Page

    again = LensResult.model_validate_json(res.model_dump_json())
    assert again.model_dump_json() == res.model_dump_json()
    page = Page()
    SECTIONS["linear_probe"](page, again)
    assert 'id="linear_probe"' in "".join(page.parts)


def _open_answer_items(suite) -> list[KnowledgeItem]:
    """Organism items made open-answer: per attribute, half the values are each one item's
    answer, the other half only ever distractors."""
    by_attr: dict[str, list[KnowledgeItem]] = {}
    for it in load_items(suite / "forget.jsonl"):
        by_attr.setdefault(it.attribute, []).append(it)
    out = []
    for items in by_attr.values():
        values = sorted({it.answer for it in items})
        answers, pool = values[::2], values[1::2]
        for v in answers:
            it = next(i for i in items if i.answer == v)
            out.append(KnowledgeItem(**{**it.model_dump(), "distractors": pool[:3]}))
    return out


def test_auto_picks_truth_probe_on_open_answers_and_guards_label_history(suite, models):
    """Every answer its own: ``auto`` picks the truth probe and the log says so. Here the
    distractors come from a fixed pool, seen in the training folds only as distractors: a
    probe would learn that (measured: never-trained N soft 0.83, chance 0.25), so the
    cross-fit is skipped and the lens reads nothing rather than something false."""
    forget = _open_answer_items(suite)
    assert len({it.answer for it in forget}) == len(forget) >= 12
    ctx = _ctx(suite, models, "head_only", forget=forget, retain=[])
    res = linear_probe(ctx, LinearProbeConfig(n_shuffles=1, folds=3))
    assert res.error is None and res.data["read_out"] == "truth_probe"
    assert any("open answers" in n for n in res.notes)
    assert any("transfer skipped: no retain items" in n for n in res.notes)
    assert res.data["label_history_bias"]["crossfit"] > 0.2
    assert res.recoveries == [] and any("uninformative" in n for n in res.notes)
    _renders(res)
    # the held-out answers themselves only ever distractors in training (capitals of one region)
    answers = [it.answer for it in forget]
    swapped = [KnowledgeItem(**{**it.model_dump(), "distractors": [a for a in answers if a != it.answer][:3]})
               for it in forget]
    res = linear_probe(_ctx(suite, models, "head_only", forget=swapped, retain=[]),
                       LinearProbeConfig(n_shuffles=1, folds=3))
    assert res.error is None and res.recoveries == [] and res.data["label_history_bias"]["crossfit"] > 0.2


# read at import, before the session fixture points AUDIT_CACHE at a temporary folder
_SMOL = (Path(os.environ.get("AUDIT_TEST_SMOLLM2_CACHE") or os.environ.get("AUDIT_CACHE")
              or Path.home() / ".cache" / "unlearning-audit") / "smollm2")


@pytest.mark.slow
def test_truth_probe_reads_smollm2_capitals(tmp_path):
    """SmolLM2-135M on capitals (every answer its own): B's truth probe is informative.

    Measured (20 European capitals, 29 capitals of other regions, B = U, no N): transfer
    soft score 0.15-0.37 up to layer 8, 0.61-0.81 from layer 9 (chance 0.25), primary layer
    10 (B 0.81, controls 0.04); crossfit is skipped (95% label history: the region's
    capitals are each other's distractors). About 25 s alone on 2 CPU cores.
    """
    from audit.lab.realmodel import capital_items
    from audit.models import load_model

    ggufs = sorted(_SMOL.glob("*.gguf"))
    if not ggufs:
        pytest.skip(f"SmolLM2 GGUF not cached under {_SMOL}")
    m = load_model(ggufs[0], "base")
    items = capital_items()
    forget = [i for i in items if i.attribute == "europe"][:20]
    retain = [i for i in items if i.attribute != "europe"][::4]
    cfg = AuditConfig(base=str(ggufs[0]), unlearned=str(ggufs[0]), forget=str(ggufs[0]), retain=str(ggufs[0]),
                      out=str(tmp_path), seed=0)
    ctx = AuditContext(cfg, {"base": m, "unlearned": m}, {"forget": forget, "retain": retain})
    res = linear_probe(ctx, LinearProbeConfig(n_shuffles=2, folds=3))
    assert res.error is None and res.data["read_out"] == "truth_probe"
    assert any("crossfit skipped" in n for n in res.notes)
    p = res.recoveries[0]
    assert p.informative and p.end_point == "answer prior" and p.reading.startswith("truth_probe transfer")
    assert p.score_base - p.score_reference >= 0.3, p
    assert p.value == pytest.approx(1.0, abs=1e-6)
