"""Behavior lens: the model's own answer log-probs and greedy answers (SPEC §3)."""

from __future__ import annotations

from audit.context import AuditContext
from audit.registry import LensConfig, register_lens
from audit.schema import LensResult
from audit.stats import recovery


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
    ref = f.get("reference")
    recs = [
        recovery(f["base"].correct, f["unlearned"].correct,
                 ctx.end_point(ref.correct if ref else None, "forget"),
                 reading="ranking", min_power=ctx.config.min_power, n_boot=cfg.n_boot, seed=ctx.seed),
        # greedy chance is ~0 for free generation; without N the end point is 0
        recovery(f["base"].greedy, f["unlearned"].greedy,
                 ref.greedy if ref else f["base"].greedy * 0.0,
                 reading="greedy", min_power=ctx.config.min_power, n_boot=cfg.n_boot, seed=ctx.seed),
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
            "greedy": {role: s.greedy.astype(float).tolist() for role, s in f.items()},
        },
    }
    notes = [] if ref else ["no reference model: the end point is chance (ranking) and 0 (greedy)"]
    return LensResult(name="behavior", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
