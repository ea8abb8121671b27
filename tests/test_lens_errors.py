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
