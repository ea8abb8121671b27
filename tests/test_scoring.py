"""The knowledge score: hand-checked arithmetic and measured separation on organisms."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from audit.errors import InputError
from audit.items import KnowledgeItem
from audit.models import load_model
from audit.scoring import candidate_logprobs_to_result, encode_items, score_items
from audit.sources import load_items


def test_margin_and_ranking_by_hand():
    r = candidate_logprobs_to_result([[-1.0, -2.0, -3.0, -4.0], [-5.0, -1.0, -6.0, -7.0]], np.array([True, False]))
    expected = -1.0 - np.log(np.exp(-2) + np.exp(-3) + np.exp(-4))
    assert r.margins[0] == pytest.approx(expected)
    assert r.correct.tolist() == [True, False]
    assert r.score == 0.5 and r.greedy_score == 0.5


def test_base_scores_far_above_reference_on_forget(suite, manifest, base_model):
    ref = load_model(suite / "reference_a", "reference")
    forget = load_items(suite / manifest["forget"])
    sb = score_items(base_model.forward, base_model.tokenizer, forget)
    sn = score_items(ref.forward, ref.tokenizer, forget)
    assert sb.score >= 0.95 and sn.score <= manifest["chance"] + 0.1
    assert sb.greedy_score >= 0.9 and sn.greedy_score <= 0.3
    # batching must not change the numbers
    sb1 = score_items(base_model.forward, base_model.tokenizer, forget[:9], batch_size=1)
    np.testing.assert_allclose(sb1.margins, sb.margins[:9], atol=1e-4)


def test_scoring_builds_no_autograd_graph(suite, manifest, base_model):
    # scoring forwards without gradients: a forward with them leaves tensors that are not graph
    # leaves inside the bridge (its captured pre-norm residuals), which the relearn lens's copy
    # of the model cannot deep-copy (a review mend once moved the decorator off score_items)
    grad_modes = []

    def forward(ids, mask):
        grad_modes.append(torch.is_grad_enabled())
        return base_model.forward(ids, mask)

    params = list(base_model.bridge.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        score_items(forward, base_model.tokenizer, load_items(suite / manifest["forget"])[:4])
        assert grad_modes and not any(grad_modes)
        copy.deepcopy(base_model.bridge)
    finally:
        for p, r in zip(params, before, strict=True):
            p.requires_grad_(r)


class _DroppingTokenizer:
    """A tokenizer that maps unknown text to nothing (as some byte-level vocabularies do)."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 for w in text.split() if w != "zzz"]}


def test_answer_that_tokenizes_to_nothing_is_an_input_error():
    it = KnowledgeItem(id="q", prompt="a b", answer="zzz", distractors=["c", "d", "e"])
    with pytest.raises(InputError, match="item 'q': the candidate answer 'zzz' tokenizes to nothing"):
        encode_items(_DroppingTokenizer(), [it])


def _lens(name, value, lo, hi, control=None):
    from audit.schema import LensResult, Recovery

    r = Recovery(reading="r", value=value, ci_low=lo, ci_high=hi, score_base=0.9, score_unlearned=0.3,
                 score_reference=0.25, n_items=120, informative=True, control_threshold=control)
    return LensResult(name=name, config={}, recoveries=[r], data={}, notes=[])


def _near_reference(**extra):
    lenses = {"behavior": _lens("behavior", 0.0, -0.1, 0.1),
              **{n: _lens(n, 0.0, -0.08, 0.08) for n in ("linear_probe", "relearn", "quantization")}}
    lenses.update(extra)
    return lenses


def test_deleted_bounds_the_recovery_itself_not_its_excess_over_controls():
    # SPEC §5: DELETED needs every primary recovery CI upper bound ≤ τ_d (0.25 by default)
    from audit.verdict import decide

    # random directions that hurt U (controls at -0.1) must not raise the bar ...
    assert decide(_near_reference(steering=_lens("steering", 0.01, -0.1, 0.12, control=-0.1))).label == "DELETED"
    # ... nor controls that also "recover" lower it: recovery up to 0.35 is not bounded below
    # the band (0.25), though its excess over the controls (0.05) is
    v = decide(_near_reference(steering=_lens("steering", 0.2, 0.05, 0.35, control=0.15)))
    assert v.label == "INCONCLUSIVE" and "steering" in v.reason
    # SUPPRESSED still reads the excess over the controls: 0.5 recovery over controls at 0.3 is not enough
    assert decide(_near_reference(steering=_lens("steering", 0.5, 0.35, 0.65, control=0.3))).label == "INCONCLUSIVE"
    assert decide(_near_reference(steering=_lens("steering", 0.5, 0.35, 0.65, control=0.05))).label == "SUPPRESSED"
