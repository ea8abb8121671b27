"""``audit calibrate --resume``: a stopped calibration goes on without re-auditing finished organisms.

A tiny preset (one suite: the never-trained nulls and the noop construction, behavior only)
is calibrated once; copies of its output folder are then resumed. Every call of
``audit.run`` is counted, so a resume that re-audits what it could read back, or reads
back a log made under other settings, fails here.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from audit.lab.calibrate import Preset, Variant, calibrate
from audit.lab.organisms import ModelShape, TrainConfig
from audit.lab.world import WorldConfig

# 10 forget people × 3 attributes = 30 forget items (the policy's minimum is 20); without a
# reference only noop (NOT_UNLEARNED truth) is audited, so both audit_suite calls resume
TINY = Preset(
    seeds=[0], archs=["llama"],
    variants=[Variant(name="tiny", world=WorldConfig(n_people=40, n_forget=10, n_qa=10, balanced=True),
                      shape=ModelShape(d_model=32, n_layers=2, n_heads=2, d_mlp=64), train=TrainConfig(steps=150))],
    methods=False, constructions=["noop"], lenses=["behavior"], lens_options={"behavior": {"n_boot": 200}},
    no_reference_truths=["NOT_UNLEARNED"],
)
SUITE = "tiny-llama-s0"


def _key(rows):
    # audit_s is the organism's own audit time, read from its log, so it differs for a re-audit
    return [{k: v for k, v in r.items() if k != "audit_s"} for r in rows]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The tiny preset calibrated once (suite built in this session) and its result."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("calibrate_resume")
    res = calibrate(root / "out", TINY, suites=root / "suites")
    return root, res


@pytest.fixture
def calls(monkeypatch):
    """The config of every ``audit.run`` call that ``audit_suite`` makes."""
    import audit.lab.suite

    seen, real = [], audit.lab.suite.run

    def counted(cfg, **kw):
        seen.append(cfg)
        return real(cfg, **kw)

    monkeypatch.setattr(audit.lab.suite, "run", counted)
    return seen


def _copy(first, tmp_path):
    root, _ = first
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    return root / "suites", out


def _logs(out):
    return {p.relative_to(out).parent.as_posix(): p.read_bytes() for p in out.rglob("audit_log.json")}


def test_first_run_audits_every_organism_with_and_without_reference(first):
    _, res = first
    rows = res["rows"]
    assert {(r["organism"], r["reference"]) for r in rows if r["organism"] == "noop"} == {("noop", True),
                                                                                          ("noop", False)}
    assert {r["organism"] for r in rows if r["reference"]} >= {"reference_b", "noop"}
    assert res["resumed"] is False


def test_resume_reaudits_only_the_organism_whose_log_is_gone(first, calls, tmp_path):
    _, res = first
    suites, out = _copy(first, tmp_path)
    gone = out / SUITE / "no_reference" / "noop" / "audit_log.json"
    gone.unlink()
    before = _logs(out)
    again = calibrate(out, TINY, suites=suites, resume=True)
    # and with AuditConfig.resume, so an organism stopped mid-way keeps its finished lenses
    assert [(c.out, c.resume) for c in calls] == [(str(gone.parent), True)]
    assert _key(again["rows"]) == _key(res["rows"])
    assert again["summary"] == res["summary"]
    after = _logs(out)
    assert set(after) == {*before, f"{SUITE}/no_reference/noop"}
    assert all(after[k] == v for k, v in before.items())  # the read-back logs are untouched


def test_resume_with_a_changed_setting_reaudits_everything(first, calls, tmp_path):
    _, res = first
    suites, out = _copy(first, tmp_path)
    changed = TINY.model_copy(update={"lens_options": {"behavior": {"n_boot": 300}}})
    again = calibrate(out, changed, suites=suites, resume=True)
    assert len(calls) == len(res["rows"]) == len(again["rows"])
    logs = [json.loads((out / SUITE / p / "audit_log.json").read_text())
            for p in ("noop", "reference_b", "no_reference/noop")]
    assert all(lg["lenses"]["behavior"]["config"]["n_boot"] == 300 for lg in logs)


def test_resume_redoes_a_log_whose_checkpoint_changed(first, calls, tmp_path):
    # a rebuilt suite keeps its paths: the log's content hash of the checkpoint catches it
    from safetensors.torch import load_file, save_file

    root, res = first
    suites, out = tmp_path / "suites", tmp_path / "out"
    shutil.copytree(root / "suites", suites)
    shutil.copytree(root / "out", out)
    # the copied logs name the first run's checkpoint paths, so the first resume on the copied
    # suite audits every organism again; then one of noop's weights moves
    calibrate(out, TINY, suites=suites, resume=True)
    assert len(calls) == len(res["rows"])
    calls.clear()
    w = suites / SUITE / "noop" / "model.safetensors"
    t = load_file(w)
    name = next(iter(t))
    t[name] = t[name] + 1e-3
    save_file(t, w, metadata={"format": "pt"})
    calibrate(out, TINY, suites=suites, resume=True)
    assert sorted(c.out for c in calls) == sorted(str(out / SUITE / p) for p in ("noop", "no_reference/noop"))


def test_cli_passes_resume(first, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import audit.lab.calibrate
    from cli import app

    _, res = first
    seen = {}

    def fake(out, preset, **kw):
        seen.update(kw)
        return res

    monkeypatch.setattr(audit.lab.calibrate, "calibrate", fake)
    r = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path), "--resume"])
    assert r.exit_code == 0, r.output
    assert seen["resume"] is True
    r = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen["resume"] is False


def test_cli_renders_reports_written_in_worker_processes(first, monkeypatch, tmp_path):
    # `calibrate --jobs 2` audits in spawned processes: cli.py's renderer travels there (it is
    # picklable), and cli.py renders calibration.html; the library itself imports no reports
    from typer.testing import CliRunner

    import audit.lab.calibrate
    from cli import app

    root, res = first
    monkeypatch.setitem(audit.lab.calibrate.PRESETS, "small", TINY)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["calibrate", "--preset", "small", "--out", str(out), "--suites",
                                 str(root / "suites"), "--jobs", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    logs = sorted(out.rglob("audit_log.json"))
    assert len(logs) == len(res["rows"]) > 1
    for log in logs:
        assert log.with_name("report.html").read_text().startswith("<!DOCTYPE html>"), log
    assert "Confusion matrix" in (out / "calibration.html").read_text()
