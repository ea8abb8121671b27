"""The verdict (SPEC §5): DELETED / SUPPRESSED / NOT_UNLEARNED / INCONCLUSIVE, with evidence."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from audit.schema import Evidence, LensResult, Recovery, Verdict

REQUIRED_FOR_DELETED = ("linear_probe", "relearn", "quantization")


class Thresholds(BaseModel):
    """Decision thresholds (a policy file can override them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    behavior_recovery: float = 0.5
    """Behaviour recovery at or above this means U still knows (NOT_UNLEARNED)."""
    tau_s: float = 0.3
    """Excess recovery of an informative lens that shows suppression."""
    tau_d: float = 0.15
    """Every informative lens's CI upper bound must be at most this for DELETED."""
    retain_collapse: float = 0.2
    """Retain-score drop of U vs B that counts as a collapse."""
    required_for_deleted: tuple[str, ...] = REQUIRED_FOR_DELETED
    """Lenses that must be informative before DELETED can be said."""


def _excess(r: Recovery) -> tuple[float, float, float]:
    """(excess, lower, upper) of a recovery over its control threshold, if any."""
    c = r.control_threshold or 0.0
    return r.value - c, r.ci_low - c, r.ci_high - c


def _ev(lens: str, r: Recovery) -> Evidence:
    return Evidence(lens=lens, reading=r.reading, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high)


def _fmt(r: Recovery) -> str:
    return f"{r.value:.2f} (CI {r.ci_low:.2f}–{r.ci_high:.2f})"


def decide(lenses: dict[str, LensResult], th: Thresholds | None = None, scope: str = "forget set") -> Verdict:
    """Apply SPEC §5 to the lens results of one scope."""
    th = th or Thresholds()
    ok = {k: v for k, v in lenses.items() if v.error is None}
    beh = ok.get("behavior")
    informative: list[tuple[str, Recovery]] = [
        (name, r) for name, res in ok.items() for r in res.recoveries
        if r.informative and math.isfinite(r.value) and r.side_effect_ok is not False
    ]
    top = max((r.value for _, r in informative), default=float("nan"))
    deletion = float(min(1.0, max(0.0, 1.0 - top))) if math.isfinite(top) else 0.0
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
    hit = max(beh_recs, key=lambda r: r.value)
    if hit.value >= th.behavior_recovery:
        what = "still picks the true answer among the candidates" if hit.reading == "ranking" else "still answers greedily"
        return verdict(
            "NOT_UNLEARNED",
            f"U {what}: {hit.reading} recovery {_fmt(hit)} (U {hit.score_unlearned:.0%}, base "
            f"{hit.score_base:.0%}, reference {hit.score_reference:.0%})",
            [_ev("behavior", hit)],
        )
    others = [(n, r) for n, r in informative if n != "behavior"]
    supp = [(n, r) for n, r in others if _excess(r)[0] >= th.tau_s and _excess(r)[1] > 0]
    if supp:
        n, r = max(supp, key=lambda x: _excess(x[1])[0])
        ctrl = f", above the controls' 95th percentile {r.control_threshold:.2f}" if r.control_threshold is not None else ""
        return verdict(
            "SUPPRESSED",
            f"behavior is near the reference, but the {n} lens ({r.reading}) recovers {_fmt(r)} of the "
            f"knowledge{ctrl}: {r.score_unlearned:.0%} in U vs {r.score_reference:.0%} in the reference",
            [_ev(n, r) for n, r in sorted(supp, key=lambda x: -x[1].value)],
        )
    primary = [(n, r) for n, r in others if r.kind == "primary"]
    names = {n for n, _ in primary}
    missing = [x for x in th.required_for_deleted if x not in names]
    # a primary reading must bound recovery below tau_d; a scan reading blocks DELETED
    # only when it shows recovery above tau_d beyond doubt (its widened CI's lower end).
    # SPEC §5 bounds the recovery itself here, not its excess over controls: controls below
    # zero (random directions that hurt U) must not raise the bar, nor controls above zero
    # lower it (SUPPRESSED, above, is the one that needs an excess over the controls)
    high = [(n, r) for n, r in primary if r.ci_high > th.tau_d]
    high += [(n, r) for n, r in others if r.kind == "scan" and r.ci_low > th.tau_d]
    if not missing and not high:
        tried = ", ".join(sorted(names))
        return verdict("DELETED", f"no tested lens recovered the knowledge (lenses: {tried}; every primary "
                       f"recovery CI upper bound ≤ {th.tau_d})", [_ev(n, r) for n, r in primary])
    if missing:
        why = f"no informative result from {', '.join(missing)}, which DELETED requires"
    else:
        n, r = max(high, key=lambda x: x[1].ci_high)
        why = f"the {n} lens ({r.reading}) recovers {_fmt(r)}: too uncertain for DELETED, too weak for SUPPRESSED"
    return verdict("INCONCLUSIVE", f"behavior is near the reference, but {why}", [_ev(n, r) for n, r in others])


def retain_utility(lenses: dict[str, LensResult], th: Thresholds | None = None) -> dict:
    """Retain score of U vs B; flags a collapse (deletion then can't be told from damage)."""
    th = th or Thresholds()
    beh = lenses.get("behavior")
    if beh is None or beh.error:
        return {}
    r = beh.data["retain"]
    drop = r["base"]["score"] - r["unlearned"]["score"]
    return {"base": r["base"]["score"], "unlearned": r["unlearned"]["score"], "drop": drop,
            "collapsed": drop > th.retain_collapse}


def group_verdicts(
    lenses: dict[str, LensResult], groups: dict[str, list[str]], chance: dict[str, float],
    th: Thresholds | None = None, min_power: float = 0.2, seed: int = 0,
) -> list[Verdict]:
    """Verdicts per concept group, from the per-item readings lenses keep.

    Each lens's primary readings with per-item scores (``data["per_item"]``) are
    re-scored on the group's items; control thresholds carry over from the whole set.
    Readings without per-item scores do not enter group verdicts.
    """
    from audit.stats import recovery

    out = []
    for scope, ids in groups.items():
        sub: dict[str, LensResult] = {}
        for name, res in lenses.items():
            if res.error is not None:  # carried over so the group's reason names the failure
                sub[name] = res
                continue
            pi = res.data.get("per_item")
            if not pi:
                continue
            index = {i: k for k, i in enumerate(pi["ids"])}
            rows = [index[i] for i in ids if i in index]
            recs = []
            for r in res.recoveries:
                per = pi["readings"].get(r.reading)
                if per is None or not rows:
                    continue

                ends = [[per[role][k] for k in rows] if role in per else [chance[pi["ids"][k]] for k in rows]
                        for role in ("base", "unlearned", "reference")]
                g = recovery(*ends, reading=r.reading,
                             min_power=min_power, seed=seed)
                g.kind, g.control_threshold = r.kind, r.control_threshold
                g.excess = g.value - r.control_threshold if r.control_threshold is not None else None
                recs.append(g)
            sub[name] = res.model_copy(update={"recoveries": recs})
        v = decide(sub, th, scope=scope)
        v.reason += " (group verdict: lenses with per-item readings only)"
        out.append(v)
    return out
