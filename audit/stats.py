"""Recovery and its bootstrap confidence interval (SPEC §3; docs/verdict.md).

The CI resamples what really varies (SPEC §5 "honest uncertainty"):

- **items, in clusters**: items that share a subject are not independent (one person's
  three facts stand or fall together), so whole subjects are resampled;
- **references**: with several never-trained models, each resample also draws the
  references (with replacement) whose mean is the end point, so the spread between
  never-trained models enters the CI instead of being hidden in one arbitrary choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.schema import Recovery


def cluster_ids(labels: Sequence[object | None]) -> np.ndarray:
    """Integer cluster ids from per-item labels (``None``: the item is its own cluster)."""
    index: dict[object, int] = {}
    out = np.empty(len(labels), dtype=int)
    for i, lab in enumerate(labels):
        key = ("item", i) if lab is None else ("label", lab)
        out[i] = index.setdefault(key, len(index))
    return out


def _as_refs(x: np.ndarray, n_items: int) -> np.ndarray:
    """``[refs, items]`` view of a per-item array (1-D: one reference)."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != n_items:
        raise ValueError(f"expected {n_items} per-item scores (or [references, items]), got shape {x.shape}")
    return x


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
    clusters: np.ndarray | Sequence[object | None] | None = None,
) -> Recovery:
    """``R = (S(U) - S(N)) / (S(B) - S(N))`` with a paired, clustered bootstrap 95% CI.

    Args:
        b: per-item scores of the base model; ``[references, items]`` when the base end
            point depends on the reference (steering shifts it by N's own steered score).
        u: per-item scores of the unlearned model, ``[items]``.
        n: per-item scores of the knowledge-free end point: one never-trained model
            (``[items]``), several (``[references, items]``; S(N) is their mean), or an
            estimate of a knowledge-free model when no reference was given.
        reading: what was scored (e.g. "ranking", "greedy", "probe layer 2").
        min_power: the lens is *informative* only if ``S(B) - S(N)`` reaches this.
        n_boot: bootstrap resamples.
        seed: resampling seed.
        n_compared: how many readings this one was picked from (e.g. layers); the CI is
            widened Bonferroni-style to ``1 - 0.05 / n_compared`` so picking the best
            of several does not overstate it.
        clusters: per-item cluster labels (e.g. subjects); whole clusters are resampled.
            ``None``: every item is its own cluster.
    """
    u = np.asarray(u, dtype=float)
    m = len(u)
    n2 = _as_refs(n, m)
    b2 = _as_refs(b, m)
    if len(b2) not in (1, len(n2)):
        raise ValueError("b must have one row or one row per reference")
    k = len(n2)
    sb, su, sn = float(b2.mean()), float(u.mean()), float(n2.mean())
    gap = sb - sn
    informative = gap >= min_power
    value = (su - sn) / gap if abs(gap) > 1e-9 else float("nan")

    cl = cluster_ids([None] * m) if clusters is None else (
        np.asarray(clusters) if np.asarray(clusters).dtype.kind in "iu" else cluster_ids(list(clusters)))
    n_cl = int(cl.max()) + 1 if m else 0
    rng = np.random.default_rng(seed)
    # cluster resampling as weights: how often each cluster is drawn in each resample
    w = rng.multinomial(n_cl, np.full(n_cl, 1.0 / n_cl), size=n_boot).astype(float) if n_cl else np.zeros((n_boot, 0))

    def sums(x: np.ndarray) -> np.ndarray:  # per-cluster sums of each row of x
        out = np.zeros((len(x), n_cl))
        for row in range(len(x)):
            out[row] = np.bincount(cl, weights=x[row], minlength=n_cl)
        return out

    cnt = w @ np.bincount(cl, minlength=n_cl).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        gu = (w @ sums(u[None])[0]) / cnt
        nb = (w @ sums(n2).T) / cnt[:, None]  # [boot, refs]
        bb = (w @ sums(b2).T) / cnt[:, None]
    if k > 1:  # draw the references too: the end point is the mean of the drawn ones
        pick = rng.integers(0, k, size=(n_boot, k))
        gn = np.take_along_axis(nb, pick, 1).mean(1)
        gb = np.take_along_axis(bb, pick, 1).mean(1) if len(b2) == k else bb[:, 0]
    else:
        gn, gb = nb[:, 0], bb[:, 0]
    den = gb - gn
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(np.abs(den) > 1e-9, (gu - gn) / den, np.nan)
    r = r[np.isfinite(r)]
    tail = 100 * 0.05 / max(1, n_compared) / 2
    lo, hi = (float(np.percentile(r, tail)), float(np.percentile(r, 100 - tail))) if len(r) else (float("nan"),) * 2
    return Recovery(
        reading=reading, value=value, ci_low=lo, ci_high=hi, score_base=sb, score_unlearned=su,
        score_reference=sn, n_items=m, informative=informative, n_references=k,
    )
