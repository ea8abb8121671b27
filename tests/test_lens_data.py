"""Typed lens results (issue 20): every lens registers a config model and a data model,
torch-free in ``audit/lensdata.py``; what a lens writes fits its model; the verdict and the
report read typed fields; a log whose lens data does not fit is refused with one line.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.lensdata import (
    LENS_MODELS,
    LensConfig,
    LensData,
    check_lens_data,
    check_log_data,
    lens_data,
    unexpected_keys,
)
from audit.schema import AuditLog, LensResult, Recovery

runner = CliRunner()


def test_every_registered_lens_has_its_config_and_data_model():
    from audit.registry import available_lenses

    lenses = available_lenses()
    assert set(lenses) == set(LENS_MODELS)  # every built-in lens is in the torch-free table, and only they
    for name, spec in lenses.items():
        config, data = LENS_MODELS[name]
        assert (spec.config_cls, spec.data_cls) == (config, data), name
        assert issubclass(config, LensConfig) and config is not LensConfig, name
        assert issubclass(data, LensData) and data is not LensData, name
        assert "per_item" in data.model_fields
        # the config model validates the lens's own defaults: a saved config re-validates
        assert config.model_validate(config().model_dump(mode="json")) == config()


def test_a_lens_registered_with_other_models_is_refused():
    from audit.lensdata import BehaviorConfig, SteeringData
    from audit.registry import register_lens

    with pytest.raises(ValueError, match="LENS_MODELS pairs it with BehaviorConfig / BehaviorData"):
        register_lens("behavior", BehaviorConfig, SteeringData)


def test_a_lens_without_per_item_scores_says_why():
    # similarity has no per-item score at all; every other lens keeps them
    why = {name: data.no_per_item for name, (_, data) in LENS_MODELS.items()}
    assert "CKA" in why.pop("similarity")
    assert set(why.values()) == {""}


# ---------------------------------------------------------------------------------------
# a real audit: what each lens writes fits its data model, strictly


LENSES = ["behavior", "linear_probe", "logit_lens", "steering", "leak_at_k", "similarity"]
OPTIONS = {"behavior": {"n_boot": 200}, "linear_probe": {"n_shuffles": 2},
           "steering": {"layers": [1], "embed": False, "scales": [1.0], "poolings": ["last"], "n_boot": 200,
                        "directions": ["forget_minus_retain"]},
           "leak_at_k": {"n": 4, "n_boot": 200}}


@pytest.fixture(scope="module")
def audited(suite, tmp_path_factory) -> Path:
    from audit.config import AuditConfig
    from audit.run import run

    out = tmp_path_factory.mktemp("typed") / "out"
    run(AuditConfig(base=str(suite / "base"), unlearned=str(suite / "head_only"),
                    reference=str(suite / "reference_a"), forget=str(suite / "forget.jsonl"),
                    retain=str(suite / "retain.jsonl"), out=str(out), lenses=LENSES, lens_options=OPTIONS))
    return out / "audit_log.json"


def test_each_lens_result_fits_its_data_model(audited):
    from audit.lensdata import read_results

    log = read_results(audited)
    assert list(log.lenses) == LENSES
    for name, res in log.lenses.items():
        assert res.error is None, (name, res.error)
        d = check_lens_data(res)  # strict: every key the lens wrote is declared
        assert type(d) is LENS_MODELS[name][1]
        assert unexpected_keys(d) == []
        if name == "similarity":
            assert d.per_item is None and d.curves()  # type: ignore[attr-defined]
            continue
        # per_item covers every forget item and the readings it names are the lens's own
        assert d.per_item is not None, name
        assert len(d.per_item.ids) == log.items["forget"].n_items
        assert set(d.per_item.readings) <= {r.reading for r in res.recoveries}, name
        assert d.per_item.readings, name


def test_steerings_per_item_reading_reproduces_its_recovery(audited):
    # the cross-fitted reading, re-scored from its per-item scores over every item, is the
    # lens's own recovery: a group verdict applies the same formula to the group's items
    import numpy as np

    from audit.schema import read_log
    from audit.stats import recovery

    log = read_log(audited)
    res = log.lenses["steering"]
    d = lens_data(res)
    assert d.per_item is not None
    rec = res.recoveries[0]
    per = d.per_item.readings[rec.reading]
    subjects = {json.loads(x)["id"]: json.loads(x).get("subject")
                for x in Path(log.items["forget"].path).read_text().splitlines() if x.strip()}
    again = recovery(np.array(per["base"]), np.array(per["unlearned"]), np.array([per["reference"]]),
                     reading=rec.reading, n_boot=res.config["n_boot"], seed=0,
                     clusters=[subjects[i] for i in d.per_item.ids])
    assert again.value == pytest.approx(rec.value, abs=1e-9)
    assert (again.ci_low, again.ci_high) == pytest.approx((rec.ci_low, rec.ci_high), abs=1e-9)
    assert np.mean(per["unlearned"]) == pytest.approx(rec.score_unlearned, abs=1e-9)


def _write(log: dict, where: Path) -> Path:
    where.write_text(json.dumps(log))
    return where


@pytest.mark.parametrize(("lens", "break_it", "said"), [
    ("behavior", lambda d: d["forget"]["base"].update(score="high"), "forget.base.score"),
    ("steering", lambda d: d["per_item"]["readings"][next(iter(d["per_item"]["readings"]))]["base"].pop(),
     "per_item"),
    ("logit_lens", lambda d: d.update(per_layer={"soft": "not curves"}), "per_layer.soft"),
])
def test_a_log_whose_lens_data_does_not_fit_is_refused_in_one_line(audited, tmp_path, lens, break_it, said):
    from cli import app

    d = json.loads(audited.read_text())
    bad = copy.deepcopy(d)
    break_it(bad["lenses"][lens]["data"])
    path = _write(bad, tmp_path / "audit_log.json")
    res = runner.invoke(app, ["report", str(path), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert "Traceback" not in msg and len(msg.splitlines()) == 1
    assert f"lens '{lens}'" in msg and said in msg
    assert not (tmp_path / "r.html").exists()
    # the same log, unbroken, renders
    ok = _write(d, tmp_path / "ok.json")
    assert runner.invoke(app, ["report", str(ok), "--out", str(tmp_path / "ok.html")]).exit_code == 0


def test_an_unknown_key_reads_but_a_lens_may_not_write_it(audited):
    log = AuditLog.model_validate_json(audited.read_text())
    res = log.lenses["behavior"]
    res.data["a_key_from_a_newer_version"] = 1
    check_log_data(log.lenses)  # reading: kept, no error
    with pytest.raises(ValueError, match="does not declare: data.a_key_from_a_newer_version"):
        check_lens_data(res)


def test_the_report_draws_the_thresholds_of_the_policy_in_the_log(audited, tmp_path):
    # change the policy stored in the log: the recovery chart's behaviour gate and τ lines move
    from cli import app

    d = json.loads(audited.read_text())
    lines = {}
    for gate in (0.5, 0.8):
        d["policy"]["thresholds"]["behavior_recovery"] = gate
        path = _write(d, tmp_path / f"log{gate}.json")
        assert runner.invoke(app, ["report", str(path), "--out", str(tmp_path / f"r{gate}.html")]).exit_code == 0
        html = (tmp_path / f"r{gate}.html").read_text()
        figs = [json.loads(p) for p in re.findall(
            r"Plotly\.newPlot\('fig\d+', \.\.\.\(f=>\[f\.data,f\.layout\]\)\((.*?)\), \{responsive", html)]
        chart = next(f for f in figs if "Recovery by lens" in f["layout"]["title"]["text"])
        shapes = [s["x0"] for s in chart["layout"]["shapes"] if s.get("type") == "line"]
        labels = [a["text"] for a in chart["layout"]["annotations"]]
        lines[gate] = dict(zip(labels, shapes, strict=True))
    assert lines[0.5]["behavior gate"] == pytest.approx(0.5)
    assert lines[0.8]["behavior gate"] == pytest.approx(0.8)
    assert lines[0.5]["τ_d"] == lines[0.8]["τ_d"]


# ---------------------------------------------------------------------------------------
# the verdict reads per_item typed, and names a lens it cannot re-score per group


def _rec(reading: str, value: float, lo: float, hi: float, **kw) -> Recovery:
    return Recovery(reading=reading, value=value, ci_low=lo, ci_high=hi, score_base=0.9, score_unlearned=0.3,
                    score_reference=0.25, n_items=40, informative=True, **kw)


def _behavior(ids: list[str]) -> LensResult:
    n = len(ids)
    per = {"base": [1.0] * n, "unlearned": [0.0] * n, "reference": [0.0] * n}
    role = {"score": 0.9, "greedy": 0.9, "mean_margin": 1.0}
    return LensResult(name="behavior", recoveries=[_rec("ranking", 0.0, -0.1, 0.1)], data={
        "forget": {"base": role, "unlearned": role}, "retain": {"base": role, "unlearned": role},
        "per_item": {"ids": ids, "readings": {"ranking": per}}})


def test_a_group_verdict_reads_steerings_per_item_scores_and_names_a_lens_without_them():
    from audit.verdict import group_verdicts

    ids = [f"i{k}" for k in range(40)]
    reading = "best steering, cross-fitted: L1"
    steer_per = {"base": [1.0] * 40, "unlearned": [1.0] * 20 + [0.0] * 20, "reference": [0.0] * 40}
    steering = LensResult(name="steering", recoveries=[_rec(reading, 0.5, 0.4, 0.6, control_threshold=0.0,
                                                            side_effect_ok=True)],
                          data={"sites": [], "unsteered": {"forget": {}, "retain_accuracy_unlearned": 1.0},
                                "per_item": {"ids": ids, "readings": {reading: steer_per}}})
    # relearn read something but kept no per-item scores (e.g. not every item scored)
    relearn = LensResult(name="relearn", recoveries=[_rec("relearn split 20 steps", 0.0, -0.1, 0.1)],
                         data={"per_item": {"ids": ids, "readings": {}}})
    similarity = LensResult(name="similarity", data={"forget_base_vs_unlearned": [1.0, 0.9]})
    lenses = {"behavior": _behavior(ids), "steering": steering, "relearn": relearn, "similarity": similarity}
    groups = {"first half": ids[:20], "second half": ids[20:]}
    first, second = group_verdicts(lenses, groups, {i: 0.25 for i in ids}, min_power=0.2)
    # steering recovers every item of the first half and none of the second
    assert first.label == "SUPPRESSED" and any(e.lens == "steering" for e in first.evidence)
    assert second.label != "SUPPRESSED"
    for v in (first, second):
        assert "not re-scored per group: relearn (it kept no per-item scores in this run)" in v.reason
        assert "similarity" not in v.reason  # it reads no recovery, so no verdict loses it


def test_the_verdict_names_a_lens_whose_model_has_no_per_item_scores():
    from audit.verdict import without_per_item

    ids = ["a", "b"]
    sim = LensResult(name="similarity", recoveries=[_rec("cka", 0.0, 0.0, 0.0)], data={})
    assert without_per_item({"behavior": _behavior(ids), "similarity": sim}) == {
        "similarity": LENS_MODELS["similarity"][1].no_per_item}
