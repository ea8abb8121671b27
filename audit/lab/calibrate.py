"""``audit calibrate``: the auditor's confusion matrix against known ground truth (SPEC §6).

Builds (or reuses) organism suites over seeds, architectures (Llama- and GPT-2-style)
and world/model variants, runs the lens battery on every audited organism, and
summarises: the confusion matrix of verdict vs construction truth, per-label precision
and recall, the never-trained models (reference_b, at sampling temperatures 2 and 0.5,
and with a skewed prior over answer values) labelled SUPPRESSED or NOT_UNLEARNED, the
AUROC of the deletion score separating DELETED-truth from SUPPRESSED-truth organisms, the
same AUROC per lens, and the method organisms' verdicts beside what the relearn and
quantization attacks actually recovered. With ``no_reference`` (on in every preset) the
same organisms are audited a second time with N withheld, and summarised in a second,
separate table (rows with ``"reference": False``).

Thresholds are never tuned here: the verdict uses the policy's fixed thresholds, so the
numbers reported are out-of-sample for every organism.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from audit.atomic import atomic_write_text
from audit.errors import InputError
from audit.lab.organisms import (
    CONSTRUCTIONS,
    HARD_CONSTRUCTIONS,
    ModelShape,
    SuiteConfig,
    TrainConfig,
    build_suite,
    open_answer_suite,
)
from audit.lab.suite import audit_suite
from audit.lab.world import WorldConfig
from audit.progress import log
from audit.schema import read_log

LABELS = ("DELETED", "SUPPRESSED", "NOT_UNLEARNED", "INCONCLUSIVE")


class Variant(BaseModel):
    """One organism world and model shape (the architecture is varied separately)."""

    name: str
    world: WorldConfig = WorldConfig()
    shape: ModelShape = ModelShape()
    train: TrainConfig = TrainConfig()
    seeds: list[int] | None = None
    """Only these of the preset's seeds (``None``: every seed)."""
    constructions: list[str] | None = None
    """This variant's construction organisms (``None``: the preset's ``constructions``)."""
    head_only_steps: int | None = None
    """``SuiteConfig.head_only_steps`` of this variant (``None``: its default)."""
    extra_references: list[str] = Field(default_factory=list)
    """Other never-trained checkpoints of the suite (e.g. ``lineage_b``, in B's basis) against
    which its construction organisms and never-trained models are audited a second time, each
    summarised in a table of its own (``summary.by_reference``); the main table stays
    ``reference_a``'s."""


class Preset(BaseModel):
    """What a calibration run covers."""

    seeds: list[int]
    archs: list[str] = ["llama", "gpt2"]
    variants: list[Variant]
    methods: bool = True
    """Also build and audit the GA/GradDiff/NPO/RMU organisms."""
    audit_methods: bool = True
    """Audit the method organisms the suites hold (off: only the construction organisms and
    never-trained models, e.g. to calibrate new lenses on suites built with methods)."""
    constructions: list[str] | None = None
    """The construction organisms of every suite (``SuiteConfig.constructions``; ``None``:
    those of ``audit.lab.organisms.CONSTRUCTIONS``, without issue 18's hard ones)."""
    two_phase_base: bool = False
    """Train every suite's base in two phases (``SuiteConfig.two_phase_base``), so that the
    lineage organism is base's own phase-1 checkpoint continued on retain only."""
    lenses: list[str]
    lens_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    no_reference: bool = True
    """Also audit the organisms with the reference withheld (the no-reference table)."""
    no_reference_truths: list[str | None] | None = None
    """Audit without a reference only the organisms of these construction truths (``None``
    in the list: the method organisms); ``None``: every audited organism."""


# 80 forget people (240 forget items), answers balanced within each group. Two never-trained
# models differ on the forget items by 0.05-0.2 in recovery on 120 items (one model's prior
# over values, e.g. "tennis" for 37 of 40 people, met a skewed answer sample; and each one's
# arbitrary guesses per person), which with CIs of ±0.1 left reference_b INCONCLUSIVE on half
# the 100-person/40-forget suites (docs/calibration.md). More items shrink both.
_SMALL_WORLD = WorldConfig(n_people=150, n_forget=80, n_qa=35, balanced=True)
_SMALL_SHAPE = ModelShape(d_model=64, n_layers=3, n_heads=4, d_mlp=256)

# lighter grids than the lenses' defaults (one steering scale and pooling on two layers, int4
# only, one relearn budget), so a preset's many audits fit in minutes
_LIGHT_GRIDS: dict[str, dict[str, Any]] = {
    "steering": {"scales": [1.0], "poolings": ["mean"], "max_layers": 2},
    "quantization": {"bits": [4], "schemes": ["sym"], "bitsandbytes": False},
    "relearn": {"steps": [10], "retain_variant": False, "side_effect_items": 24},
}

# ``audit calibrate --grids``: ``light`` sets the light grids above on top of a preset's lens
# options; ``default`` drops those lenses' options, so each runs its own default grid
# (steering: scales 0.5 and 1, last and mean pooling, up to 4 sites, ablation; quantization:
# 8, 4 and 3 bits, sym and asym, bitsandbytes; relearn: 5, 10 and 20 steps, with the
# retain-data variant, 48 side-effect items)
GRIDS = ("light", "default")


def with_grids(p: Preset, grids: str | None) -> Preset:
    """``p`` with its attack grids set to ``grids`` (``None``: the preset's own)."""
    if grids is None:
        return p
    if grids not in GRIDS:
        raise InputError(f"unknown grids '{grids}'; choose from {', '.join(GRIDS)}")
    opts = {k: v for k, v in p.lens_options.items() if k not in _LIGHT_GRIDS}
    if grids == "light":
        opts |= {k: {**p.lens_options.get(k, {}), **v} for k, v in _LIGHT_GRIDS.items()}
    return p.model_copy(update={"lens_options": opts})


# the open-answer world (issue 17: one birth town per person, no answer shared across items)
_OPEN = open_answer_suite(0)
_OPEN_WORLD = _OPEN.world.model_copy(update={"n_people": 200, "n_forget": 80, "n_qa": 60})

# the hard constructions of the closed worlds: all but lineage_b, the second in-basis
# reference, which only the open-answer world is audited against
_HARD_CLOSED = [c for c in HARD_CONSTRUCTIONS if c != "lineage_b"]

PRESETS: dict[str, Preset] = {
    # runs in CI: one seed per architecture, one small world, construction organisms only
    "small": Preset(
        seeds=[0], variants=[Variant(name="small", world=_SMALL_WORLD, shape=_SMALL_SHAPE,
                                     train=TrainConfig(steps=800))],
        methods=False,
        # issue 18: one mid-network suppression (block 1 of 3 trained alone) beside the
        # end-of-network ones
        constructions=[*CONSTRUCTIONS, "mid_block"],
        lenses=["behavior", "linear_probe", "logit_lens", "steering", "quantization", "relearn"],
        lens_options=_LIGHT_GRIDS,
        # without a reference: the never-trained models and the SUPPRESSED-truth constructions
        # (what the test asserts on), not the NOT_UNLEARNED ones (behavior alone labels them),
        # to keep CI within its time budget
        no_reference_truths=["DELETED", "SUPPRESSED"],
    ),
    "default": Preset(
        # three seeds, each with its own world and model shape (people, attributes, width,
        # depth), × two architectures: 6 suites with the GA/GradDiff/NPO/RMU organisms at two
        # strengths, plus the open-answer world on seed 0 (2 suites); every lens but the SAE
        # lens (a survival diagnostic on these worlds, docs/lenses.md), each at its default
        # grid, the strength users get (issue 18; ``--grids light`` for the light ones).
        seeds=[0, 1, 2],
        # every construction, issue 18's hard ones too (mid-network suppression, mid-layer RMU
        # flood, inverted answers, lineage reference)
        constructions=[*CONSTRUCTIONS, *_HARD_CLOSED],
        # base trained retain-only first, then retain + forget: lineage is B's own phase-1
        # checkpoint continued on retain only (issue 18), not a same-initialisation retrain
        two_phase_base=True,
        # every closed-answer world is the small preset's: 150 people, 80 forget people (240
        # items; 160 with two attributes), answers balanced within each group. The 40-60-person
        # unbalanced worlds of the first default-preset run left never-trained models DELETED in
        # 5 of 24 (docs/calibration.md): the prior over values and 120 items put one reading
        # just outside the ±0.15 band. Checked on seeds 100-102 before seeds 0-2 were run.
        variants=[
            Variant(name="people150", world=_SMALL_WORLD, shape=_SMALL_SHAPE, train=TrainConfig(steps=800),
                    seeds=[0]),
            Variant(name="wide", world=_SMALL_WORLD,
                    shape=ModelShape(d_model=128, n_layers=3, n_heads=4, d_mlp=512), train=TrainConfig(steps=800),
                    seeds=[1]),
            Variant(name="deep-two-attributes", world=_SMALL_WORLD.model_copy(update={"attributes": ["city", "job"]}),
                    shape=ModelShape(d_model=64, n_layers=5, n_heads=4, d_mlp=256), train=TrainConfig(steps=800),
                    seeds=[2]),
            # issue 18: the open-answer world (audit.lab.organisms.open_answer_suite: birth_town only),
            # with 80 forget people rather than its 40 (one item per person). Every construction
            # builds there; reference_skewed, which needs a closed attribute, is skipped by build_suite
            # Its construction and never-trained organisms are audited a second time against
            # lineage_b, a never-trained reference in B's basis, as open-unlearning's TOFU audits
            # use retain90 (fine-tuned from the same base): only such a reference lets B's head
            # read U's trunk (docs/calibration.md, "Open answers against a reference in B's basis")
            Variant(name="open-answers", world=_OPEN_WORLD, shape=_OPEN.shape, train=TrainConfig(steps=800),
                    head_only_steps=_OPEN.head_only_steps, seeds=[0],
                    constructions=[*CONSTRUCTIONS, *HARD_CONSTRUCTIONS], extra_references=["lineage_b"]),
        ],
        lenses=["behavior", "linear_probe", "logit_lens", "steering", "quantization", "relearn", "leak_at_k",
                "similarity"],
    ),
}


def _torch_version() -> str:
    import torch

    return torch.__version__


def _auroc(pos: list[float], neg: list[float]) -> float | None:
    """AUROC of a score that should be higher for ``pos`` (scikit-learn's roc_auc_score)."""
    if not pos or not neg:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), [*pos, *neg]))


def _lens_score(res: dict[str, Any]) -> float | None:
    """A lens's own deletion score: 1 − its largest informative recovery (None if none)."""
    if res.get("error"):
        return None
    vals = [r["value"] for r in res.get("recoveries", [])
            if r["informative"] and math.isfinite(r["value"]) and r.get("side_effect_ok") is not False]
    return float(min(1.0, max(0.0, 1.0 - max(vals)))) if vals else None


def _never_trained(r: dict[str, Any]) -> bool:
    """A never-trained model audited as U: DELETED truth, role ``reference``.

    The lineage reference (role ``lineage_reference``) is DELETED truth too, and counts in
    the confusion matrix and the AUROCs as such, but is not a never-trained null: it shares
    B's initialisation.
    """
    return r["truth"] == "DELETED" and r.get("role") == "reference"


TRUTH_SOURCES = ("construction", "behaviour")


def truth_source(r: dict[str, Any]) -> str | None:
    """Where a row's truth label comes from (None: no truth, a method organism).

    ``behaviour``: NOT_UNLEARNED truth, decided by measuring behaviour with SPEC §5's own
    rule on the audited items and N (the no-op, and constructions relabelled because they
    stopped short), so the verdict's behaviour lens matches it almost by definition.
    ``construction``: DELETED (never-trained models, the lineage reference) and SUPPRESSED
    (constructions that did unlearn behaviour): truth the construction alone guarantees.
    """
    if r["truth"] is None:
        return None
    return "behaviour" if r["truth"] == "NOT_UNLEARNED" else "construction"


def _table(rows: list[dict[str, Any]], *, by_source: bool = True) -> dict[str, Any]:
    """Confusion matrix, per-label precision/recall, never-trained misses, AUROCs, dangerous errors.

    With ``by_source``, ``by_truth_source`` holds the same table over each
    :func:`truth_source`'s rows alone.
    """
    truth_rows = [r for r in rows if r["truth"] is not None]
    confusion = {t: {v: 0 for v in LABELS} for t in ("DELETED", "SUPPRESSED", "NOT_UNLEARNED")}
    for r in truth_rows:
        confusion[r["truth"]][r["verdict"]] += 1
    correct = sum(r["truth"] == r["verdict"] for r in truth_rows)
    deleted = [r for r in truth_rows if r["truth"] == "DELETED"]
    suppressed = [r for r in truth_rows if r["truth"] == "SUPPRESSED"]
    per_lens = {}
    lenses = sorted({k for r in truth_rows for k in r.get("lens_scores", {})})
    for lens in lenses:
        pos = [r["lens_scores"][lens] for r in deleted if r["lens_scores"].get(lens) is not None]
        neg = [r["lens_scores"][lens] for r in suppressed if r["lens_scores"].get(lens) is not None]
        per_lens[lens] = {"auroc": _auroc(pos, neg), "n_deleted": len(pos), "n_suppressed": len(neg)}
    per_label = {}
    for lab in confusion:
        n_truth = sum(r["truth"] == lab for r in truth_rows)
        n_called = sum(r["verdict"] == lab for r in truth_rows)
        hit = confusion[lab][lab]
        per_label[lab] = {"precision": hit / n_called if n_called else None,
                          "recall": hit / n_truth if n_truth else None, "n_truth": n_truth, "n_called": n_called}
    nt = [r for r in truth_rows if _never_trained(r)]
    out = {
        "n_construction": len(truth_rows),
        "n_correct": correct,
        "accuracy": correct / len(truth_rows) if truth_rows else None,
        "suppressed_called_deleted": sum(r["truth"] == "SUPPRESSED" and r["verdict"] == "DELETED" for r in truth_rows),
        "confusion": confusion,
        "per_label": per_label,
        "never_trained": {
            "n": len(nt),
            "labels": {lab: sum(r["verdict"] == lab for r in nt) for lab in LABELS},
            # a model that never saw the forget set, called SUPPRESSED or NOT_UNLEARNED: the
            # error that fails a team whose unlearning is perfect
            "called_suppressed_or_not_unlearned": sum(r["verdict"] in ("SUPPRESSED", "NOT_UNLEARNED") for r in nt),
            "organisms": [{k: r.get(k) for k in ("suite", "organism", "verdict", "reason")} for r in nt],
        },
        "deletion_score_auroc": _auroc([r["deletion_score"] for r in deleted], [r["deletion_score"] for r in suppressed]),
        "per_lens_auroc": per_lens,
        "wrong": [{k: r.get(k) for k in ("suite", "organism", "truth", "verdict", "reason")}
                  for r in truth_rows if r["truth"] != r["verdict"]],
    }
    if by_source:
        out["by_truth_source"] = {src: _table([r for r in truth_rows if truth_source(r) == src], by_source=False)
                                  for src in TRUTH_SOURCES}
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The with-reference table (rows without ``"reference": False``) and, kept apart, the no-reference one.

    The top level summarises the audits with N (confusion matrix, per-label precision and
    recall, never-trained models called SUPPRESSED/NOT_UNLEARNED, AUROCs, the dangerous-error
    count); ``no_reference`` holds the same for the audits with N withheld (None if none ran).
    Each table's ``by_truth_source`` reports apart (issue 18) the rows whose truth was measured
    from behaviour (``behaviour``: NOT_UNLEARNED) and those whose truth comes from the
    construction alone (``construction``: DELETED and SUPPRESSED), see :func:`truth_source`.
    """
    without = [r for r in rows if r.get("reference", True) is False]
    main = [r for r in rows if r.get("reference", True) is not False and r.get("reference_name") in (None, "reference_a")]
    out = _table(main)
    others = sorted({r["reference_name"] for r in rows if r.get("reference_name") not in (None, "reference_a")})
    out["by_reference"] = {n: _table([r for r in rows if r.get("reference_name") == n]) for n in others}
    out["no_reference"] = _table(without) if without else None
    return out


def _attack(log_lenses: dict[str, Any], name: str) -> float | None:
    res = log_lenses.get(name)
    if not res or res.get("error") or not res.get("recoveries"):
        return None
    vals = [r["value"] for r in res["recoveries"] if math.isfinite(r["value"])]
    return max(vals) if vals else None


def suite_config(variant: Variant, arch: str, seed: int, p: Preset) -> SuiteConfig:
    """The organism suite of one (variant, architecture, seed) of preset ``p``."""
    cfg = SuiteConfig(world=variant.world, shape=variant.shape.model_copy(update={"arch": arch}),
                      train=variant.train, seed=seed, methods=p.methods,
                      constructions=p.constructions if variant.constructions is None else variant.constructions,
                      two_phase_base=p.two_phase_base)
    if variant.head_only_steps is not None:
        cfg = cfg.model_copy(update={"head_only_steps": variant.head_only_steps})
    return cfg


def _calibrate_suite(variant_d: dict[str, Any], arch: str, seed: int, suites: str, out: str,
                     preset_d: dict[str, Any], threads: int | None, resume: bool = False,
                     on_log_written: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Build (or reuse) one suite and audit its organisms; returns its run record and rows.

    Runs in a Ray worker under ``--jobs`` > 1; also writes ``OUT/<suite>/calibration_rows.json``,
    so the suites already finished are kept when a long calibration is stopped. With ``resume``,
    organisms whose audits finished under the same inputs and settings are read back
    (:func:`audit.lab.suite.audit_suite`).
    """
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)  # numpy / scikit-learn BLAS too, or each job takes every core
    variant, p = Variant(**variant_d), Preset(**preset_d)
    tag = f"{variant.name}-{arch}-s{seed}"
    cfg = suite_config(variant, arch, seed, p)
    suite_dir, out_dir = Path(suites) / tag, Path(out) / tag
    t = time.perf_counter()
    log.info("calibration suite %s", tag)
    man = build_suite(suite_dir, cfg)
    t_build = time.perf_counter() - t
    kw: dict[str, Any] = {"lenses": p.lenses, "seed": seed, "options": {"lens_options": p.lens_options},
                          "resume": resume, "on_log_written": on_log_written}
    t = time.perf_counter()
    main_only = None if p.audit_methods else [k for k, e in man["checkpoints"].items() if e["role"] != "method"]
    audited = [(out_dir, a) for a in audit_suite(suite_dir, out_dir, only=main_only, **kw)]
    run = {"suite": tag, "arch": arch, "seed": seed, "variant": variant.name,
           "build_s": round(t_build, 1), "audit_s": round(time.perf_counter() - t, 1),
           "build_total_s": man.get("total_s"), "build_timings_s": man.get("timings_s")}
    if p.no_reference:  # the same organisms, N withheld
        t = time.perf_counter()
        nr_dir = out_dir / "no_reference"
        only = None if p.no_reference_truths is None else [
            k for k, e in man["checkpoints"].items() if e["truth"] in p.no_reference_truths
            and (e["truth"] is not None or e["role"] == "method")]
        if only != []:
            audited += [(nr_dir, a) for a in audit_suite(suite_dir, nr_dir, reference=False, only=only, **kw)]
        run["audit_no_reference_s"] = round(time.perf_counter() - t, 1)
    for name in variant.extra_references:  # the same organisms against another never-trained model
        t = time.perf_counter()
        only = [k for k, e in man["checkpoints"].items() if e["truth"] is not None and e["role"] != "method"]
        ref_dir = out_dir / f"vs_{name}"
        audited += [(ref_dir, a) for a in audit_suite(suite_dir, ref_dir, reference_name=name, only=only, **kw)]
        run[f"audit_vs_{name}_s"] = round(time.perf_counter() - t, 1)
    rows = []
    for d, a in audited:
        lg = read_log(d / a["organism"] / "audit_log.json")
        lenses = {k: v.model_dump() for k, v in lg.lenses.items()}
        entry = man["checkpoints"][a["organism"]]
        rows.append({
            "suite": tag, "arch": arch, "seed": seed, "variant": variant.name,
            "organism": a["organism"], "role": entry["role"], "truth": a["truth"],
            "truth_source": truth_source({"truth": a["truth"]}), "reference": a["reference"],
            "reference_name": a.get("reference_name"),
            "verdict": a["verdict"], "deletion_score": a["deletion_score"], "reason": a["reason"],
            "lens_scores": {k: _lens_score(v) for k, v in lenses.items() if k != "behavior"},
            "relearn_recovery": _attack(lenses, "relearn"),
            "quantization_recovery": _attack(lenses, "quantization"),
            "forget_score": entry["forget_score"], "retain_score": entry["retain_score"],
            "audit_s": lg.timings.get("total"),
        })
    done = {"run": run, "rows": rows}
    atomic_write_text(out_dir / "calibration_rows.json", json.dumps(done, indent=2))
    return done


def calibrate(out: str | Path, preset: str | Preset = "small", *, suites: str | Path | None = None,
              jobs: int = 1, threads: int | None = None, no_reference: bool | None = None,
              grids: str | None = None, resume: bool = False,
              on_log_written: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Build/reuse suites, audit every organism, write ``calibration.json``.

    ``calibration.html`` is the caller's to render (``cli.py`` does, from the returned result;
    this library never imports ``reports``).

    Args:
        out: output folder (per-organism audit logs and the calibration files).
        preset: ``small`` (CI), ``default``, or a :class:`Preset`.
        suites: where suites are built/reused (default ``OUT/suites``).
        jobs: suites built and audited at once, each a task on a local Ray instance of
            ``jobs × threads`` CPUs (:func:`audit.sweep.ray_map`, the engine of ``audit sweep``);
            1: in this process.
        threads: torch threads per job (default ``cpu_count // jobs`` with ``jobs`` > 1,
            torch's own setting otherwise).
        no_reference: also audit every organism with N withheld, for the no-reference table
            (default: the preset's ``no_reference``, on in every shipped preset).
        grids: the attack grids of the steering, quantization and relearn lenses: ``light``
            (one steering scale on two sites with mean pooling, int4 sym only, one 10-step
            relearn budget without the retain variant) or ``default`` (each lens's default
            options, the strength ``audit run`` uses); ``None``: the preset's own (light in
            the small preset, default in the default preset). Running one preset both ways
            with the same ``suites`` gives the two tables side by side on the same organisms.
        resume: continue a stopped calibration into the same ``out``: an organism whose
            ``audit_log.json`` finished with the same settings, checkpoint and item contents,
            policy and package version is read back, not audited again; the others resume
            from their finished lenses. The timings then cover this session only.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InputError(f"unknown calibration preset '{preset}'; choose from {', '.join(PRESETS)}")
        name, p = preset, PRESETS[preset]
    else:
        name, p = "custom", preset
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if no_reference is not None:
        p = p.model_copy(update={"no_reference": no_reference})
    p = with_grids(p, grids)
    out = Path(out)
    suites = Path(suites) if suites is not None else out / "suites"
    t0 = time.perf_counter()
    tasks = [(variant, arch, seed) for variant in p.variants for arch in p.archs for seed in p.seeds
             if variant.seeds is None or seed in variant.seeds]
    if not tasks:
        raise InputError("the calibration preset selects no (variant, architecture, seed) suite")
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    args = [(v.model_dump(), arch, seed, str(suites), str(out), p.model_dump(), threads, resume, on_log_written)
            for v, arch, seed in tasks]
    if jobs == 1:
        done = [_calibrate_suite(*a) for a in args]
    else:  # on Ray, the engine of `audit sweep`: a local instance of jobs × threads CPUs
        from audit.sweep import ray_map

        log.info("calibrating %d suites in %d Ray workers (%s torch threads each)", len(args), jobs, threads)
        per = threads or 1  # set above whenever jobs > 1
        done = ray_map(_calibrate_suite, args, cpus_per_call=per, num_cpus=jobs * per)
    runs = [d["run"] for d in done]
    rows = [r for d in done for r in d["rows"]]
    result = {
        "preset": name,
        "grids": grids or "preset",
        "config": p.model_dump(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summarise(rows),
        "methods": [r for r in rows if r["role"] == "method" and r.get("reference", True) is not False],
        "methods_no_reference": [r for r in rows if r["role"] == "method" and r.get("reference", True) is False],
        "rows": rows,
        "runs": runs,
        "total_s": round(time.perf_counter() - t0, 1),
        "resumed": resume,
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": _torch_version(), "jobs": jobs, "torch_threads_per_job": threads},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "calibration.json", json.dumps(result, indent=2))
    return result
