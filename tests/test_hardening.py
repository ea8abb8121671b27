"""Hostile input through the real CLI (issue #23): every bad input is exit 2 and one clean
line, no input exhausts memory, no command destroys earlier results.

``BAD_RUN`` and ``BAD_REPORT`` are the tables of bad inputs: each row runs ``audit`` in
process (typer's CliRunner) over an output folder that already holds an earlier run's
``audit_log.json`` and ``report.html``, and asserts exit 2, one line of output, no
traceback, a message naming the problem, and both files byte-identical afterwards. The
memory rows run the CLI in a subprocess under ``RLIMIT_AS`` and bound its peak RSS. The
fuzz properties drive option values and config/policy documents through the CLI.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from audit.errors import InputError
from audit.schema import SCHEMA_VERSION
from cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
MAX_ITEMS = 24
# three distractors outside the organisms' word-level vocabulary: all three are its unknown token
OOV = ["zzqxv", "qqzyv", "xxwvq"]
PRESERVED = ("audit_log.json", "report.html")


@pytest.fixture(scope="module")
def earlier(suite, run_args, tmp_path_factory) -> Path:
    """An output folder holding a finished run's audit_log.json and report.html."""
    out = tmp_path_factory.mktemp("earlier") / "o"
    res = runner.invoke(app, run_args(suite, out, unlearned="noop", max_items=MAX_ITEMS))
    assert res.exit_code == 1, res.output  # noop is NOT_UNLEARNED: the default policy fails it
    assert all((out / f).is_file() for f in PRESERVED)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in PRESERVED}


def _assert_one_clean_line(res, message: str | None = None) -> None:
    out = res.output
    assert res.exit_code == 2, (res.exit_code, out, res.exception)
    assert "Traceback" not in out and not (res.exception and not isinstance(res.exception, SystemExit)), out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    if message is not None:
        assert message in lines[0], lines[0]


# ---------------------------------------------------------------------------------------
# The table: one row per class of bad input. A row returns the CLI overrides (option ->
# value; None removes the option) and writes what it needs under ``d``.
# ---------------------------------------------------------------------------------------


def _write(d: Path, name: str, data: str | bytes) -> Path:
    p = d / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


def _policy(text: str):
    return lambda s, d: {"policy": _write(d, "policy.yaml", text)}


def _config(data: str | bytes):
    return lambda s, d: {"config": _write(d, "config.yaml", data)}


def _items_with(s: Path, d: Path, line_no: int, **fields) -> Path:
    lines = (s / "forget.jsonl").read_text().splitlines()
    it = json.loads(lines[line_no])
    it.update(fields)
    lines[line_no] = json.dumps(it)
    return _write(d, "f.jsonl", "\n".join(lines) + "\n")


def _anchor_bomb(levels: int = 9, fan: int = 3) -> str:
    # 27 aliases (under the alias limit) that expand to 3**10 lists: the node budget refuses it
    doc = "lens_options:\n  behavior:\n    l0: &l0 [" + ", ".join(["lol"] * fan) + "]\n"
    for i in range(1, levels + 1):
        doc += f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]\n"
    return doc


def _out_inside_checkpoint(s, d):
    ck = shutil.copytree(s / "base", d / "ck")
    return {"base": ck, "out": ck / "audit_out"}


def _out_results_is_folder(s, d):
    (d / "o2" / "audit_log.json").mkdir(parents=True)
    return {"out": d / "o2"}


def _gguf_garbage(s, d):
    return {"unlearned": _write(d, "model.gguf", b"GGUF" + b"\xde\xad" * 100)}


def _gguf_plausible_header(s, d):
    # a header that passes the magic/version/count check, then garbage
    head = b"GGUF" + (3).to_bytes(4, "little") + (2).to_bytes(8, "little") + (3).to_bytes(8, "little")
    return {"unlearned": _write(d, "model.gguf", head + b"\x07\x00" * 100)}


BAD_RUN = {
    # options out of range
    "seed -1": (lambda s, d: {"seed": -1}, "'seed': must be between 0 and 4294967295"),
    "seed beyond 2**32": (lambda s, d: {"seed": "99999999999999999999999"}, "'seed': must be between"),
    "seed not a number": (lambda s, d: {"seed": "x[/x]"}, "Invalid value for '--seed'"),
    "unknown option": (lambda s, d: {"sed": 3}, "No such option: --sed"),
    "batch size 0": (lambda s, d: {"batch_size": 0}, "config option 'batch_size'"),
    "unknown dtype": (lambda s, d: {"dtype": "int3"}, "unknown dtype 'int3'"),
    "device meta": (lambda s, d: {"device": "meta"}, "device 'meta' holds no data"),
    "device nonsense": (lambda s, d: {"device": "gpu[/x]"}, "unknown device 'gpu[/x]'"),
    "no lens named": (lambda s, d: {"lenses": " , "}, "no lens to run"),
    "unknown lens": (lambda s, d: {"lenses": "behavior,behaviour"}, "Did you mean 'behavior'"),
    # lens options
    "n_boot -5": (_config("lens_options: {behavior: {n_boot: -5}}\n"), "option 'n_boot': must be at least 1"),
    "n_boot huge": (_config("lens_options: {behavior: {n_boot: 10000000000}}\n"), "option 'n_boot': at most"),
    "lens option NaN": (lambda s, d: {**_config("lenses: [linear_probe]\nlens_options: {linear_probe: {C: .nan}}\n")(
        s, d), "lenses": None}, "must be a finite number"),
    "unknown lens option": (_config("lens_options: {behavior: {n_bot: 5}}\n"), "option 'n_bot'"),
    # config files
    "config invalid UTF-8": (_config(b"seed: 1\nout: \xff\xfe\n"), "is not UTF-8 text"),
    "config nested 5000 deep": (_config("lens_options: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"),
                                "nest"),
    "config nested 200 deep (block)": (_config("".join("  " * i + f"k{i}:\n" for i in range(200))),
                                       "nested too deeply"),
    "config anchor bomb": (_config(_anchor_bomb()), "aliases expand to more than"),
    "config with many aliases": (_config(_anchor_bomb(4, 9)), "more than 32 aliases"),
    "config self-referencing alias": (_config("lens_options: &x {behavior: *x}\n"), "a loop"),
    "config python tag": (_config("seed: !!python/object/apply:os.system [echo PWNED]\n"),
                          "could not determine a constructor"),
    "config YAML error with brackets": (_config("lenses: [behavior\n"), "not valid YAML"),
    "config too large": (_config("seed: 1\n" + "#" * 300_000 + "\n"), "larger than 256 KiB"),
    "config not a mapping": (_config("- seed\n"), "must hold a mapping"),
    # policies
    "policy tau_d -1": (_policy("thresholds: {tau_d: -1}\n"), "tau_d must be between 0 and 1"),
    "policy tau_d >= tau_s": (_policy("thresholds: {tau_d: 0.4, tau_s: 0.3}\n"), "must be below thresholds.tau_s"),
    "policy behavior_recovery 42": (_policy("thresholds: {behavior_recovery: 42}\n"), "behavior_recovery must be in (0, 1]"),
    "policy behavior_recovery 0": (_policy("thresholds: {behavior_recovery: 0}\n"), "behavior_recovery must be in (0, 1]"),
    "policy min_items -4": (_policy("min_items: -4\n"), "min_items must be at least 1"),
    "policy required lens typo": (_policy("required_lenses: [linear_prob]\n"), "unknown lens 'linear_prob'"),
    "policy required_for_deleted typo": (_policy("thresholds: {required_for_deleted: [relarn]}\n"),
                                         "unknown lens 'relarn'"),
    "policy side effect tolerance 2": (_policy("side_effect_tolerance: 2\n"), "side_effect_tolerance must be"),
    "policy anchor bomb": (_policy(_anchor_bomb().replace("lens_options:\n  behavior:", "required_lenses:\n  x:")),
                           "aliases expand to more than"),
    "policy invalid UTF-8": (_policy(b"min_items: \xc3\x28\n"), "is not UTF-8 text"),
    # output location
    "out is a file": (lambda s, d: {"out": _write(d, "file", "x")}, "is a file; it must be a folder"),
    "out's audit_log.json is a folder": (_out_results_is_folder, "audit_log.json is a folder"),
    "out not writable": (lambda s, d: {"out": "/proc/audit_out"}, "is not writable"),
    "out inside a checkpoint": (_out_inside_checkpoint, "is inside the base checkpoint"),
    # item sets
    "forget is retain": (lambda s, d: {"retain": s / "forget.jsonl"}, "are the same item set"),
    "forget equals retain (copy)": (lambda s, d: {"retain": shutil.copy(s / "forget.jsonl", d / "copy.jsonl")},
                                    "are the same item set"),
    "forget equals retain (reordered)": (lambda s, d: {"retain": _write(d, "reordered.jsonl", "\n".join(
        reversed((s / "forget.jsonl").read_text().splitlines())) + "\n")}, "read the same items"),
    "10 MB prompt line": (lambda s, d: {"forget": _items_with(s, d, 3, prompt="word " * 2_000_000)},
                          "f.jsonl:4: line longer than 1 MiB"),
    "item file not UTF-8": (lambda s, d: {"forget": _write(d, "f.jsonl", b'{"id": "\xff"}\n')}, "not UTF-8 text"),
    "item with markup in its id": (lambda s, d: {"forget": _items_with(s, d, 2, id="[bold]x[/]", distractors=["[/x]"])},
                                   "item '[bold]x[/]' has 1 distractors"),
    "prompt beyond the context window": (lambda s, d: {"forget": _items_with(s, d, 3, prompt="Mara lives in " * 30)},
                                         "reads at most 64"),
    "candidates tokenize identically": (lambda s, d: {"forget": _items_with(s, d, 2, distractors=OOV)},
                                        "tokenize identically"),
    "identical_candidates not a mode": (lambda s, d: {"identical_candidates": "[b]keep"},
                                        "'identical_candidates'"),
    # checkpoints
    "missing checkpoint with markup": (lambda s, d: {"base": d / "no[/x]where"}, "no[/x]where"),
    "GGUF magic then garbage": (_gguf_garbage, "is not a readable GGUF file"),
    "GGUF header then garbage": (_gguf_plausible_header, "cannot read"),
}
if not torch.cuda.is_available():
    BAD_RUN["device cuda without CUDA"] = (lambda s, d: {"device": "cuda"}, "CUDA is not available")


def test_identical_candidates_can_be_dropped_with_a_note(suite, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(app, _args(suite, out, {"forget": _items_with(suite, tmp_path, 2, distractors=OOV),
                                                "identical_candidates": "drop"}))
    assert res.exit_code in (0, 1), res.output
    log = json.loads((out / "audit_log.json").read_text())
    forget = log["items"]["forget"]
    assert forget["n_items"] == MAX_ITEMS - 1
    assert any("tokenize identically" in n for n in forget["notes"]), forget["notes"]


def _args(suite: Path, out: Path, overrides: dict) -> list[str]:
    opts = {"base": suite / "base", "unlearned": suite / "head_only", "reference": suite / "reference_a",
            "forget": suite / "forget.jsonl", "retain": suite / "retain.jsonl", "out": out,
            "lenses": "behavior", "max_items": MAX_ITEMS, **overrides}
    args = ["run"]
    for k, v in opts.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.mark.parametrize("case", list(BAD_RUN))
def test_bad_run_input_is_one_line_and_exit_2(case, suite, earlier, tmp_path):
    make, message = BAD_RUN[case]
    out = tmp_path / "o"
    shutil.copytree(earlier, out)
    before = _snapshot(out)
    res = runner.invoke(app, _args(suite, out, {"out": out, **make(suite, tmp_path)}))
    _assert_one_clean_line(res, message)
    assert _snapshot(out) == before
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def _other_file(log, d):
    return ["--out", str(_write(d, "other.json", '{"not": "a report"}')), str(log)]


def _symlink_to_log(log, d):
    (d / "link.json").symlink_to(log)
    return ["--out", str(d / "link.json"), str(log)]


BAD_REPORT = {
    "--out is the results file": (lambda log, d: ["--out", str(log), str(log)], "is the results file itself"),
    "--out is a link to the results file": (_symlink_to_log, "is the results file itself"),
    "--out is a folder": (lambda log, d: ["--out", str(log.parent), str(log)], "is a folder"),
    "--out is another file": (_other_file, "is not an HTML report"),
    "results file missing": (lambda log, d: ["--out", str(d / "r.html"), str(d / "nope[/x].json")],
                             "results file not found"),
    "results file is a folder": (lambda log, d: [str(d)], "results file not found"),
    "results file is not a log": (lambda log, d: ["--out", str(d / "r.html"), str(_write(d, "n.json", "[1]"))],
                                  "is not a valid audit log"),
    "results file not UTF-8": (lambda log, d: ["--out", str(d / "r.html"), str(_write(d, "b.json", b'{"v": \xff}'))],
                               "is not a valid audit log"),
    "results file from a newer version": (lambda log, d: ["--out", str(d / "r.html"), str(_write(
        d, "new.json", log.read_text().replace(f'"version": {SCHEMA_VERSION}', '"version": 99', 1)))],
        f"written by a newer unlearning-audit (results schema version 99; this one reads versions up to "
        f"{SCHEMA_VERSION})"),
}


@pytest.mark.parametrize("case", list(BAD_REPORT))
def test_bad_report_input_is_one_line_and_exit_2(case, earlier, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(earlier, out)
    before = _snapshot(out)
    make, message = BAD_REPORT[case]
    args = make(out / "audit_log.json", tmp_path)
    others = {f: f.read_bytes() for f in tmp_path.glob("*.json") if f.is_file()}
    res = runner.invoke(app, ["report", *args])
    _assert_one_clean_line(res, message)
    assert _snapshot(out) == before
    assert {f: f.read_bytes() for f in others} == others
    assert not (tmp_path / "r.html").exists()


def test_report_still_rerenders_over_its_own_report(earlier, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(earlier, out)
    res = runner.invoke(app, ["report", str(out / "audit_log.json")])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").read_bytes().startswith(b"<!DOCTYPE html>")
    res = runner.invoke(app, ["report", str(out / "audit_log.json"), "--out", str(tmp_path / "new" / "r.html")])
    assert res.exit_code == 0 and (tmp_path / "new" / "r.html").is_file()


def test_items_check_refuses_to_overwrite_its_input(suite, tmp_path):
    f = Path(shutil.copy(suite / "forget.jsonl", tmp_path / "f.jsonl"))
    before = f.read_bytes()
    _assert_one_clean_line(runner.invoke(app, ["items", "check", str(f), "--out", str(f)]), "would be overwritten")
    _assert_one_clean_line(runner.invoke(app, ["items", "check", str(f), "--seed", "-1"]), "--seed must be")
    assert f.read_bytes() == before


# ---------------------------------------------------------------------------------------
# Library pieces behind the table
# ---------------------------------------------------------------------------------------


def test_checkpoint_hash_reads_only_weights_config_and_tokenizer(suite, tmp_path):
    from audit.models import content_hash, hashed_files

    ck = shutil.copytree(suite / "base", tmp_path / "ck")
    h = content_hash(ck)
    assert {f.name for f in hashed_files(ck)} >= {"config.json", "model.safetensors", "tokenizer.json"}
    # what else lands in the folder leaves the identity alone
    (ck / "audit_out").mkdir()
    (ck / "audit_out" / "audit_log.json").write_text("{}")
    (ck / "notes.json").write_text("{}")
    (ck / "README.md").write_text("hello")
    (ck / "trainer_state.txt").write_text("step 5")
    assert content_hash(ck) == h
    # what the checkpoint is changes it
    cfg = json.loads((ck / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (ck / "config.json").write_text(json.dumps(cfg))
    assert content_hash(ck) != h


def test_prompt_beyond_the_context_window_names_the_item(base_model):
    from audit.items import KnowledgeItem
    from audit.models import check_context_window, context_length

    limit = context_length(base_model)
    assert limit == base_model.hf.config.max_position_embeddings
    ok = KnowledgeItem(id="ok", prompt="a b c", answer="x", distractors=["y", "z", "w"])
    long = KnowledgeItem(id="long[/x]", prompt="a " * (limit + 5), answer="x", distractors=["y", "z", "w"])
    check_context_window(base_model, {"forget": [ok], "retain": [ok]})
    with pytest.raises(InputError, match=r"forget item 'long\[/x\]'.*reads at most"):
        check_context_window(base_model, {"forget": [ok, long], "retain": [ok]})


@pytest.mark.parametrize(("device", "message"), [("meta", "holds no data"), ("nonsense", "unknown device"),
                                                 ("cuda:99", "cuda")])
def test_check_device(device, message):
    from audit.models import check_device

    assert check_device("cpu") == "cpu"
    with pytest.raises(InputError, match=message):
        check_device(device)


def test_yaml_limits_allow_ordinary_anchors_and_merge_keys(tmp_path):
    from audit.config import read_yaml

    p = _write(tmp_path, "c.yaml", "common: &c {n_boot: 200}\nlens_options:\n  behavior: *c\n"
                                   "  leak_at_k: {<<: *c, n: 8}\n")
    assert read_yaml(p, "config file")["lens_options"] == {"behavior": {"n_boot": 200},
                                                           "leak_at_k": {"n_boot": 200, "n": 8}}


# ---------------------------------------------------------------------------------------
# Memory: the hostile inputs that used to exhaust memory, in a subprocess whose address
# space is capped (a regression fails the test instead of taking the machine down)
# ---------------------------------------------------------------------------------------

AS_LIMIT = 3 << 30
"""Address-space cap of the child (torch, transformers and the lenses import in ~2 GiB)."""
RSS_BOUND = 1 << 30
"""Peak RSS the child may reach before it refuses the input."""


def _capped_cli(args: list[str], cwd: Path) -> tuple[int, str, int]:
    """Run ``audit`` in a child under RLIMIT_AS; returns (exit code, stderr, peak RSS bytes)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    err = cwd / "stderr.txt"
    with open(err, "wb") as fe, open(os.devnull, "wb") as fo:
        p = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=ROOT,
                             stdout=fo, stderr=fe, preexec_fn=cap, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            raise
    p.returncode = os.waitstatus_to_exitcode(status)  # already reaped
    return p.returncode, err.read_text(errors="replace"), usage.ru_maxrss * 1024


MEMORY_CASES = {
    "10 MB prompt line": (lambda s, d: {"forget": _items_with(s, d, 3, prompt="word " * 2_000_000)},
                          "line longer than 1 MiB"),
    "50 MB file of one line": (lambda s, d: {"forget": _write(d, "f.jsonl", b"[" * (50 << 20))},
                               "line longer than 1 MiB"),
    "anchor bomb in lens_options": (_config(_anchor_bomb()), "aliases expand to more than"),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_memory_stays_bounded_on_hostile_input(case, suite, earlier, tmp_path):
    make, message = MEMORY_CASES[case]
    out = tmp_path / "o"
    shutil.copytree(earlier, out)
    before = _snapshot(out)
    t = time.perf_counter()
    rc, err, peak = _capped_cli(_args(suite, out, {"out": out, **make(suite, tmp_path)}), tmp_path)
    # -s prints what docs/reliability.md reports
    print(f"memory row {case!r}: exit {rc}, peak RSS {peak / 2**20:.0f} MiB, {time.perf_counter() - t:.1f} s")
    assert rc == 2, err[-2000:]
    assert message in err and "Traceback" not in err, err[-2000:]
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
    assert _snapshot(out) == before


# ---------------------------------------------------------------------------------------
# Fuzz: option values and config / policy documents through the CLI. Any run the door
# lets through stops at the library call (``audit.run.run`` is replaced by a stub that
# checks the config it receives is within range and returns the earlier log), so every
# example takes milliseconds; the table above covers the full path.
# ---------------------------------------------------------------------------------------

FUZZ_EXAMPLES = 200  # x 3 properties = 600 examples
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def fuzz_env(suite, earlier, tmp_path_factory):
    """(suite, an output folder with earlier results, a scratch folder, the stubbed run)."""
    from audit.config import SEED_MAX
    from audit.models import DTYPES
    from audit.schema import read_log

    log = read_log(earlier / "audit_log.json")
    out = tmp_path_factory.mktemp("fuzz") / "o"
    shutil.copytree(earlier, out)
    reached: list[object] = []

    def stub_run(cfg, **_):
        # what the door let through must be usable
        assert 0 <= cfg.seed <= SEED_MAX and cfg.batch_size >= 1 and cfg.dtype in DTYPES
        assert torch.device(cfg.device).type == "cpu" or torch.cuda.is_available()
        reached.append(cfg)
        return log

    return suite, out, tmp_path_factory.mktemp("scratch"), stub_run, reached


OUTCOMES: dict[str, Counter] = {}
"""Exit codes seen by each fuzz property (and the first words of the refusals), for the
last test, which checks both outcomes occurred, and for docs/reliability.md's counts."""


def _invoke_checked(args: list[str], out: Path, monkeypatch, stub, prop: str) -> None:
    import audit.run

    before = _snapshot(out)
    with monkeypatch.context() as m:
        m.setattr(audit.run, "run", stub)
        res = runner.invoke(app, args)
    OUTCOMES.setdefault(prop, Counter())[res.exit_code] += 1
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, res.output, res.exception)
    if res.exit_code == 2:
        assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error: "), res.output
    else:
        assert res.exit_code in (0, 1), (res.exit_code, res.output)
        assert "results:" in res.output
    assert _snapshot(out) == before


texts = st.text(max_size=20) | st.sampled_from(["[/x]", "[bold]", "]", "\x1b[31m", "\udcff", "a\nb", "-", "--x"])
ints = st.integers(-(2**70), 2**70) | st.integers(-2, 40)
option_values = {
    "seed": ints.map(str) | texts,
    "batch-size": ints.map(str) | texts,
    "max-items": ints.map(str) | texts,
    "device": st.sampled_from(["cpu", "cuda", "cuda:7", "meta", "mps", "xla", "cpu:0", "cpu:-1"]) | texts,
    "dtype": st.sampled_from(["float32", "bfloat16", "int8"]) | texts,
    "lenses": st.lists(st.sampled_from(["behavior", "quick", "default", "full", "behaviour", "", " "]) | texts,
                       max_size=3).map(",".join),
    "mc-mode": st.sampled_from(["text", "letter"]) | texts,
    "chat-template": st.sampled_from(["auto", "none"]) | texts,
    "format": st.sampled_from(["jsonl", "tofu", "qa"]) | texts,
    "qa-template": texts,
}


@FUZZ
@given(st.dictionaries(st.sampled_from(list(option_values)), st.none(), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: option_values[k] for k in keys})),
    st.sampled_from(["earlier", "file", "checkpoint", "fresh[/x]", "fresh"]))
def test_fuzz_cli_option_values(fuzz_env, monkeypatch, opts, where):
    suite, out, scratch, stub, _ = fuzz_env
    target = {"earlier": out, "file": suite / "forget.jsonl", "checkpoint": suite / "base" / "o",
              "fresh[/x]": scratch / "fresh[/x]", "fresh": scratch / "fresh"}[where]
    args = _args(suite, target, {})
    for k, v in opts.items():
        args += [f"--{k}={v}"]
    _invoke_checked(args, out, monkeypatch, stub, "options")


# YAML documents: mappings shaped like configs / policies with arbitrary values, then
# anchors and aliases (some bombs), deep nesting, and bad encodings of the text

scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=10)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
LENS_NAMES = ["behavior", "leak_at_k", "linear_probe", "relearn", "nope"]
LENS_OPTS = ["n_boot", "n", "folds", "C", "top_k", "steps", "metric", "x"]
lens_options = st.dictionaries(st.sampled_from(LENS_NAMES), st.dictionaries(
    st.sampled_from(LENS_OPTS), st.integers(-10, 10**12) | st.floats() | values, max_size=3), max_size=3)
CONFIG_KEYS = ["seed", "device", "dtype", "batch_size", "max_items", "lenses", "mc_mode", "min_power", "drop_unknown",
               "bogus"]
configs = st.fixed_dictionaries({}, optional={
    **{k: values for k in CONFIG_KEYS},
    "seed": st.integers(-5, 2**33) | values, "lenses": st.lists(st.sampled_from(["behavior", "quick", "nope"])),
    "lens_options": lens_options})
THRESHOLDS = ["behavior_recovery", "tau_s", "tau_d", "retain_collapse", "required_for_deleted", "x"]
policies = st.fixed_dictionaries({}, optional={
    "thresholds": st.dictionaries(st.sampled_from(THRESHOLDS), st.floats(-2, 2) | values, max_size=4),
    "min_items": st.integers(-5, 50) | values, "required_lenses": st.lists(st.sampled_from(LENS_NAMES), max_size=2),
    "retain_floor": st.floats(-1, 2) | st.none(), "side_effect_tolerance": st.floats(-1, 2),
    "fail_on": st.lists(st.sampled_from(["NOT_UNLEARNED", "SUPPRESSED", "MAYBE"]), max_size=2),
    "bogus": values})


def _nest(doc: str, depth: int, flow: bool) -> str:
    return ("x: " + "[" * depth + "1" + "]" * depth + "\n") if flow else (
        "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v\n")


def _bomb(levels: int, fan: int) -> str:
    doc = "a0: &a0 [" + ", ".join(["x"] * fan) + "]\n"
    for i in range(1, levels + 1):
        doc += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]\n"
    return doc


def documents(shapes):
    dumped = shapes.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    hostile = st.one_of(
        st.builds(_bomb, st.integers(1, 12), st.integers(1, 12)),
        st.builds(_nest, st.just(""), st.integers(1, 6000), st.just(True)),
        st.builds(_nest, st.just(""), st.integers(1, 300), st.just(False)),
        st.sampled_from(["a: &x [*x]\n", "a: *nope\n", "a: &x 1\nb: &x 2\n", "--- 1\n--- 2\n", "{", "]",
                         "a: !!python/name:os.system\n", "a: [/x]\n", "\x00", "\ufeffseed: 1\n"]),
        st.text(alphabet=":-[]{}!&*#|>'\"\n ,?%@`abc01.\t\\~", max_size=80),
    )
    text = dumped | hostile | st.builds(lambda a, b: a + b, dumped, hostile)
    encodings = st.sampled_from(["utf-8", "utf-16", "latin-1", "cp1252", "garbage"])

    def encode(t: str, enc: str) -> bytes:
        if enc == "garbage":
            return t.encode("utf-8", "surrogatepass")[:40] + b"\xff\xfe\xc3(" + t.encode("utf-8", "surrogatepass")[40:]
        return t.encode(enc, "replace") if enc != "utf-8" else t.encode("utf-8", "surrogatepass")

    return st.builds(encode, text, encodings | st.just("utf-8") | st.just("utf-8"))


@FUZZ
@given(documents(configs))
def test_fuzz_cli_config_documents(fuzz_env, monkeypatch, doc):
    suite, out, scratch, stub, _ = fuzz_env
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        cfg = _write(Path(d), "config.yaml", doc)
        args = _args(suite, out, {"lenses": None, "max_items": None})
        _invoke_checked([*args, "--config", str(cfg)], out, monkeypatch, stub, "config")


@FUZZ
@given(documents(policies))
def test_fuzz_cli_policy_documents(fuzz_env, monkeypatch, doc):
    suite, out, scratch, stub, _ = fuzz_env
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        pol = _write(Path(d), "policy.yaml", doc)
        _invoke_checked([*_args(suite, out, {}), "--policy", str(pol)], out, monkeypatch, stub, "policy")


def test_fuzz_reached_the_library_call(fuzz_env):
    # the properties above must exercise accepted inputs as well as refusals (this test
    # runs after them: pytest keeps file order); -s prints the counts
    print("fuzz outcomes (exit code: examples):", {k: dict(v) for k, v in OUTCOMES.items()})
    if len(OUTCOMES) < 3:
        pytest.skip("run with the fuzz properties")
    assert sum(sum(c.values()) for c in OUTCOMES.values()) >= 3 * FUZZ_EXAMPLES
    for prop, counts in OUTCOMES.items():
        assert counts[2] > 0 and counts[0] + counts[1] > 0, (prop, counts)
