"""Reliability and safety (issue #9): bad input, fuzzed loaders, interruption and resume,
reproducibility, non-finite numbers, low precision and out-of-memory backoff.

``docs/reliability.md`` maps every guarantee to the tests here and in test_cli.py,
test_items.py, test_models.py and test_report*.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from audit.errors import InputError, LensError
from audit.items import parse_items
from audit.policy import Policy, load_policy
from audit.sources import load_items
from audit.verdict import Thresholds
from cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

FUZZ_EXAMPLES = 300
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# the end-to-end runs: three lenses, one of them randomized (leak@k samples)
LENSES = "behavior,linear_probe,leak_at_k"
MAX_ITEMS = 24


# ---------------------------------------------------------------------------------------
# Fuzzing: the item and policy loaders raise InputError or nothing
# ---------------------------------------------------------------------------------------

GOOD = {"id": "a", "prompt": "x lives in", "answer": "paris", "distractors": ["rome", "oslo", "lima"]}
FIELDS = ["id", "prompt", "answer", "distractors", "subject", "attribute", "question", "distractors_sampled"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
field_values = json_values | st.lists(st.text(max_size=8), max_size=6)
# objects shaped like items: known and unknown fields with arbitrary values
item_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=8)
# a valid item with one field replaced: reaches the semantic checks, not only the parser
near_valid = st.builds(lambda k, v: {**GOOD, k: v}, st.sampled_from(FIELDS), field_values)
yamlish = st.text(alphabet=":-[]{}!&*#|>'\"\n ,?%@`abc01.\t\\~", max_size=60)


def _only_input_error(fn, *args) -> None:
    try:
        fn(*args)
    except InputError:
        pass


@FUZZ
@given(st.lists(st.text(), max_size=6))
def test_fuzz_items_arbitrary_lines(lines):
    _only_input_error(parse_items, lines)


@FUZZ
@given(st.lists(item_objects | near_valid, min_size=1, max_size=4), st.booleans())
def test_fuzz_items_json_objects(objs, pad_blank):
    lines = [json.dumps(o) for o in objs]
    if pad_blank:
        lines.insert(len(lines) // 2, "   ")
    _only_input_error(parse_items, lines)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_fuzz_item_file_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "items.jsonl"
        p.write_bytes(data)
        _only_input_error(load_items, p)


POLICY_KEYS = list(Policy.model_fields)
THRESHOLD_KEYS = list(Thresholds.model_fields)
policy_objects = st.dictionaries(
    st.sampled_from(POLICY_KEYS) | st.text(max_size=6),
    json_values | st.dictionaries(st.sampled_from(THRESHOLD_KEYS) | st.text(max_size=4), json_values, max_size=4),
    max_size=6,
)


def _load_policy_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "policy.yaml"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        _only_input_error(load_policy, p)


@FUZZ
@given(st.text(max_size=200) | yamlish)
def test_fuzz_policy_arbitrary_text(text):
    _load_policy_text(text)


@FUZZ
@given(policy_objects)
def test_fuzz_policy_mappings(obj):
    _load_policy_text(yaml.safe_dump(obj, allow_unicode=True))


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' * 100_000, "[" * 2000 + "]" * 2000])
def test_deeply_nested_input_is_an_input_error(tmp_path, text):
    # found by the fuzzers' neighbourhood: json and yaml recurse until RecursionError
    with pytest.raises(InputError, match="nested too deeply"):
        parse_items([text])
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match="nested too deeply|not valid YAML|larger than"):
        load_policy(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [("thresholds:\n  tau_s: .nan\n", r"key 'thresholds.tau_s'"), ("side_effect_tolerance: .inf\n", "finite")],
)
def test_policy_rejects_non_finite_thresholds(tmp_path, text, message):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_policy(p)


# ---------------------------------------------------------------------------------------
# Bad input through the CLI: exit 2, a message naming the problem, no traceback
# ---------------------------------------------------------------------------------------


def _copy(suite: Path, name: str, dest: Path) -> Path:
    shutil.copytree(suite / name, dest)
    return dest


def _corrupt_weights(suite, d):
    ck = _copy(suite, "head_only", d / "ck")
    (ck / "model.safetensors").write_bytes(b"not a safetensors file" * 8)
    return {"unlearned": ck}


def _truncated_weights(suite, d):
    ck = _copy(suite, "head_only", d / "ck")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {"unlearned": ck}


def _bad_config_json(suite, d):
    ck = _copy(suite, "head_only", d / "ck")
    (ck / "config.json").write_text("{not json")
    return {"unlearned": ck}


def _not_a_checkpoint(suite, d):
    (d / "folder").mkdir()
    (d / "folder" / "notes.txt").write_text("hello")
    return {"reference": d / "folder"}


def _a_plain_file(suite, d):
    (d / "weights.txt").write_text("x")
    return {"base": d / "weights.txt"}


def _architecture_mismatch(suite, d):
    from audit.lab.organisms import ModelShape, make_model
    from audit.models import load_model

    tok = load_model(suite / "base").tokenizer
    small = make_model(ModelShape(d_model=64, n_layers=4, n_heads=4, d_mlp=128), len(tok.get_vocab()), 0)
    small.save_pretrained(d / "small")
    tok.save_pretrained(d / "small")
    return {"reference": d / "small"}


def _answer_tokenizes_to_nothing(suite, d):
    # a tokenizer whose normalizer deletes '~': the answer '~~~' has no tokens
    ck = _copy(suite, "base", d / "base")
    j = json.loads((ck / "tokenizer.json").read_text())
    j["normalizer"] = {"type": "Replace", "pattern": {"String": "~"}, "content": ""}
    (ck / "tokenizer.json").write_text(json.dumps(j))
    lines = (suite / "forget.jsonl").read_text().splitlines()[:MAX_ITEMS]
    first = json.loads(lines[0])
    first["answer"] = "~~~"
    lines[0] = json.dumps(first)
    (d / "f.jsonl").write_text("\n".join(lines) + "\n")
    return {"base": ck, "forget": d / "f.jsonl"}


def _missing_items(suite, d):
    return {"retain": d / "nope.jsonl"}


def _unreadable_items(suite, d):
    (d / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    return {"forget": d / "bin.jsonl"}


def _malformed_line(suite, d):
    lines = (suite / "forget.jsonl").read_text().splitlines()
    lines[6] = lines[6].replace('"answer"', '"answr"')
    (d / "f.jsonl").write_text("\n".join(lines) + "\n")
    return {"forget": d / "f.jsonl"}


def _duplicate_id(suite, d):
    lines = (suite / "forget.jsonl").read_text().splitlines()
    lines.insert(10, lines[2])
    (d / "f.jsonl").write_text("\n".join(lines) + "\n")
    return {"forget": d / "f.jsonl"}


def _answer_is_a_distractor(suite, d):
    lines = (suite / "forget.jsonl").read_text().splitlines()
    it = json.loads(lines[4])
    it["distractors"][1] = it["answer"].upper()
    lines[4] = json.dumps(it)
    (d / "f.jsonl").write_text("\n".join(lines) + "\n")
    return {"forget": d / "f.jsonl"}


BAD_INPUTS = {
    "corrupt safetensors": (_corrupt_weights, "cannot load checkpoint"),
    "truncated safetensors": (_truncated_weights, "cannot load checkpoint"),
    "config.json not JSON": (_bad_config_json, "cannot load checkpoint"),
    "folder that is not a checkpoint": (_not_a_checkpoint, "is not a Hugging Face checkpoint: it has no config.json"),
    "plain file as checkpoint": (_a_plain_file, "neither a Hugging Face checkpoint directory nor a .gguf file"),
    # run_args already passes one --reference: this one is the second (reference_2)
    "architecture mismatch": (_architecture_mismatch, "base and reference_2 have different architectures: hidden_size is 128"),
    "answer tokenizes to nothing": (_answer_tokenizes_to_nothing, "the candidate answer '~~~' tokenizes to nothing"),
    "missing item file": (_missing_items, "nope.jsonl"),
    "undecodable item file": (_unreadable_items, "bin.jsonl"),
    "malformed line": (_malformed_line, "f.jsonl:7: field 'answer': missing"),
    "duplicate id": (_duplicate_id, "f.jsonl:11: duplicate id"),
    "answer among distractors": (_answer_is_a_distractor, "is among its distractors"),
    "batch size 0": (lambda s, d: {"batch_size": 0}, "config option 'batch_size'"),
    "negative max items": (lambda s, d: {"max_items": -3}, "config option 'max_items'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_without_traceback(run_args, suite, tmp_path, case):
    make, message = BAD_INPUTS[case]
    out = tmp_path / "o"
    res = runner.invoke(app, run_args(suite, out, **{"max_items": MAX_ITEMS, **make(suite, tmp_path)}))
    text = " ".join(res.output.split())
    assert res.exit_code == 2, (res.exception, text)
    assert message in text, text
    assert "Traceback" not in res.output and not (out / "audit_log.json").exists()


# ---------------------------------------------------------------------------------------
# Untrusted checkpoints (the refusal without --allow-pickle: test_models.py)
# ---------------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_allow_pickle_still_never_runs_code(suite, tmp_path, monkeypatch):
    import pickle

    from audit.models import load_model

    d = _copy(suite, "base", tmp_path / "pickled")
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as fh:
        pickle.dump(_Boom(), fh)
    monkeypatch.chdir(tmp_path)
    # --allow-pickle reads with torch.load(weights_only=True), which refuses the os.system global
    with pytest.raises(InputError, match="cannot load checkpoint .*Weights only load failed"):
        load_model(d, allow_pickle=True)
    assert not (tmp_path / "PWNED").exists()
    # honest pickled weights do load with --allow-pickle
    w = load_file(str(suite / "base" / "model.safetensors"))
    torch.save(w, d / "pytorch_model.bin")
    assert load_model(d, allow_pickle=True).n_layers == 4


def test_remote_code_is_not_run_by_default(suite, tmp_path):
    from audit.config import AuditConfig
    from audit.models import load_model

    assert AuditConfig.model_fields["trust_remote_code"].default is False
    d = _copy(suite, "base", tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "REMOTE_CODE_RAN"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                               "from transformers import LlamaConfig, LlamaForCausalLM\n"
                               "class EvilConfig(LlamaConfig): pass\n"
                               "class EvilModel(LlamaForCausalLM): config_class = EvilConfig\n")
    try:
        m = load_model(d)  # transformers falls back to its own Llama class, or refuses
        assert type(m.hf).__module__.startswith("transformers.models.llama")
    except InputError:
        pass
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Numerics: non-finite logits / activations are lens errors with their cause
# ---------------------------------------------------------------------------------------


def _poisoned(suite: Path, dest: Path, tensor: str, value: float) -> Path:
    ck = _copy(suite, "head_only", dest)
    w = load_file(str(ck / "model.safetensors"))
    w[tensor] = w[tensor].clone()
    w[tensor].view(-1)[0] = value
    save_file(w, str(ck / "model.safetensors"), metadata={"format": "pt"})
    return ck


def test_nan_logits_are_a_lens_error_not_a_verdict(run_args, suite, tmp_path):
    # an "over-unlearned" model: one NaN in the final norm makes every logit NaN
    bad = _poisoned(suite, tmp_path / "nan", "model.norm.weight", float("nan"))
    res = runner.invoke(app, run_args(suite, tmp_path / "o", max_items=MAX_ITEMS, unlearned=bad))
    assert res.exit_code == 1, res.output  # the default policy fails an INCONCLUSIVE verdict
    log = json.loads((tmp_path / "o" / "audit_log.json").read_text())
    err = log["lenses"]["behavior"]["error"]
    assert "unlearned model" in err and str(bad) in err and "non-finite logits (NaN)" in err
    assert "on item '" in err
    assert {v["label"] for v in log["verdicts"]} == {"INCONCLUSIVE"}
    assert "behavior lens failed" in log["verdicts"][0]["reason"] and "NaN" in log["verdicts"][0]["reason"]
    assert log["policy_result"]["passed"] is False


def test_non_finite_activations_name_model_item_and_layer(suite, manifest, tmp_path):
    from audit.activations import capture
    from audit.models import load_model

    bad = _poisoned(suite, tmp_path / "inf", "model.layers.1.mlp.down_proj.weight", float("inf"))
    m = load_model(bad, "unlearned")
    items = load_items(suite / manifest["forget"])[:8]
    with pytest.raises(LensError, match=r"unlearned model \(.*inf\): non-finite activations at blocks\.1\.hook_resid_post"):
        capture(m, items, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


def test_low_precision_models_are_scored_in_fp32(suite, manifest, base_model):
    from audit.models import load_model
    from audit.scoring import score_items

    items = load_items(suite / manifest["forget"])[:MAX_ITEMS]
    ref = score_items(base_model.forward, base_model.tokenizer, items)
    half = load_model(suite / "base", "base", dtype="bfloat16")
    seen = []

    def forward(ids, mask):
        out = half.forward(ids, mask)
        seen.append(out.dtype)
        return out

    low = score_items(forward, half.tokenizer, items)
    assert seen and all(d == torch.bfloat16 for d in seen)  # the model ran in bf16
    # log-probs are finite and within bf16 rounding of the fp32 model's
    assert np.isfinite(low.margins).all()
    assert np.abs(low.margins - ref.margins).max() < 0.5
    assert abs(low.score - ref.score) <= 2 / len(items)


# ---------------------------------------------------------------------------------------
# Out-of-memory backoff
# ---------------------------------------------------------------------------------------


def test_run_batched_halves_on_oom_and_gives_up_at_one(caplog):
    from audit.batching import run_batched

    sizes = []

    def fn(a, b):
        sizes.append(b - a)
        if b - a > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes. out of memory")
        return list(range(a, b))

    with caplog.at_level(logging.WARNING, logger="audit"):
        parts = run_batched(fn, 10, 16, what="test")
    assert sum(parts, []) == list(range(10))
    assert sizes[:3] == [10, 5, 2]  # 10 fails, 5 fails, then 2 at a time
    assert "out of memory at batch size 10; retrying with 5" in caplog.text

    with pytest.raises(LensError, match="out of memory even at batch size 1"):
        run_batched(lambda a, b: (_ for _ in ()).throw(MemoryError()), 4, 2, what="test")
    with pytest.raises(ValueError, match="not memory"):  # anything else propagates unchanged
        run_batched(lambda a, b: (_ for _ in ()).throw(ValueError("not memory")), 4, 2)


def test_scoring_and_capture_back_off_to_the_same_results(suite, manifest, base_model, monkeypatch, caplog, tmp_path):
    from audit.activations import capture
    from audit.scoring import score_items

    # 40 one-token-answer items: 40 scored sequences (each prompt forwarded once), so 32 > 16 > 8
    items = load_items(suite / manifest["forget"])[:40]
    m = base_model

    def limited(fn, limit):
        def wrapped(ids, *a, **kw):
            if ids.shape[0] > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return fn(ids, *a, **kw)
        return wrapped

    plain = score_items(m.forward, m.tokenizer, items, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="audit"):
        backed = score_items(limited(m.forward, 8), m.tokenizer, items, batch_size=32, model_name="base model")
    assert backed.candidate_logprobs == plain.candidate_logprobs
    assert (backed.greedy == plain.greedy).all()
    assert "scoring (base model): out of memory at batch size 32; retrying with 16" in caplog.text
    assert "retrying with 8" in caplog.text

    want = capture(m, items, batch_size=3, cache_dir=tmp_path / "a")
    caplog.clear()
    monkeypatch.setattr(m.bridge, "run_with_cache", limited(m.bridge.run_with_cache, 4))
    with caplog.at_level(logging.WARNING, logger="audit"):
        got = capture(m, items, batch_size=12, cache_dir=tmp_path / "b")  # 12 -> 6 -> 3
    assert "out of memory at batch size 12; retrying with 6" in caplog.text
    for h in want.hooks:
        assert torch.equal(got.last[h], want.last[h]) and torch.equal(got.mean[h], want.mean[h])


# ---------------------------------------------------------------------------------------
# Resume keys: a changed input never reuses a stale lens result
# ---------------------------------------------------------------------------------------


def test_resume_reuses_only_matching_lens_results(suite, manifest, monkeypatch, tmp_path, caplog):
    from audit import registry
    from audit.config import AuditConfig
    from audit.run import run

    registry.available_lenses()
    calls = []
    spec = registry._REGISTRY["behavior"]

    def counted(ctx, cfg):  # a stand-in for a costly lens: counts how often it is computed
        from audit.schema import LensResult

        calls.append(ctx.seed)
        retain = {"base": {"score": 1.0}, "unlearned": {"score": 1.0}}
        return LensResult(name="behavior", config=cfg.model_dump(), data={"seed": ctx.seed, "retain": retain})

    def interrupt(ctx, cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(registry._REGISTRY, "behavior", dataclasses.replace(spec, fn=counted))
    monkeypatch.setitem(registry._REGISTRY, "stop_here", dataclasses.replace(spec, name="stop_here", fn=interrupt))
    out = tmp_path / "o"
    kw = dict(base=str(suite / "base"), unlearned=str(suite / "head_only"), reference=str(suite / "reference_a"),
              forget=str(suite / manifest["forget"]), retain=str(suite / manifest["retain"]), out=str(out),
              max_items=MAX_ITEMS, lenses=["behavior", "stop_here"])

    def go(**over):
        with pytest.raises(KeyboardInterrupt):
            run(AuditConfig(**{**kw, **over}))

    go()  # behavior completes, then the run is "interrupted"
    saved = json.loads((out / ".partial" / "behavior.json").read_text())
    assert len(calls) == 1 and not (out / "audit_log.json").exists()
    with caplog.at_level(logging.INFO, logger="audit"):
        go(resume=True)
    assert len(calls) == 1 and "resumed lens behavior" in caplog.text
    go(resume=True, seed=1)  # another seed: recomputed
    assert calls == [0, 1]
    last = dict(seed=1, lens_options={"behavior": {"n_boot": 500}})
    go(resume=True, **last)  # another lens option: recomputed
    last["max_items"] = MAX_ITEMS - 3
    go(resume=True, **last)  # other items: recomputed
    last["unlearned"] = str(suite / "noop")
    go(resume=True, **last)  # another model: recomputed
    assert len(calls) == 5
    go(resume=False, **last)  # without --resume nothing is reused
    assert len(calls) == 6
    assert json.loads((out / ".partial" / "behavior.json").read_text())["key"] != saved["key"]
    # a finished run reuses the matching checkpoint, then removes the folder
    monkeypatch.delitem(registry._REGISTRY, "stop_here")
    run(AuditConfig(**{**kw, **last, "lenses": ["behavior"], "resume": True}))
    assert len(calls) == 6
    assert (out / "audit_log.json").exists() and not (out / ".partial").exists()


# ---------------------------------------------------------------------------------------
# End to end in subprocesses: reproducibility, interruption (SIGINT / SIGTERM), --resume
# ---------------------------------------------------------------------------------------

DRIVER = r'''
"""Run the real CLI, stalling at one interruption point until a signal arrives."""
import dataclasses, os, sys, time
from pathlib import Path

mode, marker = os.environ["STALL_MODE"], Path(os.environ["STALL_MARKER"])


def stall():
    marker.write_text(mode)
    time.sleep(300)


if mode == "lens":  # mid-lens: linear_probe has captured activations, then hangs
    from audit import registry
    registry.available_lenses()
    spec = registry._REGISTRY["linear_probe"]

    def stalled(ctx, cfg):
        ctx.activations("base", "forget")
        stall()

    registry._REGISTRY["linear_probe"] = dataclasses.replace(spec, fn=stalled)
elif mode == "cache_write":  # an activation-cache entry is half written
    import audit.activations as A
    real_save = A.save_file

    def slow_save(tensors, path):
        real_save(tensors, path)
        stall()

    A.save_file = slow_save
elif mode == "log_write":  # the new audit_log.json is half written
    import audit.atomic as at
    real_write = at.atomic_write_text

    def slow_write(path, text, encoding="utf-8"):
        if Path(path).name != "audit_log.json":
            return real_write(path, text, encoding)
        with at.atomic_path(path) as tmp:
            tmp.write_text(text[: len(text) // 2])
            stall()

    at.atomic_write_text = slow_write

from cli import main
sys.argv = ["audit", *sys.argv[1:]]
main()
'''


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AUDIT_CACHE=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return env


def _audit(args: list[str], cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=_env(cache), capture_output=True,
                          text=True, timeout=timeout)


def _stripped(path: Path) -> str:
    """The log without what legitimately differs between runs: timings, timestamps, paths of outputs,
    caught library warnings."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("seconds", "timings", "created")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    log = strip(json.loads(path.read_text()))
    log["config"].pop("out")
    log["config"].pop("resume")
    # library warnings caught during the run (audit.quiet): a resumed lens is not run again,
    # so its warnings are not raised again; they are diagnostics of a process, not results
    log["notes"] = [n for n in log.get("notes", []) if not n.startswith("warning (")]
    return json.dumps(log, sort_keys=True)


@pytest.fixture(scope="module")
def first_run(suite, run_args, tmp_path_factory) -> Path:
    """One uninterrupted end-to-end run; the other runs must reproduce it."""
    out = tmp_path_factory.mktemp("first") / "o"
    res = _audit(run_args(suite, out, lenses=LENSES, max_items=MAX_ITEMS), tmp_path_factory.mktemp("cache1"))
    assert res.returncode == 1, res.stderr  # head_only: SUPPRESSED fails the default policy
    return out / "audit_log.json"


def test_two_runs_give_byte_identical_results(first_run, suite, run_args, tmp_path):
    res = _audit(run_args(suite, tmp_path / "o", lenses=LENSES, max_items=MAX_ITEMS), tmp_path / "cache")
    assert res.returncode == 1, res.stderr
    a, b = _stripped(first_run), _stripped(tmp_path / "o" / "audit_log.json")
    assert a == b
    log = json.loads(first_run.read_text())
    assert log["verdicts"][0]["label"] == "SUPPRESSED"
    assert {"torch", "transformers", "scikit-learn", "numpy", "unlearning-audit"} <= set(log["versions"])
    assert {"device": "cpu", "dtype": "float32", "seed": 0}.items() <= log["environment"].items()
    assert len(log["lenses"]["leak_at_k"]["recoveries"]) > 0


INTERRUPTIONS = [
    ("lens", signal.SIGINT),
    ("lens", signal.SIGTERM),
    ("cache_write", signal.SIGINT),
    ("log_write", signal.SIGTERM),
]


@pytest.mark.parametrize(("point", "sig"), INTERRUPTIONS, ids=[f"{p}-{s.name}" for p, s in INTERRUPTIONS])
def test_interrupted_run_keeps_results_and_resumes(first_run, suite, run_args, tmp_path, point, sig):
    out, cache, marker = tmp_path / "o", tmp_path / "cache", tmp_path / "stalled"
    out.mkdir()
    previous = (out / "audit_log.json")
    shutil.copy(first_run, previous)
    before = previous.read_bytes()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = run_args(suite, out, lenses=LENSES, max_items=MAX_ITEMS)
    env = {**_env(cache), "STALL_MODE": point, "STALL_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(driver), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=30)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({sig.name})" in err and "rerun with --resume" in err
    assert "Traceback" not in err
    # the previous results are untouched, nothing half-written is left
    assert previous.read_bytes() == before
    assert not list(out.rglob("*.tmp")) and not list(cache.rglob("*.tmp"))
    for entry in cache.rglob("*.safetensors"):
        load_file(str(entry))  # every cache entry that exists is complete
    done = sorted(p.stem for p in (out / ".partial").glob("*.json"))
    assert done == (["behavior", "leak_at_k", "linear_probe"] if point == "log_write" else ["behavior"])

    if (point, sig) == ("lens", signal.SIGTERM):
        return  # the same point as lens-SIGINT; its resume is not run again, to keep the suite short
    res = _audit([*args, "--resume"], cache)
    assert res.returncode == 1, res.stderr
    for lens in done:
        assert f"resumed lens {lens}" in res.stderr
    assert "resumed lens linear_probe" not in res.stderr or point == "log_write"
    assert _stripped(out / "audit_log.json") == _stripped(first_run)
    assert not (out / ".partial").exists() and not list(out.rglob("*.tmp"))
