"""``audit calibrate``: the auditor against ground truth on freshly trained organism suites (issue 7)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from audit.lab.calibrate import summarise


def _row(truth, verdict, score, probe=None, role=None, reference=True):
    return {"suite": "s", "organism": f"{truth}-{verdict}-{score}", "truth": truth, "verdict": verdict,
            "deletion_score": score, "reason": "r", "lens_scores": {"linear_probe": probe}, "role": role,
            "reference": reference}

NEVER_TRAINED = {"reference_b", "reference_b_t2", "reference_b_t05", "reference_skewed"}


def test_summary_counts_the_dangerous_error_and_auroc():
    rows = [_row("DELETED", "DELETED", 0.9, 0.8), _row("SUPPRESSED", "DELETED", 0.95, 0.1),
            _row("SUPPRESSED", "SUPPRESSED", 0.2, 0.2), _row("NOT_UNLEARNED", "NOT_UNLEARNED", 0.0)]
    s = summarise(rows)
    assert s["n_correct"] == 3 and s["n_construction"] == 4
    assert s["suppressed_called_deleted"] == 1
    assert s["confusion"]["SUPPRESSED"]["DELETED"] == 1
    assert s["deletion_score_auroc"] == pytest.approx(0.5)  # 0.9 beats 0.2 but not 0.95
    assert s["per_lens_auroc"]["linear_probe"]["auroc"] == pytest.approx(1.0)
    assert [w["verdict"] for w in s["wrong"]] == ["DELETED"]
    assert s["per_label"]["DELETED"] == {"precision": 0.5, "recall": 1.0, "n_truth": 1, "n_called": 2}
    assert s["per_label"]["SUPPRESSED"] == {"precision": 1.0, "recall": 0.5, "n_truth": 2, "n_called": 1}
    assert s["no_reference"] is None


def test_summary_keeps_the_no_reference_table_apart_and_counts_never_trained_misses():
    rows = [_row("DELETED", "DELETED", 0.9, role="reference"), _row("SUPPRESSED", "SUPPRESSED", 0.2),
            _row("DELETED", "SUPPRESSED", 0.5, role="reference", reference=False),
            _row("DELETED", "NOT_UNLEARNED", 0.0, role="reference", reference=False),
            _row("DELETED", "INCONCLUSIVE", 0.8, role="reference", reference=False),
            _row("SUPPRESSED", "DELETED", 0.9, reference=False)]
    s = summarise(rows)
    assert s["n_construction"] == 2 and s["n_correct"] == 2 and s["suppressed_called_deleted"] == 0
    assert s["never_trained"]["n"] == 1 and s["never_trained"]["called_suppressed_or_not_unlearned"] == 0
    nr = s["no_reference"]
    assert nr["n_construction"] == 4 and nr["n_correct"] == 0 and nr["suppressed_called_deleted"] == 1
    assert nr["never_trained"]["n"] == 3 and nr["never_trained"]["called_suppressed_or_not_unlearned"] == 2
    assert nr["never_trained"]["labels"] == {"DELETED": 0, "SUPPRESSED": 1, "NOT_UNLEARNED": 1, "INCONCLUSIVE": 1}
    assert nr["per_label"]["DELETED"]["precision"] == 0.0 and nr["per_label"]["SUPPRESSED"]["recall"] == 0.0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """``audit calibrate --preset small`` run once: suites trained in this session."""
    from cli import app

    out = tmp_path_factory.mktemp("calibration")
    # the two suites side by side, one process and one torch thread each
    r = CliRunner().invoke(app, ["calibrate", "--preset", "small", "--out", str(out), "--jobs", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    return out, json.loads((out / "calibration.json").read_text())


def test_small_preset_covers_two_architectures(small):
    _, res = small
    assert {r["arch"] for r in res["rows"]} == {"llama", "gpt2"}
    assert {r["truth"] for r in res["rows"]} == {"DELETED", "SUPPRESSED", "NOT_UNLEARNED"}


def test_small_preset_audits_the_never_trained_nulls_with_and_without_reference(small):
    # reference_b, reference_b at sampling temperature 2 and 0.5 (unembedding scaled by 0.5 / 2),
    # and a never-trained model with a skewed prior over answer values: DELETED truth, each
    # audited with N = reference_a and again with N withheld
    _, res = small
    for arch in ("llama", "gpt2"):
        for ref in (True, False):
            rows = [r for r in res["rows"] if r["arch"] == arch and r["reference"] is ref]
            assert NEVER_TRAINED <= {r["organism"] for r in rows}, (arch, ref)
            assert all(r["truth"] == "DELETED" and r["role"] == "reference" for r in rows
                       if r["organism"] in NEVER_TRAINED)
    # the small preset audits without N the never-trained models and the SUPPRESSED-truth
    # constructions (the NOT_UNLEARNED ones only with N, to save CI time)
    key = {(r["suite"], r["organism"]) for r in res["rows"] if r["reference"] and r["truth"] in ("DELETED", "SUPPRESSED")}
    assert key == {(r["suite"], r["organism"]) for r in res["rows"] if not r["reference"]}


def test_small_preset_never_calls_suppressed_deleted(small):
    _, res = small
    s = res["summary"]
    assert s["suppressed_called_deleted"] == 0, s["wrong"]
    assert s["no_reference"]["suppressed_called_deleted"] == 0, s["no_reference"]["wrong"]


def test_small_preset_never_fails_a_never_trained_model(small):
    # issue 16: a model that never saw the forget set, at any sampling temperature or prior,
    # is never SUPPRESSED or NOT_UNLEARNED, with the reference or without it
    _, res = small
    for s in (res["summary"], res["summary"]["no_reference"]):
        nt = s["never_trained"]
        assert nt["n"] == 2 * len(NEVER_TRAINED)
        assert nt["called_suppressed_or_not_unlearned"] == 0, nt["organisms"]


def test_small_preset_labels_every_construction_organism_right(small):
    # issue 7's target, asserted: every construction-truth organism (reference_b DELETED,
    # head_only / late_layers / subject_offset / mid_block SUPPRESSED or, where a construction stopped
    # short, NOT_UNLEARNED as its manifest measured, noop NOT_UNLEARNED) gets its label
    _, res = small
    rows = [r for r in res["rows"] if r["truth"] is not None and r["reference"]]
    assert len(rows) == 18 and sum(r["truth"] == "DELETED" for r in rows) == 8
    core = [r for r in rows if r["organism"] not in NEVER_TRAINED - {"reference_b"}]
    assert len(core) == 12
    assert [r for r in core if r["truth"] != r["verdict"]] == [], res["summary"]["wrong"]
    # the never-trained nulls (temperature 2 and 0.5, skewed prior): never SUPPRESSED or
    # NOT_UNLEARNED (above), and DELETED on most; measured 8 of 8 at the 0.25 band (make test,
    # 2026-11-26), 7 of 8 at the earlier 0.15 (Llama's reference_skewed INCONCLUSIVE: ranking
    # behavior 0.06, CI -0.05-0.15, just over that band)
    nulls = [r for r in rows if r["organism"] in NEVER_TRAINED]
    assert sum(r["verdict"] == "DELETED" for r in nulls) >= 6, [(r["organism"], r["verdict"]) for r in nulls]
    assert {r["verdict"] for r in nulls} <= {"DELETED", "INCONCLUSIVE"}


def test_small_preset_deletion_score_separates_deleted_from_suppressed(small):
    _, res = small
    assert res["summary"]["deletion_score_auroc"] >= 0.99


def test_calibration_report_renders_from_json(small):
    out, res = small
    html = (out / "calibration.html").read_text()
    assert "Confusion matrix" in html and "Per-lens AUROC" in html and "Without a reference" in html
    assert html.count("<script") == 2  # plotly inlined once + the page's own script


def test_bad_calibration_arguments_exit_2_with_a_clear_message(tmp_path):
    from cli import app

    r = CliRunner().invoke(app, ["calibrate", "--preset", "small", "--jobs", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--jobs must be at least 1" in r.output
    r = CliRunner().invoke(app, ["calibrate", "--preset", "nope", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown calibration preset 'nope'" in r.output
    assert not (tmp_path / "o").exists()


def test_default_preset_gives_each_seed_its_own_world():
    from audit.lab.calibrate import PRESETS

    p = PRESETS["default"]
    runs = [(v.name, arch, s) for v in p.variants for arch in p.archs for s in p.seeds if v.seeds is None or s in v.seeds]
    # three closed-answer worlds, one per seed, and the open-answer world (issue 18) on seed 0
    assert len(runs) == 8 and {s for _, _, s in runs} == {0, 1, 2} and {a for _, a, _ in runs} == {"llama", "gpt2"}
    assert p.methods and len({(v.world.n_people, tuple(v.world.attributes), v.shape.d_model, v.shape.n_layers)
                              for v in p.variants}) == 4
    assert [v.world.attributes for v in p.variants if v.name == "open-answers"] == [["birth_town"]]
    # issue 16: every world has ≥ 80 forget people, and closed answers are balanced, so a
    # never-trained model's prior over values is worth chance on the forget set
    assert all(v.world.n_forget >= 80 for v in p.variants)
    assert all(v.world.balanced for v in p.variants if v.name != "open-answers")


def test_small_preset_includes_a_mid_network_suppression(small):
    # issue 18: the small preset holds a suppression in the middle of the network (block 1 of
    # 3 trained alone, the blocks before it untouched), whose forget behaviour really dropped
    # (its manifest truth, measured at build time), and it is never called DELETED
    _, res = small
    mid = [r for r in res["rows"] if r["organism"] == "mid_block"]
    assert {(r["arch"], r["reference"]) for r in mid} == {(a, ref) for a in ("llama", "gpt2") for ref in (True, False)}
    assert all(r["truth"] == "SUPPRESSED" for r in mid), [(r["arch"], r["truth"]) for r in mid]
    assert [r for r in mid if r["verdict"] != "SUPPRESSED"] == [], [(r["arch"], r["verdict"], r["reason"]) for r in mid]
