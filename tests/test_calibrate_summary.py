"""``audit.lab.calibrate`` without training: ``summarise`` on hand-made rows (the NOT_UNLEARNED
rows, whose truth was measured from behaviour, are reported apart from the rows whose truth the
construction alone gives, issue 18, in both tables and in the calibration report), and the
presets' grids and worlds."""

from __future__ import annotations

from audit.lab.calibrate import summarise, truth_source


def _row(truth, verdict, score=0.5, role=None, reference=True, organism=None):
    return {"suite": "s", "organism": organism or f"{truth}-{verdict}-{score}", "truth": truth, "verdict": verdict,
            "deletion_score": score, "reason": "r", "lens_scores": {"linear_probe": score}, "role": role,
            "reference": reference}


ROWS = [
    _row("DELETED", "DELETED", 0.9, role="reference", organism="reference_b"),
    _row("DELETED", "INCONCLUSIVE", 0.7, role="lineage_reference", organism="lineage"),
    _row("SUPPRESSED", "SUPPRESSED", 0.1, role="suppressed_construction", organism="mid_block"),
    _row("SUPPRESSED", "DELETED", 0.95, role="suppressed_construction", organism="rmu_mid"),
    # behaviour-measured truth: the no-op, and a construction that stopped short
    _row("NOT_UNLEARNED", "NOT_UNLEARNED", 0.0, role="not_unlearned_construction", organism="noop"),
    _row("NOT_UNLEARNED", "NOT_UNLEARNED", 0.1, role="suppressed_construction", organism="head_only"),
    _row("NOT_UNLEARNED", "SUPPRESSED", 0.2, role="suppressed_construction", organism="late_layers"),
    _row(None, "SUPPRESSED", 0.3, role="method", organism="ga_gentle"),  # no truth: in neither
    _row("SUPPRESSED", "SUPPRESSED", 0.1, role="suppressed_construction", organism="mid_block", reference=False),
    _row("NOT_UNLEARNED", "INCONCLUSIVE", 0.1, role="not_unlearned_construction", organism="noop",
         reference=False),
]


def test_truth_source_follows_where_the_label_came_from():
    assert [truth_source(r) for r in ROWS[:8]] == ["construction"] * 4 + ["behaviour"] * 3 + [None]


def test_summary_reports_behaviour_measured_rows_apart():
    s = summarise(ROWS)
    by = s["by_truth_source"]
    assert set(by) == {"construction", "behaviour"}
    con, beh = by["construction"], by["behaviour"]
    # the overall table still counts every truth row; the two parts add up to it
    assert s["n_construction"] == 7 and con["n_construction"] + beh["n_construction"] == 7
    assert s["n_correct"] == con["n_correct"] + beh["n_correct"] == 4
    assert con["n_construction"] == 4 and con["n_correct"] == 2 and con["suppressed_called_deleted"] == 1
    assert con["confusion"]["NOT_UNLEARNED"] == {"DELETED": 0, "SUPPRESSED": 0, "NOT_UNLEARNED": 0,
                                                 "INCONCLUSIVE": 0}
    assert con["confusion"]["DELETED"]["INCONCLUSIVE"] == 1 and con["confusion"]["SUPPRESSED"]["DELETED"] == 1
    assert con["per_label"]["SUPPRESSED"] == {"precision": 1.0, "recall": 0.5, "n_truth": 2, "n_called": 1}
    assert con["never_trained"]["n"] == 1  # reference_b; lineage is DELETED truth but not never-trained
    assert beh["n_construction"] == 3 and beh["n_correct"] == 2 and beh["accuracy"] == 2 / 3
    assert beh["confusion"]["NOT_UNLEARNED"] == {"DELETED": 0, "SUPPRESSED": 1, "NOT_UNLEARNED": 2,
                                                 "INCONCLUSIVE": 0}
    assert sum(beh["confusion"][t][v] for t in ("DELETED", "SUPPRESSED") for v in beh["confusion"][t]) == 0
    assert [w["organism"] for w in beh["wrong"]] == ["late_layers"]
    assert "by_truth_source" not in con and "by_truth_source" not in beh
    # the no-reference table is split the same way, from its own rows only
    nr = s["no_reference"]["by_truth_source"]
    assert nr["construction"]["n_construction"] == 1 and nr["construction"]["n_correct"] == 1
    assert nr["behaviour"]["n_construction"] == 1 and nr["behaviour"]["n_correct"] == 0


def test_summary_without_behaviour_rows_has_an_empty_behaviour_part():
    s = summarise(ROWS[:4])
    assert s["by_truth_source"]["behaviour"]["n_construction"] == 0
    assert s["by_truth_source"]["behaviour"]["accuracy"] is None
    assert s["by_truth_source"]["construction"]["n_construction"] == 4


def test_calibration_report_shows_the_two_sources_apart():
    from reports.calibration import render_calibration

    s = summarise(ROWS)
    result = {"preset": "custom", "config": {}, "created": "now", "total_s": 1.0, "summary": s, "rows": ROWS,
              "methods": [], "methods_no_reference": [], "runs": []}
    html = render_calibration(result)
    assert html.count("By source of the truth label") == 2  # with N and without N
    assert "Truth measured from behaviour" in html and "Truth from the construction alone" in html
    assert "2 of 3 labelled correctly (67%)" in html
    assert "2 of 4 labelled correctly (50%); 1 SUPPRESSED-truth labelled DELETED" in html
    # a result written before the split still renders
    old = {**s, "by_truth_source": None, "no_reference": None}
    assert "By source of the truth label" not in render_calibration({**result, "summary": old})


def test_default_preset_runs_default_grids_and_light_grids_on_request():
    from audit.lab.calibrate import _LIGHT_GRIDS, PRESETS, with_grids

    d, small = PRESETS["default"], PRESETS["small"]
    assert d.lens_options == {}  # each lens's default grid, the strength users get
    assert small.lens_options == _LIGHT_GRIDS  # CI stays light
    assert with_grids(d, None) is d and with_grids(d, "light").lens_options == _LIGHT_GRIDS
    assert with_grids(small, "default").lens_options == {}
    # options other than the grids' lenses are kept either way
    custom = d.model_copy(update={"lens_options": {"leak_at_k": {"k": 8}, "relearn": {"steps": [3], "lr": 1e-3}}})
    assert with_grids(custom, "default").lens_options == {"leak_at_k": {"k": 8}}
    light = with_grids(custom, "light").lens_options
    assert light["leak_at_k"] == {"k": 8} and light["relearn"] == {**_LIGHT_GRIDS["relearn"], "lr": 1e-3}


def test_unknown_grids_exit_2_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, ["calibrate", "--preset", "small", "--grids", "heavy", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown grids 'heavy'" in r.output
    assert not (tmp_path / "o").exists()


def test_default_preset_holds_the_open_answer_world():
    from audit.lab.calibrate import PRESETS
    from audit.lab.organisms import open_answer_suite

    d = PRESETS["default"]
    (v,) = [v for v in d.variants if v.world.attributes == ["birth_town"]]
    ref = open_answer_suite(0)
    # open_answer_suite's world, shape and head-only steps, with 80 forget people instead of 40
    # (issue 16: 40 items left CIs too wide to bound) and 800 training steps for the larger world
    world = ref.world.model_copy(update={"n_people": 200, "n_forget": 80, "n_qa": 60})
    assert (v.world, v.shape, v.head_only_steps) == (world, ref.shape, ref.head_only_steps)
    assert v.train == ref.train.model_copy(update={"steps": 800})
    from audit.lab.organisms import CONSTRUCTIONS, HARD_CONSTRUCTIONS

    # every construction, hard ones too, and lineage_b, the second in-basis reference, which the
    # world's organisms are audited against a second time; the closed worlds build no lineage_b
    assert v.seeds == [0] and v.constructions == [*CONSTRUCTIONS, *HARD_CONSTRUCTIONS]
    assert v.extra_references == ["lineage_b"] and "lineage_b" not in d.constructions
    assert all(x.constructions is None and not x.extra_references for x in d.variants if x is not v)
    assert d.two_phase_base
    from audit.lab.calibrate import suite_config

    cfg = suite_config(v, "gpt2", 0, d)
    assert (cfg.world, cfg.train, cfg.head_only_steps, cfg.seed) == (world, v.train, 1000, 0)
    assert cfg.shape == ref.shape.model_copy(update={"arch": "gpt2"}) and cfg.two_phase_base and cfg.methods
    assert cfg.constructions == v.constructions and cfg.nulls
    # a closed-world variant keeps the default head-only steps (and so its key's shape)
    assert suite_config(d.variants[0], "llama", 0, d).head_only_steps == 3000
    # the closed-world variants: still one per seed
    closed = [x for x in d.variants if x is not v]
    assert sorted(s for x in closed for s in x.seeds) == [0, 1, 2]


def test_rows_against_another_reference_get_a_table_of_their_own():
    from reports.calibration import render_calibration

    other = [{**r, "reference_name": "lineage_b"} for r in ROWS[:3]]
    s = summarise([*ROWS, *other])
    assert s == {**summarise(ROWS), "by_reference": s["by_reference"]}  # the main table is unchanged
    t = s["by_reference"]["lineage_b"]
    assert t["n_construction"] == 3 and t["confusion"]["DELETED"]["INCONCLUSIVE"] == 1
    result = {"preset": "custom", "config": {}, "created": "now", "total_s": 1.0, "summary": s,
              "rows": [*ROWS, *other], "methods": [], "methods_no_reference": [], "runs": []}
    assert "Against lineage_b" in render_calibration(result)
