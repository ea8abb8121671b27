"""The verdict (SPEC §5; docs/verdict.md): DELETED / SUPPRESSED / NOT_UNLEARNED / INCONCLUSIVE.

The rules, in the order they are applied:

1. The behavior lens must have run and be informative (B knows the forget set better
   than the knowledge-free end point), else INCONCLUSIVE.
2. **NOT_UNLEARNED**: behavior recovery ≥ ``behavior_recovery`` on greedy answers or on
   the ranking among candidates, both as U says them (the ranking's kind ``gate``).
3. **SUPPRESSED** (recovered): an informative, side-effect-free reading of another lens
   recovers ≥ ``tau_s`` above its controls with the excess's CI above 0, and the
   recovery's CI lies above the deletion band (its lower end > ``tau_d``). Behavior's
   ranking with each model's prior over answer values removed counts as such a reading
   when U's ranking as it says it is inside the band (≤ ``tau_d``).
4. **SUPPRESSED** (inverted): U ranks the true answer *below* the never-trained end point,
   beyond the deletion band (ranking CI upper end < −``tau_d``, read with each model's
   prior removed), while retain is intact: it still tells the answer apart, to avoid it.
5. **DELETED**: every condition of :func:`_deletion_blockers` holds: a reference was given
   (unless the policy allows otherwise), no lens failed, retain did not collapse, the
   required lenses are informative, behavior is *inside* the band ±``tau_d`` (its
   continuous ranking reading's CI; the 0/1 readings not outside it), every informative
   primary reading's CI is inside the band on the high side and not beyond it on the low
   side, and every scan's point estimate is inside the band.
6. **INCONCLUSIVE** otherwise, saying which condition failed.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit.caveats import NO_REFERENCE, NO_REFERENCE_VERDICT
from audit.lensdata import (
    BehaviorData,
    LeakAtKConfig,
    LensConfig,
    LensData,
    LinearProbeConfig,
    LogitLensData,
    QuantizationConfig,
    RelearnConfig,
    RelearnData,
    SAELensConfig,
    SteeringConfig,
    lens_data,
    models_for,
)
from audit.schema import Evidence, LensResult, Recovery, Verdict

REQUIRED_FOR_DELETED = ("linear_probe", "relearn", "quantization")

# the behavior readings that decide NOT_UNLEARNED (SPEC §5): what U says, as it is; the
# ranking readings that can show an inverted U (with each model's prior over answer values
# removed, where the behavior lens read one: a prior alone must not look like avoidance)
_BEHAVIOR_GATE = ("ranking", "greedy")
RANKING_PRIOR_REMOVED = "ranking (prior removed)"
"""The behavior lens's ranking with each model's prior over answer values removed."""
_RANKING = ("ranking", RANKING_PRIOR_REMOVED, "ranking (soft)")
_HARD_RANKING = ("ranking", RANKING_PRIOR_REMOVED)
_SOFT = "ranking (soft)"
# kinds the verdict never reads as evidence of knowledge or its absence (schema.Recovery.kind)
_UNREAD = ("gate", "support")


class Thresholds(BaseModel):
    """Decision thresholds (a policy file can override them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    behavior_recovery: float = 0.5
    """Behaviour recovery (ranking or greedy) at or above this means U still knows (NOT_UNLEARNED)."""
    tau_s: float = 0.3
    """Excess recovery over the controls of an informative lens that shows suppression."""
    tau_d: float = 0.25
    """Half-width of the deletion band around the never-trained end point, in recovery units.
    DELETED needs every reading inside ±tau_d; a recovery CI entirely above it (with an excess
    ≥ tau_s) or a ranking CI entirely below −tau_d is SUPPRESSED. It is set at the spread
    between never-trained models measured in calibration (up to about 0.2 on the default
    preset's wider and deeper worlds), so one reference's arbitrary differences from another
    cannot produce either label; chosen on seeds 100-102 by the rule of docs/verdict.md."""
    retain_collapse: float = 0.2
    """Retain-score drop of U vs B that counts as a collapse (never DELETED then)."""
    required_for_deleted: tuple[str, ...] = REQUIRED_FOR_DELETED
    """Lenses that must be informative before DELETED can be said."""
    deleted_without_reference: bool = False
    """Allow DELETED when no never-trained reference was given. Off: without one the end
    point is an estimate (docs/verdict.md), which cannot certify that nothing is left."""


def _excess(r: Recovery) -> tuple[float, float, float]:
    """(excess, lower, upper) of a recovery over its control threshold, if any."""
    c = r.control_threshold or 0.0
    return r.value - c, r.ci_low - c, r.ci_high - c


def _ev(lens: str, r: Recovery) -> Evidence:
    return Evidence(lens=lens, reading=r.reading, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high)


def _fmt(r: Recovery) -> str:
    return f"{r.value:.2f} (CI {r.ci_low:.2f}–{r.ci_high:.2f})"


def _list(xs: list[Any]) -> str:
    return ", ".join(str(x) for x in xs)


def budget(res: LensResult) -> str:
    """What a lens tried, in a few words (steps, bits, scales, samples ...), from its config."""
    cls = models_for(res.name)[0]
    if cls is LensConfig:  # a lens outside audit.lensdata: its config is not known here
        return "default settings"
    c = cls.model_validate(res.config)
    if isinstance(c, RelearnConfig):
        d = lens_data(res, RelearnData)
        if d.method == "lora":
            how = f"LoRA rank {d.lora.rank if d.lora else None} at lr {d.lr}"
        else:
            how = f"lr {c.lr}"
        return f"{_list(c.steps)} steps at {how}, {c.seeds} seed(s)"
    if isinstance(c, QuantizationConfig):
        return f"{_list(c.bits)} bits ({_list(c.schemes)})"
    if isinstance(c, SteeringConfig):
        return f"scales {_list(c.scales)}, ≤ {c.max_layers} sites, {c.n_controls} controls"
    if isinstance(c, SAELensConfig):
        return f"scales {_list(c.scales)}, {c.n_controls} controls"
    if isinstance(c, LeakAtKConfig):
        return f"{c.n} samples at T={c.temperature}"
    if isinstance(c, LinearProbeConfig):
        return f"{c.position}-token probes, every layer"
    if res.name == "logit_lens":
        return "every layer"
    return "default settings"


def retain_drop(lenses: dict[str, LensResult]) -> float | None:
    """Retain-score drop of U vs B (from the behavior lens), or None if unknown."""
    beh = lenses.get("behavior")
    if beh is None or beh.error:
        return None
    r = lens_data(beh, BehaviorData).retain
    if not r:
        return None
    return float(r["base"].score - r["unlearned"].score)


def _has_reference(recs: list[Recovery]) -> bool:
    return all(r.end_point == "reference" for r in recs)


def trunk_stand_in(lenses: dict[str, LensResult]) -> tuple[bool, str]:
    """Whether the logit lens stands in for an uninformative linear probe in DELETED's
    requirements, and why (docs/verdict.md, "When the linear probe cannot read B").

    Where B's trunk holds no linearly readable trace of the facts beyond N's (open answers
    kept mostly in B's final layers and head), the probe is uninformative and cannot bound
    anything. The logit lens reads every layer of U through a head; it stands in only where
    no head can have been changed to hide what U's trunk keeps: U shares no layer with B
    (B's head reads U's retain answers at no layer where it reads B's own,
    ``outside_every_layer``), or B's head reads U against references in B's basis (the
    base-head readings count)."""
    ll = lenses.get("logit_lens")
    if ll is None or ll.error is not None:
        return False, ""
    if any(r.informative and r.reading.startswith("base head") for r in ll.recoveries):
        return True, ("the linear probe is uninformative; the logit lens stands in: B's head reads U and "
                      "references in B's basis at every layer")
    u = lens_data(ll, LogitLensData).base_head_basis.get("unlearned")
    if u is not None and u.outside_every_layer:
        return True, ("the linear probe is uninformative; the logit lens stands in: U shares no layer with B "
                      "(at every layer B's head reads U's retain answers at under half of what it reads from B's own), so U's "
                      "own head reads U's own trunk")
    return False, ("the linear probe is uninformative and the logit lens cannot stand in for it: U shares a layer's "
                   "basis with B, so a head changed to hide the facts could leave them in U's trunk, and only B's "
                   "head against a reference in B's basis (e.g. B's pre-forget checkpoint trained on retain only) "
                   "could read them")


def _deletion_blockers(
    lenses: dict[str, LensResult], informative: list[tuple[str, Recovery]], beh: LensResult, th: Thresholds,
) -> list[tuple[str, list[Evidence]]]:
    """Every reason DELETED cannot be said, each with its evidence (empty: DELETED holds)."""
    out: list[tuple[str, list[Evidence]]] = []
    d = th.tau_d
    failed = {n: r.error for n, r in lenses.items() if r.error is not None}
    if failed:
        out.append(("lenses failed, so not every lens was tried: "
                    + "; ".join(f"{n} ({e})" for n, e in sorted(failed.items())), []))
    all_recs = [r for res in lenses.values() if res.error is None for r in res.recoveries]
    if not th.deleted_without_reference and not _has_reference(all_recs):
        out.append((f"{NO_REFERENCE} was given: {NO_REFERENCE_VERDICT} (docs/verdict.md): an estimate "
                    "cannot certify that nothing is left", []))
    drop = retain_drop(lenses)
    if drop is not None and drop > th.retain_collapse:
        out.append((f"retain collapsed (U's retain score fell by {drop:.2f} from B's), so deletion cannot be told "
                    "from damage", []))
    # behavior inside the band: the continuous ranking reading by its CI, the 0/1 readings
    # (too coarse for a tight CI on a few hundred items) not significantly outside it
    for r in beh.recoveries:
        if not (r.informative and math.isfinite(r.value)) or r.kind == "gate":
            continue
        if r.reading == _SOFT or (r.reading in _HARD_RANKING and not any(x.reading == _SOFT for x in beh.recoveries)):
            if r.ci_low < -d or r.ci_high > d:
                out.append((f"behavior ({r.reading}) {_fmt(r)} is not inside the deletion band ±{d}", [_ev("behavior", r)]))
        elif r.ci_low > d or r.ci_high < -d:
            out.append((f"behavior ({r.reading}) {_fmt(r)} is outside the deletion band ±{d}", [_ev("behavior", r)]))
    others = [(n, r) for n, r in informative if n != "behavior"]
    names = {n for n, r in others if r.kind == "primary"}
    missing = [x for x in th.required_for_deleted if x not in names]
    if "linear_probe" in missing and "logit_lens" in names:
        stands, why = trunk_stand_in(lenses)
        if stands:
            missing.remove("linear_probe")
        else:
            out.append((why, []))
    if missing:
        out.append((f"no informative result from {', '.join(missing)}, which DELETED requires", []))
    for n, r in others:
        if r.kind == "primary" and (r.ci_high > d or r.ci_high < -d):
            side = "above" if r.ci_high > d else "below"
            out.append((f"the {n} lens ({r.reading}) reads {_fmt(r)}, {side} the deletion band ±{d}", [_ev(n, r)]))
        # a scan is the best of several readings, its CI widened for the number compared: it
        # bounds by its point estimate, which must lie inside the band
        if r.kind == "scan" and abs(r.value) > d:
            out.append((f"the {n} lens scan ({r.reading}) reads {_fmt(r)}, outside the deletion band ±{d}",
                        [_ev(n, r)]))
    return out


def decide(lenses: dict[str, LensResult], th: Thresholds | None = None, scope: str = "forget set") -> Verdict:
    """Apply SPEC §5 (as refined in docs/verdict.md) to the lens results of one scope."""
    th = th or Thresholds()
    ok = {k: v for k, v in lenses.items() if v.error is None}
    beh = ok.get("behavior")
    # gate readings (what U says as it is) decide NOT_UNLEARNED only: they neither show nor
    # bound hidden knowledge; support readings are shown and never read
    informative: list[tuple[str, Recovery]] = [
        (name, r) for name, res in ok.items() for r in res.recoveries
        if r.informative and math.isfinite(r.value) and r.side_effect_ok is not False and r.kind not in _UNREAD
    ]
    top = max((r.value for _, r in informative), default=float("nan"))
    low = min((r.value for _, r in informative), default=float("nan"))
    # 1 - the largest recovery, and a U below N (|R| beyond the band) is no deletion either
    deletion = float(min(1.0, max(0.0, 1.0 - max(top, -low)))) if math.isfinite(top) else 0.0
    n_items = max((r.n_items for _, r in informative), default=0)

    def verdict(label, reason, ev):
        return Verdict(scope=scope, label=label, reason=reason, deletion_score=deletion, evidence=ev, n_items=n_items)

    if beh is None and lenses.get("behavior") is not None:
        return verdict("INCONCLUSIVE", f"the behavior lens failed, so it is unknown whether U still answers: "
                       f"{lenses['behavior'].error}", [])
    if beh is None:
        return verdict("INCONCLUSIVE", "the behavior lens did not run, so it is unknown whether U still answers", [])
    beh_recs = [r for r in beh.recoveries if r.informative and math.isfinite(r.value)]
    if not beh_recs:
        return verdict("INCONCLUSIVE", "the base model does not know the forget set well enough to audit it "
                       "(behavior is uninformative)", [_ev("behavior", r) for r in beh.recoveries])
    gate = [r for r in beh_recs if r.reading in _BEHAVIOR_GATE] or beh_recs
    hit = max(gate, key=lambda r: r.value)
    if hit.value >= th.behavior_recovery:
        what = "still picks the true answer among the candidates" if hit.reading == "ranking" else "still answers greedily"
        return verdict(
            "NOT_UNLEARNED",
            f"U {what}: {hit.reading} recovery {_fmt(hit)} (U {hit.score_unlearned:.0%}, base "
            f"{hit.score_base:.0%}, reference {hit.score_reference:.0%})",
            [_ev("behavior", hit)],
        )
    # behavior's prior-removed ranking can show suppression too: U whose ranking as it says it
    # is inside the band, but which tells the answer apart once its own prior over answer
    # values is taken out (a shift of its answers, e.g. a shifted subject embedding)
    says = [r for r in beh_recs if r.kind == "gate" and r.reading == "ranking"]
    quiet_output = bool(says) and says[0].value <= th.tau_d
    others = [(n, r) for n, r in informative
              if n != "behavior" or (quiet_output and r.reading == RANKING_PRIOR_REMOVED)]
    supp = [(n, r) for n, r in others if _excess(r)[0] >= th.tau_s and _excess(r)[1] > 0 and r.ci_low > th.tau_d]
    if supp:
        n, r = max(supp, key=lambda x: _excess(x[1])[0])
        ctrl = f", above the controls' 95th percentile {r.control_threshold:.2f}" if r.control_threshold is not None else ""
        return verdict(
            "SUPPRESSED",
            f"behavior is near the reference, but the {n} lens ({r.reading}) recovers {_fmt(r)} of the "
            f"knowledge{ctrl}: {r.score_unlearned:.0%} in U vs {r.score_reference:.0%} in the reference",
            [_ev(n, r) for n, r in sorted(supp, key=lambda x: -x[1].value)],
        )
    drop = retain_drop(lenses)
    inverted = [r for r in beh_recs if r.reading in _RANKING and r.kind != "gate" and r.ci_high < -th.tau_d]
    if inverted and (drop is None or drop <= th.retain_collapse):
        r = min(inverted, key=lambda x: x.ci_high)
        end = "a model that never learned it" if r.end_point == "reference" else f"the knowledge-free estimate ({r.end_point})"
        share = {"ranking": "ranks it first for",
                 RANKING_PRIOR_REMOVED: "ranks it first (its prior over answer values removed) for"}.get(
            r.reading, "gives it a probability share of")
        return verdict(
            "SUPPRESSED",
            f"U avoids the true answer: it {share} {r.score_unlearned:.0%} of items, {end} "
            f"{r.score_reference:.0%} (behavior {r.reading} recovery {_fmt(r)}, below the deletion band "
            f"−{th.tau_d}), while retain is intact; to avoid the answer it must still tell it apart",
            [_ev("behavior", x) for x in inverted],
        )
    blockers = _deletion_blockers(lenses, informative, beh, th)
    if not blockers:
        tried = "; ".join(f"{n} ({budget(res)})" for n, res in sorted(lenses.items()))
        primary = [(n, r) for n, r in informative if r.kind == "primary"]
        stand = ""
        if "linear_probe" in th.required_for_deleted and not any(
                n == "linear_probe" and r.kind == "primary" for n, r in informative):
            stand = f" ({trunk_stand_in(lenses)[1]})"
        return verdict("DELETED", f"no tested lens recovered the knowledge: every informative reading lies inside "
                       f"the deletion band ±{th.tau_d} around the never-trained model{stand} (lenses tried: {tried})",
                       [_ev(n, r) for n, r in primary])
    why = "; ".join(b for b, _ in blockers)
    ev = [e for _, es in blockers for e in es] or [_ev(n, r) for n, r in others]
    return verdict("INCONCLUSIVE", f"behavior is near the reference, but not DELETED: {why}", ev)


def retain_utility(lenses: dict[str, LensResult], th: Thresholds | None = None) -> dict:
    """Retain score of U vs B; flags a collapse (deletion then can't be told from damage)."""
    th = th or Thresholds()
    beh = lenses.get("behavior")
    if beh is None or beh.error:
        return {}
    r = lens_data(beh, BehaviorData).retain
    drop = r["base"].score - r["unlearned"].score
    return {"base": r["base"].score, "unlearned": r["unlearned"].score, "drop": drop,
            "collapsed": drop > th.retain_collapse}


def without_per_item(lenses: dict[str, LensResult], data: dict[str, LensData] | None = None) -> dict[str, str]:
    """Lenses whose readings count toward the forget-set verdict but that kept no per-item
    scores for any of them, so group verdicts cannot re-score them: lens -> why (its data
    model's ``no_per_item``, or that this run kept none)."""
    out = {}
    for name, res in lenses.items():
        if res.error is not None or not res.recoveries:
            continue
        d = data[name] if data is not None and name in data else lens_data(res)
        pi = d.per_item
        if pi is None or not any(r.reading in pi.readings for r in res.recoveries):
            out[name] = type(d).no_per_item or "it kept no per-item scores in this run"
    return out


def group_verdicts(
    lenses: dict[str, LensResult], groups: dict[str, list[str]], null: dict[str, float],
    th: Thresholds | None = None, min_power: float = 0.2, seed: int = 0,
    clusters: dict[str, Any] | None = None,
) -> list[Verdict]:
    """Verdicts per concept group, from the per-item readings lenses keep.

    Each lens's readings with per-item scores (its data model's ``per_item``) are re-scored
    on the group's items; control thresholds carry over from the whole set. Every
    reference's per-item scores are used (``reference``, ``reference_2`` ...); without one,
    the lens's own stored ``null`` end point, else ``null`` (the answer-prior estimate).
    Readings without per-item scores do not enter group verdicts; a lens with recoveries but
    none of them per item is named in each group's reason (:func:`without_per_item`).
    """
    import numpy as np

    from audit.stats import recovery

    data: dict[str, LensData] = {name: lens_data(res) for name, res in lenses.items() if res.error is None}
    missing = without_per_item(lenses, data)
    unread = "; ".join(f"{n} ({why})" for n, why in sorted(missing.items()))
    out = []
    for scope, ids in groups.items():
        sub: dict[str, LensResult] = {}
        for name, res in lenses.items():
            if res.error is not None:  # carried over so the group's reason names the failure
                sub[name] = res
                continue
            pi = data[name].per_item
            if pi is None or not pi.ids:
                continue
            index = {i: k for k, i in enumerate(pi.ids)}
            rows = [index[i] for i in ids if i in index]
            recs = []
            for r in res.recoveries:
                per = pi.readings.get(r.reading)
                if per is None or not rows:
                    continue
                refs = sorted(k for k in per if k == "reference" or k.startswith("reference_"))
                if refs:
                    n = np.array([[per[k][j] for j in rows] for k in refs], dtype=float)
                elif "null" in per:
                    n = np.array([per["null"][j] for j in rows], dtype=float)
                else:
                    n = np.array([null[pi.ids[j]] for j in rows], dtype=float)
                cl = [clusters.get(pi.ids[j]) for j in rows] if clusters else None
                g = recovery(np.array([per["base"][j] for j in rows], dtype=float),
                             np.array([per["unlearned"][j] for j in rows], dtype=float), n,
                             reading=r.reading, min_power=min_power, seed=seed, clusters=cl)
                g.kind, g.control_threshold, g.end_point = r.kind, r.control_threshold, r.end_point
                g.side_effect_ok = r.side_effect_ok
                g.excess = g.value - r.control_threshold if r.control_threshold is not None else None
                recs.append(g)
            sub[name] = res.model_copy(update={"recoveries": recs})
        v = decide(sub, th, scope=scope)
        v.reason += " (group verdict: lenses with per-item readings only"
        v.reason += f"; not re-scored per group: {unread})" if unread else ")"
        out.append(v)
    return out
