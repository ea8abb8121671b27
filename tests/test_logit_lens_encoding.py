"""The logit lens reads the candidates scoring reads: at the last layer it is the behavior score.

Candidates come from :func:`audit.scoring.candidate_token_ids` (an answer's leading space
makes no difference) and multi-token candidates are read teacher-forced, so the last
layer's per-item soft share equals the behavior lens's, on the organisms and on
SmolLM2's open-answer capitals. Cheap: a few items, the session's organisms, and
SmolLM2 loaded from its cached conversion (skipped when it is not cached).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.items import KnowledgeItem
from audit.scoring import candidate_token_ids, score_items
from audit.sources import load_items
from probes.logit_lens import read_layers

# read at import, before the session fixture points AUDIT_CACHE at a temporary folder
_PERSISTENT = Path(os.environ.get("AUDIT_TEST_SMOLLM2_CACHE")
                   or os.environ.get("AUDIT_CACHE", Path.home() / ".cache" / "unlearning-audit"))


def _spaced(items: list[KnowledgeItem]) -> list[KnowledgeItem]:
    """Every answer and distractor written with a leading space."""
    return [it.model_copy(update={"answer": " " + it.answer, "distractors": [" " + d for d in it.distractors]})
            for it in items]


def _doubled(items: list[KnowledgeItem]) -> list[KnowledgeItem]:
    """Two-word candidates ("dakar dakar"), so the organisms' candidates are read teacher-forced."""
    return [it.model_copy(update={"answer": f"{it.answer} {it.answer}",
                                  "distractors": [f"{d} {d}" for d in it.distractors]}) for it in items]


def _last_layer_vs_behavior(model, items, tmp_path) -> tuple[dict[str, np.ndarray], object]:
    cfg = AuditConfig(base="b", unlearned="u", forget="f", retain="r", cache_dir=str(tmp_path / "acts"), batch_size=16)
    ctx = AuditContext(cfg, {"base": model}, {"forget": items})
    lens = read_layers(ctx, "base")
    beh = score_items(model.forward, model.tokenizer, items)
    np.testing.assert_allclose(lens["soft"][-1], beh.soft, atol=1e-3)
    np.testing.assert_allclose(lens["logprobs"][-1], np.array(beh.candidate_logprobs), atol=1e-3)
    assert np.array_equal(lens["accuracy"][-1].astype(bool), beh.correct)
    return lens, beh


def test_organism_last_layer_is_behavior(suite, base_model, tmp_path):
    items = load_items(suite / "forget.jsonl")[:24]
    tok = base_model.tokenizer
    plain, beh = _last_layer_vs_behavior(base_model, items, tmp_path / "plain")
    assert beh.soft.mean() > 0.8  # B knows its planted facts: the comparison is not at chance
    spaced = _spaced(items)
    assert [candidate_token_ids(tok, it) for it in spaced] == [candidate_token_ids(tok, it) for it in items]
    again, _ = _last_layer_vs_behavior(base_model, spaced, tmp_path / "spaced")
    np.testing.assert_array_equal(again["soft"], plain["soft"])
    doubled = _doubled(items)
    assert all(len(c) > 1 for it in doubled for c in candidate_token_ids(tok, it))
    _last_layer_vs_behavior(base_model, doubled, tmp_path / "doubled")


def test_organism_lens_result_keeps_its_format(suite, base_model, tmp_path):
    from audit.registry import get_lens
    from audit.schema import LensResult

    items = load_items(suite / "forget.jsonl")[:24]
    cfg = AuditConfig(base="b", unlearned="u", forget="f", retain="r", cache_dir=str(tmp_path / "acts"), batch_size=16)
    ctx = AuditContext(cfg, {"base": base_model, "unlearned": base_model}, {"forget": items})
    spec = get_lens("logit_lens")
    res = spec.fn(ctx, spec.make_config({}))
    assert res.error is None
    d = res.data
    assert set(d["per_layer"]) == {"accuracy", "soft", "topk"} and len(d["layer_recoveries"]) == base_model.n_layers
    beh = score_items(base_model.forward, base_model.tokenizer, items)
    assert d["per_layer"]["soft"]["base"][-1] == pytest.approx(beh.soft.mean(), abs=1e-3)
    assert res.recoveries[0].reading.endswith("(most powerful)") and res.recoveries[0].reading in d["per_item"]["readings"]
    assert LensResult.model_validate_json(res.model_dump_json()) == res


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct from its cached conversion (never downloaded here)."""
    from audit.lab.realmodel import GGUF_NAME, fetch_smollm2
    from audit.models import load_model

    if not (_PERSISTENT / "smollm2" / GGUF_NAME).is_file():
        pytest.skip(f"SmolLM2 is not cached in {_PERSISTENT} (tests/test_realmodel.py fetches it)")
    session_cache = os.environ.get("AUDIT_CACHE")
    os.environ["AUDIT_CACHE"] = str(_PERSISTENT)
    try:
        hf_dir = fetch_smollm2().hf_dir  # converted once per machine, then reused
    finally:
        if session_cache is None:
            os.environ.pop("AUDIT_CACHE", None)
        else:
            os.environ["AUDIT_CACHE"] = session_cache
    return load_model(hf_dir, "base")


def test_smollm2_capitals_last_layer_is_behavior(smollm2, tmp_path):
    from audit.lab.realmodel import capital_items

    items = capital_items()[::20]  # 8 countries, one region after another; every answer distinct
    tok = smollm2.tokenizer
    assert any(len(c) > 1 for it in items for c in candidate_token_ids(tok, it))  # some read teacher-forced
    plain, beh = _last_layer_vs_behavior(smollm2, items, tmp_path / "plain")
    # the same with a leading space (half the items: a full-vocabulary read of 30 layers is the cost here)
    spaced, _ = _last_layer_vs_behavior(smollm2, _spaced(items[:4]), tmp_path / "spaced")
    np.testing.assert_allclose(spaced["soft"], plain["soft"][:, :4], atol=1e-5)
    # the base model knows most capitals, and its last layer says so (chance is 0.25)
    assert plain["accuracy"][-1].mean() >= 0.6 and plain["soft"][-1].mean() >= 0.6, plain["soft"][-1]
