"""``audit plan`` (issue 19): passes, peak memory and time, estimated before an audit runs.

The counts are held to what the lenses actually do: an audit on a tiny checkpoint built
here is run with its forward passes, training steps and intervention replicas counted
where the lenses make them, and compared with the plan for the same config. The
scaling tests count on plain numbers (no model).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.plan import (
    ModelFacts,
    PlanInputs,
    SetStats,
    plan_from,
    relearn_method,
    steering_settings,
)
from cli import app

LENS_OPTIONS = {
    "behavior": {"n_boot": 50},
    "quantization": {"bits": [4], "schemes": ["sym"], "bitsandbytes": False, "n_boot": 50},
    "relearn": {"steps": [1, 2], "seeds": 1, "batch_size": 4, "retain_examples": 4, "side_effect_items": 8,
                "verify_untouched": False, "n_boot": 50},
    "steering": {"max_layers": 1, "embed": False, "scales": [1.0], "poolings": ["last"], "n_controls": 16,
                 "n_boot": 50},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Three tiny random Llama checkpoints (B, U, N) on a small fictional world: 24 forget
    items (8 people × 3 attributes), 24 retain items."""
    from audit.items import write_items
    from audit.lab.organisms import ModelShape, make_model, make_tokenizer
    from audit.lab.world import WorldConfig, make_world

    d = tmp_path_factory.mktemp("tiny")
    world = make_world(WorldConfig(n_people=24, n_forget=8, n_qa=8, seed=0))
    tok = make_tokenizer(world)
    shape = ModelShape(d_model=32, n_layers=2, n_heads=2, d_mlp=64)
    for name, seed in (("base", 0), ("unlearned", 1), ("reference", 2)):
        make_model(shape, len(tok.get_vocab()), seed).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    write_items(world.items("forget"), d / "forget.jsonl")
    write_items(world.items("retain"), d / "retain.jsonl")
    return d


def _args(tiny: Path, out: Path, *extra: str) -> list[str]:
    return ["--base", str(tiny / "base"), "--unlearned", str(tiny / "unlearned"), "--reference",
            str(tiny / "reference"), "--forget", str(tiny / "forget.jsonl"), "--retain", str(tiny / "retain.jsonl"),
            "--out", str(out), *extra]


def _config(tiny: Path, out: Path, **kw):
    from audit.config import load_config

    return load_config(None, {"base": str(tiny / "base"), "unlearned": str(tiny / "unlearned"),
                              "reference": str(tiny / "reference"), "forget": str(tiny / "forget.jsonl"),
                              "retain": str(tiny / "retain.jsonl"), "out": str(out), **kw})


def test_the_counts_are_what_the_lenses_do(tiny, tmp_path, monkeypatch):
    import audit.scoring
    import probes.relearn
    import probes.steering
    from audit.plan import make_plan
    from audit.run import run

    monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / "cache"))  # nothing read back from another test's caches
    cfg = _config(tiny, tmp_path / "o", lenses=list(LENS_OPTIONS), lens_options=LENS_OPTIONS)
    plan = make_plan(cfg, measure=False)

    seen = {"scored": 0, "steps": 0, "trained": 0, "sweep": 0, "chosen": 0}
    pad_batch = audit.scoring.pad_batch

    def counted_pad_batch(seqs, *a, **k):  # score_items' batches: every scoring forward of every lens
        seen["scored"] += len(seqs)
        return pad_batch(seqs, *a, **k)

    lm_loss = probes.relearn.lm_loss

    def counted_lm_loss(model, ids, mask):  # one per relearning step
        seen["steps"] += 1
        seen["trained"] += int(ids.shape[0])
        return lm_loss(model, ids, mask)

    from audit.intervene import PreparedItems as engine

    logprobs = engine.logprobs

    def counted_logprobs(self, site, add, abl, tokens_per_pass, edit=None, n_replicas=None, **k):
        reps = (n_replicas or 1) if edit is not None else (1 if add is None else int(add.shape[0]))
        resumed = site is not None and site.startswith("blocks.")  # the prompts forwarded once, then resumed
        seen["sweep" if self.model.role == "unlearned" else "chosen"] += len(self.seqs) * (reps + resumed)
        return logprobs(self, site, add, abl, tokens_per_pass, edit=edit, n_replicas=n_replicas, **k)

    monkeypatch.setattr(audit.scoring, "pad_batch", counted_pad_batch)
    monkeypatch.setattr(probes.relearn, "lm_loss", counted_lm_loss)
    monkeypatch.setattr(engine, "logprobs", counted_logprobs)
    log = run(cfg)
    assert all(r.error is None for r in log.lenses.values()), {k: r.error for k, r in log.lenses.items()}

    relearn = plan.row("relearn")
    # 3 runs (A→B, B→A, retain) × 1 seed × 3 models × 2 steps, each on min(4, training items) sequences
    assert relearn.work.steps == seen["steps"] == 3 * 1 * 3 * 2
    assert relearn.work.backward == seen["trained"]
    scored = (plan.row("scores (shared)").work.forward + plan.row("behavior").work.forward
              + plan.row("quantization").work.forward + relearn.parts["score"].forward)
    assert scored == seen["scored"]
    steering = plan.row("steering")
    assert steering.parts["sweep"].forward == seen["sweep"]
    assert 0 < seen["chosen"] <= steering.parts["chosen on B and N"].forward  # B's own B−U direction: no edit


def _facts(n_params: int = 1_000_000) -> ModelFacts:
    return ModelFacts(n_params=n_params, n_layers=4, d_model=128, d_vocab=500, kv_width=128,
                      lora_shapes=((128, 128),) * 16 + ((512, 128), (128, 512)) * 4, largest_linear=500 * 128)


def _set(n: int, multi: bool = False) -> SetStats:
    """``n`` items of 4 candidates (one token each, or 2 with ``multi``), 3 items per subject."""
    cand = ((7, 8),) * 4 if multi else ((7,),) * 4
    return SetStats((10,) * n, (cand,) * n, tuple(f"s{i // 3}" for i in range(n)), tuple(range(n)))


def _inputs(n_forget: int = 60, n_retain: int = 48, **kw) -> PlanInputs:
    return PlanInputs(_facts(kw.pop("n_params", 1_000_000)), _set(n_forget, kw.pop("multi", False)),
                      _set(n_retain), **kw)


def _lens_configs(**options) -> dict:
    from audit.registry import expand_lenses, get_lens

    return {n: get_lens(n).make_config(options.get(n, {})) for n in expand_lenses(["default"])}


def test_counts_grow_in_proportion_to_items_seeds_and_models():
    one, two = plan_from(_inputs(60, 48), _lens_configs()), plan_from(_inputs(120, 96), _lens_configs())
    for step in ("scores (shared)", "activations (shared)", "behavior", "quantization", "leak_at_k"):
        assert two.row(step).work.forward == 2 * one.row(step).work.forward > 0, step
    assert two.row("steering").parts["sweep"].forward == 2 * one.row("steering").parts["sweep"].forward

    seeds = {s: plan_from(_inputs(), _lens_configs(relearn={"seeds": s})).row("relearn").work for s in (1, 2, 4)}
    assert seeds[4].steps == 2 * seeds[2].steps == 4 * seeds[1].steps > 0
    assert seeds[4].backward == 2 * seeds[2].backward and seeds[4].forward == 2 * seeds[2].forward

    refs = {n: plan_from(_inputs(n_references=n), _lens_configs()) for n in (1, 3)}  # 3 and 5 models
    for step in ("scores (shared)", "quantization", "leak_at_k"):
        assert 3 * refs[3].row(step).work.forward == 5 * refs[1].row(step).work.forward, step
    assert 3 * refs[3].row("relearn").work.steps == 5 * refs[1].row("relearn").work.steps


def test_counts_follow_the_lens_configs():
    base = plan_from(_inputs(), _lens_configs())
    steps = plan_from(_inputs(), _lens_configs(relearn={"steps": [5, 10, 40]}))
    assert steps.row("relearn").work.steps == 2 * base.row("relearn").work.steps  # the budget: the largest count
    q = plan_from(_inputs(), _lens_configs(quantization={"bits": [8, 4, 3, 2], "schemes": ["sym"]}))
    assert q.row("quantization").work.forward * 6 == base.row("quantization").work.forward * 4
    leak = plan_from(_inputs(), _lens_configs(leak_at_k={"n": 64}))
    assert leak.row("leak_at_k").work.forward > 1.9 * base.row("leak_at_k").work.forward
    # multi-token candidates: one scoring forward per candidate instead of one per item
    multi = plan_from(_inputs(multi=True), _lens_configs())
    assert multi.row("quantization").work.forward == 4 * base.row("quantization").work.forward
    assert multi.row("logit_lens").work.forward > 0 == base.row("logit_lens").work.forward


def test_peak_memory_rises_with_dtype_bytes_and_fine_tuning_state():
    f32 = plan_from(_inputs(dtype="float32"), _lens_configs())
    bf16 = plan_from(_inputs(dtype="bfloat16"), _lens_configs())
    assert f32.inputs.model_bytes == 2 * bf16.inputs.model_bytes == 4_000_000
    assert f32.peak_bytes["cpu"] > bf16.peak_bytes["cpu"] >= 3 * bf16.inputs.model_bytes  # B, U, N held together
    full = plan_from(_inputs(), _lens_configs(relearn={"method": "full"})).row("relearn")
    lora = plan_from(_inputs(), _lens_configs(relearn={"method": "lora"})).row("relearn")
    assert full.device_bytes >= 16 * 1_000_000  # a copy, its gradient and AdamW's two moments, in fp32
    assert lora.device_bytes < full.device_bytes / 2
    gpu = plan_from(_inputs(device="cuda:0"), _lens_configs())
    assert set(gpu.peak_bytes) == {"cuda:0", "cpu"} and gpu.peak_bytes["cuda:0"] >= 3 * gpu.inputs.model_bytes


def test_relearn_method_and_steering_settings_are_the_lenses_own():
    from probes.relearn import RelearnConfig, resolve_method
    from probes.steering import SteeringConfig, _settings

    for method in ("auto", "full", "lora"):
        cfg = RelearnConfig(method=method, lora_above=1000)
        for n in (10, 1000, 1001, 10**9):
            assert relearn_method(cfg, n) == resolve_method(cfg, n)
    for opts in ({}, {"ablate": False}, {"scales": [0.5, -0.5, 1, 2]}, {"directions": ["random"]},
                 {"directions": ["base_minus_unlearned", "forget_minus_retain", "random"], "poolings": ["mean"]}):
        cfg = SteeringConfig(**opts)
        got = _settings(cfg, ["site"])
        assert steering_settings(cfg) == (len(got), len({s.control_key for s in got})), opts


def test_audit_plan_prints_every_lens_with_estimates(tiny, tmp_path):
    res = CliRunner().invoke(app, ["plan", *_args(tiny, tmp_path / "o")])
    assert res.exit_code == 0, res.output
    for name in ("behavior", "linear_probe", "logit_lens", "steering", "sae", "quantization", "relearn",
                 "leak_at_k", "similarity", "estimate", "peak memory", "time (estimate)"):
        assert name in res.output, name
    assert not (tmp_path / "o").exists()  # nothing is written


@pytest.mark.parametrize(("extra", "message"), [
    (["--lenses", "behaviour"], "unknown lens 'behaviour'"),
    (["--max-items", "5"], "the policy requires at least 20"),
    (["--dtype", "float8"], "unknown dtype"),
])
def test_audit_plan_bad_input_exits_2(tiny, tmp_path, extra, message):
    res = CliRunner().invoke(app, ["plan", *_args(tiny, tmp_path / "o", *extra)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_audit_plan_missing_checkpoint_exits_2(tiny, tmp_path):
    args = _args(tiny, tmp_path / "o")
    args[args.index("--base") + 1] = str(tmp_path / "nope")
    res = CliRunner().invoke(app, ["plan", *args])
    assert res.exit_code == 2 and "checkpoint not found" in res.output, res.output


def test_audit_run_prints_the_plan_first(tiny, tmp_path, monkeypatch):
    import cli

    res = CliRunner().invoke(app, ["run", *_args(tiny, tmp_path / "o2", "--lenses", "behavior")])
    assert res.exit_code in (0, 1) and "Plan" not in res.output, res.output  # not a terminal: as before
    monkeypatch.setattr(cli, "_interactive", lambda: True)  # a person at a terminal
    res = CliRunner().invoke(app, ["run", *_args(tiny, tmp_path / "o", "--lenses", "behavior")])
    assert res.exit_code in (0, 1), res.output
    out = res.output
    assert "Plan (estimates)" in out and "estimated peak memory" in out
    assert out.index("Plan (estimates)") < out.index("Verdict")
    assert "behavior" in out[: out.index("Verdict")]
