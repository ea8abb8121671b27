"""Config and policy files go through one reader and one validation message: the same bad
file gives the same kind of one-line error, naming the file, for both (exit 2 in the CLI)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from audit.config import load_config
from audit.errors import InputError
from audit.policy import load_policy
from cli import app

runner = CliRunner()

# the options a config file needs besides the bad one (paths are not checked with check=False)
REQUIRED = "base: b\nunlearned: u\nforget: f.jsonl\nretain: r.jsonl\n"

# case -> (config file bytes, policy file bytes, what the message says besides the file name)
BAD_FILES = {
    "not UTF-8": (b"seed: 1\nout: \xff\xfe\n", b"min_items: \xc3\x28\n", "is not UTF-8 text"),
    "bad YAML": (b"lenses: [behavior\n", b"fail_on: [NOT_UNLEARNED\n", "is not valid YAML"),
    "list, not a mapping": (b"- seed\n- 3\n", b"- min_items\n- 3\n", "must hold a mapping"),
    "unknown field": ((REQUIRED + "sede: 3\n").encode(), b"min_itms: 3\n", "'{key}': Extra inputs are not permitted"),
    "wrong type": ((REQUIRED + "seed: lots\n").encode(), b"min_items: lots\n", "'{key}': Input should be a valid integer"),
    "nested field of the wrong type": ((REQUIRED + "lens_options: {behavior: 3}\n").encode(),
                                       b"thresholds: {tau_s: high}\n", "'{key}': Input should be a valid"),
}
KEYS = {"unknown field": ("sede", "min_itms"), "wrong type": ("seed", "min_items"),
        "nested field of the wrong type": ("lens_options.behavior", "thresholds.tau_s")}
LABELS = {"config": "config option", "policy": "key"}


def _expected(case: str, kind: str) -> str:
    fragment = BAD_FILES[case][2]
    if case in KEYS:
        key = KEYS[case][kind == "policy"]
        fragment = LABELS[kind] + " " + fragment.format(key=key)
    return fragment


def _load(kind: str, path) -> None:
    if kind == "config":
        load_config(path, {}, check=False)
    else:
        load_policy(path)


@pytest.mark.parametrize("kind", ["config", "policy"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_one_input_error_naming_the_file(tmp_path, case, kind):
    p = tmp_path / f"{kind}.yaml"
    p.write_bytes(BAD_FILES[case][kind == "policy"])
    with pytest.raises(InputError) as err:
        _load(kind, p)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{kind} file {p}"), msg
    assert _expected(case, kind) in msg, msg


@pytest.mark.parametrize("kind", ["config", "policy"])
def test_missing_file_names_it(tmp_path, kind):
    with pytest.raises(InputError, match=f"{kind} file not found: .*nowhere.yaml"):
        _load(kind, tmp_path / "nowhere.yaml")


def test_empty_files_are_empty_mappings(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("")
    assert load_policy(p).min_items == 20
    c = tmp_path / "c.yaml"
    c.write_text(REQUIRED)
    assert load_config(c, {}, check=False).seed == 0


def test_a_bad_cli_value_does_not_blame_the_file(tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text(REQUIRED + "seed: 3\n")
    with pytest.raises(InputError) as err:
        load_config(c, {"batch_size": 0}, check=False)
    assert str(err.value).startswith("config option 'batch_size':"), err.value
    # a CLI value wins over the file's: the error is the CLI's
    with pytest.raises(InputError) as err:
        load_config(c, {"seed": "x"}, check=False)
    assert str(err.value).startswith("config option 'seed':"), err.value


@pytest.mark.parametrize("kind", ["config", "policy"])
@pytest.mark.parametrize("case", ["not UTF-8", "bad YAML", "list, not a mapping", "unknown field", "wrong type"])
def test_cli_exits_2_naming_the_file(tmp_path, case, kind):
    bad = tmp_path / f"bad_{kind}.yaml"
    bad.write_bytes(BAD_FILES[case][kind == "policy"])
    if kind == "config":
        args = ["run", "--config", str(bad)]
    else:  # a config that passes the checks made before the policy is read
        (tmp_path / "ck").mkdir()
        (tmp_path / "f.jsonl").write_text("forget\n")
        (tmp_path / "r.jsonl").write_text("retain set\n")
        good = tmp_path / "c.yaml"
        good.write_text(f"base: {tmp_path / 'ck'}\nunlearned: {tmp_path / 'ck'}\nforget: {tmp_path / 'f.jsonl'}\n"
                        f"retain: {tmp_path / 'r.jsonl'}\nout: {tmp_path / 'out'}\n")
        args = ["run", "--config", str(good), "--policy", str(bad)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert f"error: {kind} file {bad}" in res.output and _expected(case, kind) in res.output, res.output
