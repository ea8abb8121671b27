"""Recovery and its bootstrap confidence interval (SPEC §3)."""

from __future__ import annotations

import numpy as np

from audit.schema import Recovery


def recovery(
    b: np.ndarray,
    u: np.ndarray,
    n: np.ndarray,
    *,
    reading: str,
    min_power: float = 0.2,
    n_boot: int = 1000,
    seed: int = 0,
    n_compared: int = 1,
) -> Recovery:
    """``R = (S(U) - S(N)) / (S(B) - S(N))`` with a paired bootstrap 95% CI over items.

    Args:
        b, u, n: per-item scores (e.g. 0/1 correctness) of base, unlearned and the
            reference end point, on the same items. ``n`` may be a constant array
            (chance) when no reference model is given.
        reading: what was scored (e.g. "ranking", "greedy", "probe layer 2").
        min_power: the lens is *informative* only if ``S(B) - S(N)`` reaches this.
        n_boot: bootstrap resamples.
        seed: resampling seed.
        n_compared: how many readings this one was picked from (e.g. layers); the CI is
            widened Bonferroni-style to ``1 - 0.05 / n_compared`` so picking the best
            of several does not overstate it.
    """
    b, u, n = (np.asarray(x, dtype=float) for x in (b, u, n))
    sb, su, sn = float(b.mean()), float(u.mean()), float(n.mean())
    gap = sb - sn
    informative = gap >= min_power
    value = (su - sn) / gap if abs(gap) > 1e-9 else float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(n_boot, len(b)))
    gb, gu, gn = b[idx].mean(1), u[idx].mean(1), n[idx].mean(1)
    den = gb - gn
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(np.abs(den) > 1e-9, (gu - gn) / den, np.nan)
    r = r[np.isfinite(r)]
    tail = 100 * 0.05 / max(1, n_compared) / 2
    lo, hi = (float(np.percentile(r, tail)), float(np.percentile(r, 100 - tail))) if len(r) else (float("nan"),) * 2
    return Recovery(
        reading=reading, value=value, ci_low=lo, ci_high=hi, score_base=sb, score_unlearned=su,
        score_reference=sn, n_items=len(b), informative=informative,
    )
