"""``audit run`` / ``audit plan`` options and :class:`AuditConfig` hold together (issue 20).

Every option's help text lives once, in its config field's ``description``; the CLI
declares its options explicitly and takes that text. These tests keep the two in step:
every field a user sets has an option with the field's help, every option (but
``--config``) sets a field, and a value given on the command line reaches that field.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from audit.config import CONFIG_FILE_ONLY, AuditConfig
from cli import app

CLI_ONLY = {"config"}
"""Options that are not config fields: the config file itself."""
COMMANDS = ("run", "plan")


def _command(name: str) -> Any:
    """The Click command (typer may vendor its own Click, so it is read, not type-checked)."""
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def _options(name: str) -> dict[str, Any]:
    """The command's options by the config field each names (``--batch-size`` -> ``batch_size``)."""
    out = {}
    for p in _command(name).params:
        assert type(p).__name__.endswith("Option"), p
        flag = max(p.opts, key=len)
        assert flag.startswith("--"), p.opts
        out[flag[2:].replace("-", "_")] = p
    return out


def test_every_field_has_a_description():
    missing = [k for k, f in AuditConfig.model_fields.items() if not (f.description or "").strip()]
    assert not missing, f"AuditConfig fields without a description (their help text): {missing}"


def test_config_file_only_names_fields():
    assert CONFIG_FILE_ONLY <= set(AuditConfig.model_fields)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_user_facing_field_is_an_option_with_its_help(command):
    opts = _options(command)
    fields = set(AuditConfig.model_fields) - CONFIG_FILE_ONLY
    assert fields - set(opts) == set(), "config fields with no option: add one, or list them in CONFIG_FILE_ONLY"
    assert set(opts) - fields - CLI_ONLY == set(), "options that set no config field"
    for name in fields:
        assert opts[name].help == AuditConfig.model_fields[name].description, name


def test_run_and_plan_take_the_same_options():
    run, plan = _command("run"), _command("plan")
    assert [(p.opts, p.help) for p in run.params] == [(p.opts, p.help) for p in plan.params]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_option(command):
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for p in _command(command).params:
        assert max(p.opts, key=len) in res.output
    assert "[default: (32)]" in res.output  # the config's default, shown though the option defaults to None


def test_every_option_reaches_its_config_field(monkeypatch, tmp_path):
    """A value for every option goes into the overrides under the field's own name (the
    config file's values stay below them): caught before anything loads."""
    import audit.config
    from audit.errors import InputError

    got = {}

    def fake_load_config(path, overrides, **kw):
        got.update(overrides, _path=path)
        raise InputError("stop here")

    monkeypatch.setattr(audit.config, "load_config", fake_load_config)
    values = {"base": "b", "unlearned": "u", "reference": "n", "forget": "f.jsonl", "retain": "r.jsonl",
              "format": "qa", "qa_template": "Q: {question}", "mc_mode": "letter", "chat_template": "auto",
              "identical_candidates": "drop", "out": "o", "lenses": "behavior,relearn", "seed": "3",
              "device": "cpu", "dtype": "bfloat16", "batch_size": "7", "max_items": "5", "policy": "p.yaml"}
    flags = ["drop_unknown", "allow_pickle", "trust_remote_code", "resume", "low_memory"]
    assert set(values) | set(flags) == set(AuditConfig.model_fields) - CONFIG_FILE_ONLY
    args = [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", v)]
    args += [f"--{k.replace('_', '-')}" for k in flags] + ["--config", str(tmp_path / "c.yaml")]
    for command in COMMANDS:
        got.clear()
        res = CliRunner().invoke(app, [command, *args])
        assert res.exit_code == 2 and "stop here" in res.output, res.output
        assert got.pop("_path") == tmp_path / "c.yaml"
        cfg = AuditConfig.model_validate(got)  # every key a field, every value of the field's type
        assert cfg.lenses == ["behavior", "relearn"] and cfg.seed == 3 and cfg.batch_size == 7
        assert cfg.format == "qa" and cfg.reference == "n" and cfg.resume and cfg.drop_unknown
        assert set(got) == set(AuditConfig.model_fields) - CONFIG_FILE_ONLY


def test_options_not_given_leave_the_config_file_alone(monkeypatch):
    import audit.config
    from audit.errors import InputError

    got = {}

    def fake_load_config(path, overrides, **kw):
        got.update(overrides)
        raise InputError("stop here")

    monkeypatch.setattr(audit.config, "load_config", fake_load_config)
    res = CliRunner().invoke(app, ["run", "--seed", "1"])
    assert res.exit_code == 2
    assert {k: v for k, v in got.items() if v is not None} == {"seed": 1}
