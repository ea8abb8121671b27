"""A lens that raises becomes that lens's error: the run completes and the verdict names it."""

from __future__ import annotations

import dataclasses
import json

from typer.testing import CliRunner


def test_a_raising_lens_is_recorded_and_the_run_completes(suite, run_args, monkeypatch, tmp_path):
    from audit import registry
    from cli import app

    registry.available_lenses()
    spec = registry._REGISTRY["behavior"]

    def broken(ctx, cfg):
        raise ValueError("This solver needs samples of at least 2 classes in the data")  # as scikit-learn says

    monkeypatch.setitem(registry._REGISTRY, "broken", dataclasses.replace(spec, name="broken", fn=broken))
    out = tmp_path / "o"
    res = CliRunner().invoke(app, run_args(suite, out, unlearned="reference_b", lenses="behavior,broken"))
    assert "Traceback" not in res.output
    assert res.exit_code == 1, res.output  # the run completed; the default policy fails anything but DELETED
    log = json.loads((out / "audit_log.json").read_text())
    assert log["lenses"]["broken"]["error"].startswith("ValueError inside the lens: This solver needs")
    assert log["lenses"]["behavior"]["error"] is None
    v = log["verdicts"][0]
    assert v["label"] != "DELETED" and "broken (ValueError" in v["reason"], v["reason"]


def test_several_references_enter_the_recovery_and_the_report(suite, run_args, tmp_path):
    """Two never-trained references: both are loaded, every recovery says so, and their
    spread widens the CI against either one alone (the references are resampled too)."""
    from cli import app

    runner = CliRunner()
    args = run_args(suite, tmp_path / "two", unlearned="reference_b", lenses="behavior,logit_lens")
    args += ["--reference", str(suite / "noop")]  # a second "reference" that knows: maximal spread
    res = runner.invoke(app, args)
    assert res.exit_code in (0, 1) and "Traceback" not in res.output, res.output
    log = json.loads((tmp_path / "two" / "audit_log.json").read_text())
    assert set(log["models"]) == {"base", "unlearned", "reference", "reference_2"}
    one = runner.invoke(app, run_args(suite, tmp_path / "one", unlearned="reference_b", lenses="behavior,logit_lens"))
    assert one.exit_code in (0, 1), one.output
    log1 = json.loads((tmp_path / "one" / "audit_log.json").read_text())
    for lens in ("behavior", "logit_lens"):
        r2, r1 = log["lenses"][lens]["recoveries"][0], log1["lenses"][lens]["recoveries"][0]
        assert r2["n_references"] == 2 and r1["n_references"] == 1
        # the end point is the references' mean, and their disagreement widens the CI
        assert r2["score_reference"] > r1["score_reference"]
        assert r2["ci_high"] - r2["ci_low"] > 2 * (r1["ci_high"] - r1["ci_low"]), (lens, r1, r2)
    assert (tmp_path / "two" / "report.html").read_text().count("Plotly.newPlot") > 0
