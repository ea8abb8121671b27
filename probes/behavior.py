"""Behavior lens: the model's own answer log-probs and greedy answers (SPEC §3)."""

from __future__ import annotations

import numpy as np

from audit.context import AuditContext
from audit.lensdata import BehaviorConfig, BehaviorData
from audit.registry import register_lens
from audit.schema import LensResult
from audit.scoring import candidate_logprobs_to_result, soft_share
from audit.verdict import RANKING_PRIOR_REMOVED


@register_lens("behavior", BehaviorConfig, BehaviorData, "ranking of the answer among candidates, and greedy exact match")
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
    # the ranking readings are read on prior-calibrated candidate log-probs: each model's
    # log-probs minus its own with the subject replaced by names no model saw, so a model that
    # prefers some answer values whatever the subject (a skewed prior) reads at chance
    # (docs/verdict.md, "knowledge-free nulls")
    cal = {r: ctx.calibrated(r, "forget") for r in ctx.roles} if cfg.prior_calibration else {}
    ranked = {r: (candidate_logprobs_to_result(cal[r], s.greedy).correct if cal else s.correct) for r, s in f.items()}
    soft = {r: (soft_share(cal[r], temps[r]) if cal else s.soft_at(temps[r])) for r, s in f.items()}
    done = np.array([x is not None for x in ctx.placeholder_items("forget")], dtype=bool) if cal else np.zeros(0, bool)
    n_cal = int(done.sum())
    # a calibrated model without knowledge ranks at chance; uncalibrated items keep the answer prior
    null = np.where(done, ctx.chance("forget"), ctx.null("forget")) if n_cal else None
    null_name = "chance after removing the prior" if null is not None else "answer prior"
    data["prior_calibration"] = {"items": n_cal, "of": len(ctx.items["forget"]), "enabled": bool(cfg.prior_calibration)}
    if cal:
        data["prior_calibration"]["score"] = {r: float(np.mean(v)) for r, v in ranked.items()}
    raw_rank = ctx.recovery({r: s.correct for r, s in f.items()}, reading="ranking", n_boot=cfg.n_boot)
    recs = []
    if cal:
        # what U says, as it is: read only by the NOT_UNLEARNED rule (kind "gate"), since a
        # prior over answer values moves it without knowledge (docs/verdict.md)
        raw_rank.kind = "gate"
        recs += [raw_rank, ctx.recovery(ranked, reading=RANKING_PRIOR_REMOVED, n_boot=cfg.n_boot, null=null,
                                        null_name=null_name)]
    else:
        recs.append(raw_rank)
    recs += [
        # the ranking read continuously (the answer's probability share among the candidates,
        # prior removed where calibrated): tight enough a CI to show U inside the deletion band
        # at each model's own temperature, fitted on retain items, so a model that is only
        # more or less peaked (a scaled unembedding) reads the same (docs/verdict.md)
        ctx.recovery(soft, reading="ranking (soft)", n_boot=cfg.n_boot, null=null, null_name=null_name),
        # without N, greedy's knowledge-free end point is how often U greedily emits one
        # distractor: a model naming a candidate from its prior alone names the answer as often
        ctx.recovery({r: s.greedy for r, s in f.items()}, reading="greedy", n_boot=cfg.n_boot,
                     null=gd,
                     null_name="U's greedy rate on one distractor"),
    ]
    for i, it in enumerate(ctx.items["forget"]):
        row: dict[str, str | bool | float | None] = {"id": it.id, "prompt": it.prompt, "answer": it.answer, "subject": it.subject, "attribute": it.attribute}
        for role, s in f.items():
            row[f"{role}_correct"] = bool(s.correct[i])
            row[f"{role}_greedy"] = bool(s.greedy[i])
            row[f"{role}_margin"] = round(float(s.margins[i]), 4)
        data["items"].append(row)
    data["per_item"] = {
        "ids": [it.id for it in ctx.items["forget"]],
        "readings": {
            "ranking": {role: s.correct.astype(float).tolist() for role, s in f.items()},
            **({RANKING_PRIOR_REMOVED: {role: np.asarray(ranked[role], dtype=float).tolist() for role in f}}
               if cal else {}),
            "ranking (soft)": {role: np.asarray(soft[role]).round(6).tolist() for role in f},
            "greedy": {role: s.greedy.astype(float).tolist() for role, s in f.items()},
        },
    }
    if not ctx.has_reference:  # the end points used, so group verdicts re-score with the same ones
        data["per_item"]["readings"]["greedy"]["null"] = gd.tolist()
        if null is not None:
            data["per_item"]["readings"][RANKING_PRIOR_REMOVED]["null"] = null.tolist()
            data["per_item"]["readings"]["ranking (soft)"]["null"] = null.tolist()
    notes = ctx.no_reference_notes(
        "the knowledge-free end points are estimates: chance after removing each model's prior (ranking, where "
        "items name a subject; elsewhere the answer prior of the item set) and U's greedy rate on one distractor "
        "(greedy)")
    return LensResult(name="behavior", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
