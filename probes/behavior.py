"""Behavior lens: the model's own answer log-probs and greedy answers (SPEC §3)."""

from __future__ import annotations

import numpy as np

from audit.context import AuditContext
from audit.registry import LensConfig, register_lens
from audit.schema import LensResult


class BehaviorConfig(LensConfig):
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""


@register_lens("behavior", BehaviorConfig, "ranking of the answer among candidates, and greedy exact match")
def behavior(ctx: AuditContext, cfg: BehaviorConfig) -> LensResult:
    """Ranking and greedy recovery of U on forget items; retain scores beside them."""
    data: dict = {"forget": {}, "retain": {}, "items": []}
    for item_set in ("forget", "retain"):
        for role in ctx.roles:
            s = ctx.score(role, item_set)
            data[item_set][role] = {"score": s.score, "greedy": s.greedy_score, "mean_margin": float(s.margins.mean())}
    f = {role: ctx.score(role, "forget") for role in ctx.roles}
    temps = {r: ctx.temperature(r) for r in ctx.roles}
    data["temperature"] = {r: round(t, 4) for r, t in temps.items()}
    gd = f["unlearned"].greedy_distractors
    if gd is None:
        gd = np.zeros(len(ctx.items["forget"]))
    recs = [
        ctx.recovery({r: s.correct for r, s in f.items()}, reading="ranking", n_boot=cfg.n_boot),
        # the same ranking read continuously (the answer's probability share among the
        # candidates): tight enough a CI to show U inside the deletion band (docs/verdict.md)
        # at each model's own temperature, fitted on retain items, so a model that is only
        # more or less peaked (a scaled unembedding) reads the same (docs/verdict.md)
        ctx.recovery({r: s.soft_at(temps[r]) for r, s in f.items()}, reading="ranking (soft)", n_boot=cfg.n_boot),
        # without N, greedy's knowledge-free end point is how often U greedily emits one
        # distractor: a model naming a candidate from its prior alone names the answer as often
        ctx.recovery({r: s.greedy for r, s in f.items()}, reading="greedy", n_boot=cfg.n_boot,
                     null=gd,
                     null_name="U's greedy rate on one distractor"),
    ]
    for i, it in enumerate(ctx.items["forget"]):
        row = {"id": it.id, "prompt": it.prompt, "answer": it.answer, "subject": it.subject, "attribute": it.attribute}
        for role, s in f.items():
            row[f"{role}_correct"] = bool(s.correct[i])
            row[f"{role}_greedy"] = bool(s.greedy[i])
            row[f"{role}_margin"] = round(float(s.margins[i]), 4)
        data["items"].append(row)
    data["per_item"] = {
        "ids": [it.id for it in ctx.items["forget"]],
        "readings": {
            "ranking": {role: s.correct.astype(float).tolist() for role, s in f.items()},
            "ranking (soft)": {role: s.soft_at(temps[role]).round(6).tolist() for role, s in f.items()},
            "greedy": {role: s.greedy.astype(float).tolist() for role, s in f.items()},
        },
    }
    if not ctx.has_reference:  # the end points used, so group verdicts re-score with the same ones
        data["per_item"]["readings"]["greedy"]["null"] = gd.tolist()
    notes = [] if ctx.has_reference else [
        "no reference model: the knowledge-free end points are estimates: the answer prior of the item set "
        "(ranking) and U's greedy rate on one distractor (greedy)"]
    return LensResult(name="behavior", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
