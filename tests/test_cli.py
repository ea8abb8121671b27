"""``audit`` end to end through the CLI: outputs, exit codes, messages."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from audit.schema import SCHEMA_VERSION
from cli import app

runner = CliRunner()


def test_run_writes_log_and_offline_report(run_args, suite, tmp_path):
    res = runner.invoke(app, run_args(suite, tmp_path / "o", unlearned="noop"))
    # the default policy fails anything but DELETED: exit 1
    assert res.exit_code == 1, res.output
    assert "NOT_UNLEARNED" in res.output and "policy failed" in res.output
    log = json.loads((tmp_path / "o" / "audit_log.json").read_text())
    assert log["version"] == SCHEMA_VERSION and log["status"] == "success" and log["error"] is None
    assert log["verdicts"][0]["label"] == "NOT_UNLEARNED"
    assert log["lenses"]["behavior"]["lens_version"] == "1"
    assert set(log["models"]) == {"base", "unlearned", "reference"}
    assert all(len(m["hash"]) == 16 for m in log["models"].values())
    rank = log["lenses"]["behavior"]["recoveries"][0]
    assert rank["reading"] == "ranking" and rank["value"] >= 0.9
    html = (tmp_path / "o" / "report.html").read_text()
    assert "NOT_UNLEARNED" in html and "Plotly.newPlot" in html
    assert "http://" not in html.split("<script>", 1)[0] and "<script src" not in html
    # reference_b behaves like a model that never knew
    res = runner.invoke(app, run_args(suite, tmp_path / "r", unlearned="reference_b"))
    assert res.exit_code == 1, res.output  # behavior alone cannot say DELETED
    rb = json.loads((tmp_path / "r" / "audit_log.json").read_text())["lenses"]["behavior"]["recoveries"][0]
    assert rb["ci_high"] < 0.15


def test_log_round_trips_and_report_rerenders(run_args, suite, tmp_path):
    from audit.schema import read_log, write_log

    runner.invoke(app, run_args(suite, tmp_path / "o"))
    log = read_log(tmp_path / "o" / "audit_log.json")
    write_log(log, tmp_path / "copy.json")
    again = read_log(tmp_path / "copy.json")
    assert again.model_dump_json() == log.model_dump_json()
    res = runner.invoke(app, ["report", str(tmp_path / "copy.json"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 100_000


def test_config_file_and_cli_precedence(suite, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base: {suite / 'base'}\nunlearned: {suite / 'noop'}\nforget: {suite / 'forget.jsonl'}\n"
                   f"retain: {suite / 'retain.jsonl'}\nout: {tmp_path / 'fromfile'}\nseed: 5\nmax_items: 24\n"
                   # behavior alone: this is about where settings come from (the full default
                   # battery here cost about 50 s of `make test`)
                   "lenses: [behavior]\n")
    res = runner.invoke(app, ["run", "--config", str(cfg), "--seed", "7"])
    assert res.exit_code == 1, res.output
    log = json.loads((tmp_path / "fromfile" / "audit_log.json").read_text())
    assert log["config"]["seed"] == 7 and log["items"]["forget"]["n_items"] == 24
    assert log["config"]["lenses"] == ["behavior"] and set(log["lenses"]) == {"behavior"}
    assert "reference" not in log["models"] and "weaker" in log["verdicts"][0]["reason"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ({"lenses": "behaviour"}, "unknown lens 'behaviour'. Did you mean 'behavior'"),
        ({"unlearned": "does_not_exist"}, "checkpoint not found"),
        ({"dtype": "int3"}, "unknown dtype 'int3'"),
    ],
)
def test_bad_input_exits_2_with_a_message(run_args, suite, tmp_path, mutate, message):
    res = runner.invoke(app, run_args(suite, tmp_path / "o", **mutate))
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "o" / "audit_log.json").exists()


def test_bad_items_and_config_exit_2(run_args, suite, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "answer": "x", "distractors": ["y"]}\n')
    a = run_args(suite, tmp_path / "o")
    a[a.index("--forget") + 1] = str(bad)
    res = runner.invoke(app, a)
    assert res.exit_code == 2 and "has 1 distractors" in res.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bsae: x\n")
    res = runner.invoke(app, ["run", "--config", str(cfg)])
    assert res.exit_code == 2 and "config option" in res.output


def test_previous_results_survive_a_failed_run(run_args, suite, tmp_path):
    out = tmp_path / "o"
    assert runner.invoke(app, run_args(suite, out)).exit_code == 1
    before = (out / "audit_log.json").read_text()
    res = runner.invoke(app, run_args(suite, out, lenses="nope"))
    assert res.exit_code == 2
    assert (out / "audit_log.json").read_text() == before
    assert math.isfinite(json.loads(before)["verdicts"][0]["deletion_score"])


def test_schema_command_prints_json_schema():
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    assert json.loads(res.output)["title"] == "AuditLog"


def test_policy_gate_exit_codes(run_args, suite, tmp_path):
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("fail_on: [NOT_UNLEARNED]\n")
    res = runner.invoke(app, run_args(suite, tmp_path / "a", unlearned="reference_b", policy=lenient))
    assert res.exit_code == 0, res.output
    assert "policy passed" in res.output
    res = runner.invoke(app, run_args(suite, tmp_path / "b", unlearned="noop", policy=lenient))
    assert res.exit_code == 1 and "forget set: NOT_UNLEARNED" in " ".join(res.output.split())
    log = json.loads((tmp_path / "b" / "audit_log.json").read_text())
    assert log["policy"]["fail_on"] == ["NOT_UNLEARNED"] and log["policy_result"]["passed"] is False
    floor = tmp_path / "floor.yaml"
    floor.write_text("fail_on: []\nretain_floor: 0.999\n")
    res = runner.invoke(app, run_args(suite, tmp_path / "c", unlearned="late_layers", policy=floor))
    assert res.exit_code == 1 and "below the floor" in res.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("thresholds:\n  tau_x: 0.2\n", "key 'thresholds.tau_x': Extra inputs are not permitted"),
        ("fail_on: [MAYBE]\n", "key 'fail_on.0'"),
        ("min_items: lots\n", "key 'min_items'"),
        ("[1, 2]\n", "must hold a mapping"),
        ("a: [\n", "is not valid YAML"),
    ],
)
def test_bad_policy_exits_2_naming_the_key(run_args, suite, tmp_path, text, message):
    pol = tmp_path / "p.yaml"
    pol.write_text(text)
    res = runner.invoke(app, run_args(suite, tmp_path / "o", policy=pol))
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_too_few_items_for_the_policy(run_args, suite, tmp_path):
    res = runner.invoke(app, run_args(suite, tmp_path / "o", max_items=5))
    assert res.exit_code == 2 and "the policy requires at least 20" in " ".join(res.output.split())


def test_group_verdicts_per_attribute(run_args, suite, tmp_path):
    runner.invoke(app, run_args(suite, tmp_path / "o", unlearned="noop"))
    log = json.loads((tmp_path / "o" / "audit_log.json").read_text())
    scopes = [v["scope"] for v in log["verdicts"]]
    assert scopes == ["forget set", "attribute=city", "attribute=job", "attribute=sport"]
    assert all(v["label"] == "NOT_UNLEARNED" for v in log["verdicts"])
    assert all(v["n_items"] == log["items"]["forget"]["n_items"] // 3 for v in log["verdicts"][1:])


def test_organisms_audit_writes_a_report_per_organism(suite, tmp_path):
    # `make demo`'s path: the library writes the logs, cli.py renders each report beside its log
    res = runner.invoke(app, ["organisms", "audit", str(suite), "--out", str(tmp_path / "o"), "--lenses", "behavior",
                              "--only", "head_only"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "head_only" / "audit_log.json").read_text())["status"] == "success"
    html = (tmp_path / "o" / "head_only" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in html
    assert json.loads((tmp_path / "o" / "summary.json").read_text())[0]["organism"] == "head_only"
