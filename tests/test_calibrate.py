"""``audit calibrate``: the auditor against ground truth on freshly trained organism suites (issue 7)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from audit.calibrate import summarise


def _row(truth, verdict, score, probe=None):
    return {"suite": "s", "organism": f"{truth}-{verdict}-{score}", "truth": truth, "verdict": verdict,
            "deletion_score": score, "reason": "r", "lens_scores": {"linear_probe": probe}}


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


def test_small_preset_never_calls_suppressed_deleted(small):
    _, res = small
    assert res["summary"]["suppressed_called_deleted"] == 0, res["summary"]["wrong"]


def test_small_preset_labels_every_construction_organism_right(small):
    # issue 7's target, asserted: every construction-truth organism (reference_b DELETED,
    # head_only / late_layers / subject_offset SUPPRESSED or, where a construction stopped
    # short, NOT_UNLEARNED as its manifest measured, noop NOT_UNLEARNED) gets its label
    _, res = small
    rows = [r for r in res["rows"] if r["truth"] is not None]
    assert len(rows) == 10 and sum(r["truth"] == "DELETED" for r in rows) == 2
    assert res["summary"]["wrong"] == [], res["summary"]["wrong"]
    assert res["summary"]["n_correct"] == 10


def test_small_preset_deletion_score_separates_deleted_from_suppressed(small):
    _, res = small
    assert res["summary"]["deletion_score_auroc"] >= 0.99


def test_calibration_report_renders_from_json(small):
    out, res = small
    html = (out / "calibration.html").read_text()
    assert "Confusion matrix" in html and "Per-lens AUROC" in html
    assert html.count("<script") == 2  # plotly inlined once + the page's own script


def test_bad_calibration_arguments_exit_2_with_a_clear_message(tmp_path):
    from cli import app

    r = CliRunner().invoke(app, ["calibrate", "--preset", "small", "--jobs", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--jobs must be at least 1" in r.output
    r = CliRunner().invoke(app, ["calibrate", "--preset", "nope", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown calibration preset 'nope'" in r.output
    assert not (tmp_path / "o").exists()


def test_default_preset_gives_each_seed_its_own_world():
    from audit.calibrate import PRESETS

    p = PRESETS["default"]
    runs = [(v.name, arch, s) for v in p.variants for arch in p.archs for s in p.seeds if v.seeds is None or s in v.seeds]
    assert len(runs) == 6 and {s for _, _, s in runs} == {0, 1, 2} and {a for _, a, _ in runs} == {"llama", "gpt2"}
    assert p.methods and len({(v.world.n_people, tuple(v.world.attributes), v.shape.d_model, v.shape.n_layers)
                              for v in p.variants}) == 3
