"""The results file as a contract (issue 20): schema versions and their migration, the
status and error of a run that fails, and the lens version stamped on each result."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from audit.errors import InputError
from audit.schema import SCHEMA_VERSION, AuditLog, migrate, read_log, write_log

# an audit_log.json as version 1 wrote it in its first revision (audit/schema.py at f364aca):
# none of the fields added since (kind, score_null, n_references, end_point on recoveries; the
# item sets' format and notes; policy, policy_result and notes of the log; lens_version)
V1_LOG = {
    "version": 1,
    "created": "2026-11-22T21:20:54+00:00",
    "status": "success",
    "config": {"base": "b", "unlearned": "u", "lenses": ["behavior"], "seed": 0},
    "models": {"base": {"role": "base", "path": "b", "hash": "0123456789abcdef", "architecture": "LlamaForCausalLM",
                        "model_type": "llama", "n_layers": 2, "d_model": 32, "n_params": 1000}},
    "items": {"forget": {"path": "forget.jsonl", "hash": "aa", "n_items": 30}},
    "lenses": {"behavior": {
        "name": "behavior", "config": {"n_boot": 200},
        "recoveries": [{"reading": "ranking", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "score_base": 1.0,
                        "score_unlearned": 0.95, "score_reference": 0.5, "n_items": 30, "informative": True}],
        "data": {}, "notes": [], "error": None, "seconds": 1.5}},
    "verdicts": [{"scope": "forget set", "label": "NOT_UNLEARNED", "reason": "r", "deletion_score": 0.1,
                  "evidence": [{"lens": "behavior", "reading": "ranking", "value": 0.9, "ci_low": 0.8,
                                "ci_high": 1.0}], "n_items": 30}],
    "retain_utility": {}, "timings": {"total": 2.0}, "versions": {"python": "3.11"}, "environment": {},
    "error": None,
}


def _write(tmp_path, d, name="audit_log.json"):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_a_version_1_log_reads_as_the_current_version(tmp_path):
    log = read_log(_write(tmp_path, V1_LOG))
    assert log.version == SCHEMA_VERSION == 2
    assert log.status == "success" and log.error is None
    beh = log.lenses["behavior"]
    assert beh.lens_version == "1"  # every lens was at version 1 before lens versions existed
    rec = beh.recoveries[0]
    assert (rec.value, rec.kind, rec.end_point, rec.n_references, rec.score_null) == (0.9, "primary", "reference",
                                                                                        1, None)
    assert log.items["forget"].format == "jsonl" and log.items["forget"].notes == []
    assert log.notes == [] and log.policy == {} and log.policy_result == {}
    assert log.verdicts[0].label == "NOT_UNLEARNED"
    # written back, it is a current file, and reads back the same
    write_log(log, tmp_path / "copy.json")
    raw = json.loads((tmp_path / "copy.json").read_text())
    assert raw["version"] == SCHEMA_VERSION and raw["lenses"]["behavior"]["lens_version"] == "1"
    assert read_log(tmp_path / "copy.json") == log


def test_a_log_without_a_version_is_version_1(tmp_path):
    d = {k: v for k, v in V1_LOG.items() if k not in ("version", "status")}
    log = read_log(_write(tmp_path, d))
    assert log.version == SCHEMA_VERSION and log.status == "success" and log.lenses["behavior"].lens_version == "1"


def test_migration_keeps_what_a_newer_step_would_overwrite():
    # a v1 file never had lens_version, but a migration must not clobber one that is there
    d = json.loads(json.dumps(V1_LOG))
    d["lenses"]["behavior"]["lens_version"] = "7"
    assert migrate(d)["lenses"]["behavior"]["lens_version"] == "7"
    # the current version goes through unchanged
    cur = AuditLog.model_validate(migrate(json.loads(json.dumps(V1_LOG)))).model_dump(mode="json")
    assert migrate(json.loads(json.dumps(cur))) == cur


@pytest.mark.parametrize(("version", "message"), [
    (0, "version must be a whole number from 1 to 2, got 0"),
    ("2", "version must be a whole number from 1 to 2, got '2'"),
    (True, "version must be a whole number from 1 to 2, got True"),
    (1.5, "version must be a whole number from 1 to 2, got 1.5"),
    (SCHEMA_VERSION + 1, f"written by a newer unlearning-audit (results schema version {SCHEMA_VERSION + 1}; "
                         f"this one reads versions up to {SCHEMA_VERSION})"),
])
def test_a_bad_or_newer_version_is_one_clear_line(tmp_path, version, message):
    p = _write(tmp_path, {**V1_LOG, "version": version})
    with pytest.raises(InputError) as e:
        read_log(p)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_not_an_object_and_deep_nesting_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="is not a valid audit log: it holds a JSON list"):
        read_log(_write(tmp_path, [1], "list.json"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="is not a valid audit log"):
        read_log(deep)


# ---------------------------------------------------------------------------------------
# A run that fails: status and error in the written log; lens versions and --resume
# ---------------------------------------------------------------------------------------


def _config(suite, out, **over):
    from audit.config import load_config

    return load_config(None, {"base": str(suite / "base"), "unlearned": str(suite / "head_only"),
                              "reference": str(suite / "reference_a"), "forget": str(suite / "forget.jsonl"),
                              "retain": str(suite / "retain.jsonl"), "out": str(out), "lenses": ["behavior"],
                              "max_items": 24, **over})


def _counted(monkeypatch, version: str) -> list[int]:
    """Replace the registered behavior lens by one at ``version`` that counts its calls."""
    from audit import registry

    spec = registry.available_lenses()["behavior"]
    real = getattr(spec.fn, "__wrapped_lens__", spec.fn)
    calls: list[int] = []

    def counted(ctx, cfg):
        calls.append(1)
        return real(ctx, cfg)

    counted.__wrapped_lens__ = real  # type: ignore[attr-defined]
    monkeypatch.setitem(registry._REGISTRY, "behavior", dataclasses.replace(spec, fn=counted, version=version))
    return calls


def test_a_failed_run_writes_status_error_and_keeps_finished_lenses(suite, tmp_path, monkeypatch):
    import audit.run
    from audit.run import run
    from audit.sweep import stale_reason as _stale

    out = tmp_path / "o"
    written = []
    calls = _counted(monkeypatch, "1")

    # 1. the verdict fails after the lenses finished: an error the run does not catch per lens
    def broken(*a, **k):
        raise RuntimeError("verdict exploded\n  on two lines")

    with monkeypatch.context() as m:
        m.setattr(audit.run, "decide", broken)
        with pytest.raises(RuntimeError, match="verdict exploded"):
            run(_config(suite, out), on_log_written=written.append)
    log = read_log(out / "audit_log.json")
    assert log.status == "error" and log.error == "RuntimeError: verdict exploded on two lines"
    assert log.verdicts == [] and log.policy_result == {}
    assert set(log.models) == {"base", "unlearned", "reference"} and log.items["forget"].n_items == 24
    beh = log.lenses["behavior"]  # the lens finished before the failure stays
    assert beh.error is None and beh.recoveries and beh.lens_version == "1"
    assert math.isfinite(beh.recoveries[0].value) and "lens:behavior" in log.timings
    assert written == [] and (out / ".partial" / "behavior.json").is_file()  # no report; resumable
    assert calls == [1]
    # a finished-organism check never reuses an error log
    assert _stale(_config(suite, out), log) == "it did not finish"

    # 2. the lens's code version changed: --resume recomputes it, and stamps the new version
    calls = _counted(monkeypatch, "2")
    with monkeypatch.context() as m:
        m.setattr(audit.run, "decide", broken)
        with pytest.raises(RuntimeError):
            run(_config(suite, out, resume=True))
    assert calls == [1] and read_log(out / "audit_log.json").lenses["behavior"].lens_version == "2"

    # 3. the same version again: --resume takes the saved result; the run finishes
    calls = _counted(monkeypatch, "2")
    log = run(_config(suite, out, resume=True), on_log_written=written.append)
    assert calls == []  # resumed, not recomputed
    assert written == [out / "audit_log.json"] and not (out / ".partial").exists()
    done = read_log(out / "audit_log.json")
    assert done.status == "success" and done.error is None and done.verdicts
    assert done.model_dump_json() == log.model_dump_json()
    assert done.lenses["behavior"].lens_version == "2"
    # organisms audit --resume redoes a finished audit whose lens version changed
    assert _stale(_config(suite, out), done) is None
    _counted(monkeypatch, "3")
    assert _stale(_config(suite, out), done) == "lens behavior changed (version 2, now 3)"

    # 4. a later run into the same folder fails: the finished log is kept beside the error log
    earlier = (out / "audit_log.json").read_bytes()
    _counted(monkeypatch, "2")
    with monkeypatch.context() as m:
        m.setattr(audit.run, "decide", broken)
        with pytest.raises(RuntimeError):
            run(_config(suite, out, resume=True))
    assert (out / "audit_log.previous.json").read_bytes() == earlier
    failed = read_log(out / "audit_log.json")
    assert failed.status == "error" and any("audit_log.previous.json" in n for n in failed.notes)


def test_a_failure_escaping_the_lens_loop_is_recorded(suite, tmp_path, monkeypatch):
    from audit import registry
    from audit.resume import PartialStore
    from audit.run import run

    out = tmp_path / "o"
    real = PartialStore.save
    spec = registry.available_lenses()["behavior"]  # a second lens, cheap: behavior under another name
    monkeypatch.setitem(registry._REGISTRY, "leak_at_k", dataclasses.replace(spec, name="leak_at_k"))

    def full_disk(self, lens, key, result):
        if lens == "leak_at_k":
            raise OSError(28, "No space left on device")
        return real(self, lens, key, result)

    monkeypatch.setattr(PartialStore, "save", full_disk)
    with pytest.raises(OSError):
        run(_config(suite, out, lenses=["behavior", "leak_at_k"]))
    log = read_log(out / "audit_log.json")
    assert log.status == "error" and log.error == "OSError: [Errno 28] No space left on device"
    assert list(log.lenses) == ["behavior"]  # leak_at_k's result was never kept


def test_bad_input_and_interrupts_write_no_log(suite, tmp_path, monkeypatch):
    from audit import registry
    from audit.run import run

    out = tmp_path / "o"
    out.mkdir()
    (out / "audit_log.json").write_text("earlier")
    spec = registry.available_lenses()["behavior"]

    def interrupted(ctx, cfg):
        raise KeyboardInterrupt

    def bad(ctx, cfg):
        raise InputError("bad item")

    for fn, exc in ((interrupted, KeyboardInterrupt), (bad, InputError)):
        monkeypatch.setitem(registry._REGISTRY, "leak_at_k", dataclasses.replace(spec, name="leak_at_k", fn=fn))
        with pytest.raises(exc):
            run(_config(suite, out, lenses=["behavior", "leak_at_k"]))
        assert (out / "audit_log.json").read_text() == "earlier"
        assert (out / ".partial" / "behavior.json").is_file()  # what finished is kept for --resume
