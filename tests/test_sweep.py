"""``audit sweep`` on Ray: a manifest of organism audits, interrupted, resumed, and the same
``sweep.json`` as a sweep that ran through (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from audit.errors import InputError
from audit.sweep import STOP_AFTER_ENV, load_manifest, sweep
from cli import app

ORGANISMS = ["noop", "head_only", "reference_b", "npo_strong", "rmu_strong", "ga_strong"]
# varies between runs of the same audit: its time, and where its files are
_SESSION_FIELDS = ("seconds", "log", "report")


def _manifest(suite: Path, tmp: Path, broken: bool = True) -> Path:
    audits = [{"name": o, "unlearned": str(suite / o)} for o in ORGANISMS]
    audits[3] |= {"method": "npo", "params": {"strength": "strong"}}
    if broken:  # a checkpoint folder that exists but does not load: that audit fails, the others go on
        bad = tmp / "broken_ckpt"
        bad.mkdir(exist_ok=True)
        (bad / "config.json").write_text("{not json")
        audits.append({"name": "broken", "unlearned": str(bad)})
    m = {"defaults": {"base": str(suite / "base"), "reference": str(suite / "reference_a"),
                      "forget": str(suite / "forget.jsonl"), "retain": str(suite / "retain.jsonl"),
                      "lenses": "behavior"},
         "audits": audits}
    p = tmp / "manifest.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


def _results(res: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _SESSION_FIELDS} for r in res["rows"]]


def test_sweep_resumes_to_the_same_result(suite, tmp_path):
    manifest = _manifest(suite, tmp_path)
    out = tmp_path / "resumed"
    runner = CliRunner()
    args = ["sweep", str(manifest), "--out", str(out), "--num-cpus", "2"]

    # 1. interrupted (as by Ctrl-C) once two audits have finished
    r = runner.invoke(app, args, env={STOP_AFTER_ENV: "2"})
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output and "rerun the same command to resume" in r.output
    assert not (out / "sweep.json").exists()
    first = {p.parent.name: (p.stat().st_mtime_ns, json.loads(p.read_text())["created"])
             for p in out.glob("*/audit_log.json")}
    assert 1 <= len(first) < len(ORGANISMS)

    # 2. resumed: the finished audits are read back, never redone; the broken one fails, the rest run
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output  # one audit failed
    res = json.loads((out / "sweep.json").read_text())
    assert set(first) <= set(res["session"]["reused"])
    for name, (mtime, created) in first.items():
        p = out / name / "audit_log.json"
        assert (p.stat().st_mtime_ns, json.loads(p.read_text())["created"]) == (mtime, created)
    assert all(w and "pid" in w for w in res["session"]["workers"].values())
    # each audit asked Ray for one CPU and the host memory its plan estimates
    assert all(res["session"]["resources"][n]["num_cpus"] == 1 and res["session"]["resources"][n]["memory"] > 0
               for n in res["session"]["ran"])
    assert set(res["session"]["reused"]) | set(res["session"]["ran"]) == {*ORGANISMS, "broken"}
    rows = {row["name"]: row for row in res["rows"]}
    assert [row["name"] for row in res["rows"]] == [*ORGANISMS, "broken"]  # manifest order
    assert rows["broken"]["status"] == "failed" and "no weights" in rows["broken"]["error"]
    assert all(rows[o]["status"] == "done" and (out / o / "report.html").is_file() for o in ORGANISMS)
    assert rows["npo_strong"]["method"] == "npo" and rows["npo_strong"]["params"] == {"strength": "strong"}
    assert rows["rmu_strong"]["method"] == "rmu"  # from the name
    # the organisms' known behaviour: the no-op keeps its knowledge; head_only hides it (behavior alone
    # cannot say DELETED, so a suppressed organism must never read DELETED)
    assert rows["noop"]["label"] == "NOT_UNLEARNED" and rows["noop"]["deletion_score"] < 0.2
    assert rows["head_only"]["label"] != "DELETED"
    html = (out / "sweep.html").read_text()
    assert all(o in html for o in ORGANISMS) and "Recovery per lens" in html

    # 3. the same manifest, uninterrupted: the same rows, up to times and paths
    once = sweep(manifest, tmp_path / "once", num_cpus=2)
    assert once["session"]["reused"] == []
    assert _results(once) == _results(res)


def test_gpu_share_from_the_plan():
    from audit.config import AuditConfig
    from audit.sweep import _request

    cfg = AuditConfig(base="b", unlearned="u", forget="f", retain="r", device="cuda")
    gib = 2**30
    # 10 GiB planned on a GPU of 80: an eighth, rounded up to twentieths
    assert _request(cfg, {"cuda": 10 * gib, "cpu": 3 * gib}, 2, 80 * gib, 64 * gib) == {
        "num_cpus": 2, "memory": 3 * gib, "num_gpus": 0.15}
    assert _request(cfg, {"cuda": 100 * gib}, 1, 80 * gib, None)["num_gpus"] == 1.0  # never more than one
    assert _request(cfg, None, 1, None, None) == {"num_cpus": 1, "num_gpus": 1}  # no estimate: a whole GPU
    # host memory never above the largest machine's (Ray would wait for ever)
    assert _request(cfg.model_copy(update={"device": "cpu"}), {"cpu": 99 * gib}, 1, None, 8 * gib)["memory"] == 8 * gib


def _write(tmp: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("audits: []", "lists no audits"),
    ("defaults: {}\n", "'audits' must be a list"),
    ("audits: [{unlearned: x}]", "'name' must be a folder name"),
    ("audits: [{name: ../up, unlearned: x}]", "'name' must be a folder name"),
    ("runs: []", "unknown key(s) runs"),
    ("audits: [{name: a, out: elsewhere}]", "'out' is set by the sweep"),
])
def test_bad_manifest_is_refused(tmp_path, text, message):
    with pytest.raises(InputError, match=None) as err:
        load_manifest(_write(tmp_path, text), tmp_path / "out")
    assert message in str(err.value)


def test_bad_manifest_exits_2_before_anything_runs(suite, tmp_path):
    base = {"base": str(suite / "base"), "forget": str(suite / "forget.jsonl"),
            "retain": str(suite / "retain.jsonl"), "lenses": "behavior"}
    two = [{"name": "a", "unlearned": str(suite / "noop")}, {"name": "a", "unlearned": str(suite / "ga_strong")}]
    p = _write(tmp_path, yaml.safe_dump({"defaults": base, "audits": two}))
    with pytest.raises(InputError, match="audit 'a': the name is used twice"):
        load_manifest(p, tmp_path / "out")
    lines = [json.dumps({"defaults": base}), json.dumps({"name": "a", "unlearned": str(tmp_path / "missing")})]
    p = _write(tmp_path, "\n".join(lines), "m.jsonl")
    r = CliRunner().invoke(app, ["sweep", str(p), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "audit 'a': checkpoint not found" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()
    # a JSONL manifest that reads: defaults on its first line, then one audit per line
    ok = [json.dumps({"defaults": {**base, "lenses": ["behavior"]}}), json.dumps({"name": "n", "unlearned": str(suite / "noop")})]
    entries = load_manifest(_write(tmp_path, "\n".join(ok), "ok.jsonl"), tmp_path / "out")
    assert [en.name for en in entries] == ["n"] and entries[0].config.lenses == ["behavior"]
    assert entries[0].config.out == str((tmp_path / "out" / "n").resolve()) and entries[0].config.resume
