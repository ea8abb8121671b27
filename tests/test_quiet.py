"""A quiet terminal (issue #23): library warnings during a run go to the log's notes once
each, with their count, not to the terminal; user text in the CLI's tables and in
progress bars is never markup.

The warnings are printed to stderr by a ``showwarning`` the test installs (pytest would
otherwise capture them itself), so a run that let them through fails the test.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import sys
import warnings

import pytest
from typer.testing import CliRunner

from audit.quiet import MAX_DISTINCT, AuditWarning, quiet_warnings
from cli import app

runner = CliRunner()
FUTURE = "`past_key_values` is deprecated [/x] and will be removed"
LOGGED = "You are not using LayerNorm folding [bold]; results may differ"
MINE = "a warning audit means for its user"


def _to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class _Seen(logging.Handler):
    """What a user would see from a library logger."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def test_run_records_library_warnings_once_in_the_notes(suite, tmp_path, monkeypatch, capfd):
    from audit import registry
    from audit.config import load_config
    from audit.run import run

    spec = registry.available_lenses()["behavior"]

    def noisy(ctx, cfg):
        for _ in range(3):
            warnings.warn(FUTURE, FutureWarning, stacklevel=1)
        for _ in range(2):
            logging.getLogger("transformer_lens.model_bridge.bridge").warning(LOGGED)
            warnings.warn(MINE, AuditWarning, stacklevel=1)
        return spec.fn(ctx, cfg)

    monkeypatch.setitem(registry._REGISTRY, "behavior", dataclasses.replace(spec, fn=noisy))
    cfg = load_config(None, {"base": str(suite / "base"), "unlearned": str(suite / "head_only"),
                             "reference": str(suite / "reference_a"), "forget": str(suite / "forget.jsonl"),
                             "retain": str(suite / "retain.jsonl"), "out": str(tmp_path / "o"),
                             "lenses": ["behavior"], "max_items": 24})
    seen = _Seen()
    tf = logging.getLogger("transformer_lens")
    tf.addHandler(seen)
    filters = list(warnings.filters)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # without the run's catcher every occurrence would print
            warnings.showwarning = _to_stderr
            log = run(cfg)
            assert warnings.showwarning is _to_stderr and seen in tf.handlers  # put back after the run
    finally:
        tf.removeHandler(seen)
    assert warnings.filters == filters
    err = capfd.readouterr().err

    future = [n for n in log.notes if FUTURE in n]
    assert future == [n for n in future if "(3×" in n and "FutureWarning" in n] and len(future) == 1, log.notes
    logged = [n for n in log.notes if LOGGED in n]
    assert len(logged) == 1 and "(2×" in logged[0] and "transformer_lens.model_bridge.bridge warning" in logged[0], log.notes
    assert FUTURE not in err and LOGGED not in err, err
    assert seen.records == []  # the library logger's own handlers were off during the run
    # audit's own warnings still reach the user, once
    assert err.count(MINE) == 1, err
    assert any(MINE in n and "(2×" in n for n in log.notes)
    # the notes are in the results file
    from audit.schema import read_log

    assert read_log(tmp_path / "o" / "audit_log.json").notes == log.notes


def test_quiet_warnings_restores_everything_and_forwards_errors(capfd):
    lg = logging.getLogger("sae_lens")
    seen = _Seen()
    lg.addHandler(seen)
    lg.setLevel(logging.ERROR)  # as the CLI sets it: warnings are still counted
    before = (list(lg.handlers), lg.propagate, lg.level, list(warnings.filters), warnings.showwarning)
    try:
        with quiet_warnings() as caught:
            lg.warning("quiet %s", "please")
            lg.error("this one is for the user")
            for i in range(MAX_DISTINCT + 5):
                warnings.warn(f"counter {i}", UserWarning, stacklevel=1)
            with pytest.raises(UserWarning):
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    warnings.warn("raised", UserWarning, stacklevel=1)
        assert (list(lg.handlers), lg.propagate, lg.level, list(warnings.filters), warnings.showwarning) == before
    finally:
        lg.removeHandler(seen)
        lg.setLevel(logging.NOTSET)
    assert seen.records == ["this one is for the user"]
    notes = caught.notes()
    assert notes[0].startswith("warning (1×") and notes[0].endswith("sae_lens warning: quiet please")
    assert len(notes) == MAX_DISTINCT + 1 and "6 more" in notes[-1], notes[-1]
    assert len(caught) == MAX_DISTINCT + 6
    assert "counter" not in capfd.readouterr().err


def test_organisms_audit_prints_reasons_as_text(monkeypatch, tmp_path):
    import audit.lab.suite

    rows = [{"organism": "odd[/x]", "truth": "[bold]DELETED", "verdict": "SUPPRESSED", "deletion_score": 0.25,
             "reason": "probe [/x] and [bold]steering[/bold] recover"}]
    monkeypatch.setattr(audit.lab.suite, "audit_suite", lambda *a, **k: rows)
    res = runner.invoke(app, ["organisms", "audit", str(tmp_path / "s[/y]"), "--out", str(tmp_path / "o[/z]")])
    assert res.exit_code == 0, (res.output, res.exception)
    out = " ".join(res.output.split())
    for text in ("odd[/x]", "[bold]DELETED", "SUPPRESSED", "probe [/x] and [bold]steering[/bold] recover",
                 "s[/y]", "o[/z]/<organism>/report.html"):
        assert text in out, (text, res.output)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so progress draws rich bars into it."""

    def isatty(self) -> bool:
        return True


def test_progress_prints_its_description_as_text(monkeypatch):
    from audit.progress import progress, set_progress

    for var in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    set_progress(True)
    desc = "capture /models/[/x]/ckpt [bold]b[/bold] {task}"
    with progress(desc, total=3) as bar:  # used to raise MarkupError (and drop the [bold])
        bar.advance(3)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue())
    assert f"{desc} " in plain  # the bar, drawn on stderr
    assert f"{desc}: 3/3 in " in plain  # the line it leaves
