"""Cross-fitted choice of an intervention, and what is read from it (SPEC §4.1–4.2).

An intervention lens sweeps candidate settings (steering: site × direction × form ×
scale; the SAE lens: a scale), scoring every forget item *out of fold* under each one
(the edit fitted on the other folds of forget subjects) and under its random controls,
and U's retain items under each one (the side effects). This module holds what every
such lens then does with the sweep, once:

- **fold choice** (:meth:`Sweep.choose`): for each fold ``e``, among the candidates whose
  retain drop on the other folds is within the side-effect tolerance (all of them when
  none is), the one with the largest excess over its controls on the other folds. Ties
  (equal excess) go to the earliest candidate in the sweep's order; a NaN excess never
  displaces the candidate held. No item's outcome helps choose the setting it is scored
  with;
- **the out-of-fold reading** (:meth:`Sweep.out_of_fold`): each item scored under the
  candidate chosen for its fold, with those candidates' controls and retain scores;
- **control thresholds** (:func:`control_recoveries`, :func:`edited_recovery`): each
  control's recovery against the edited end point, and their 95th percentile;
- **curve rows** (:meth:`Sweep.curve_row`, :meth:`Sweep.chosen_rows`): the dose-response
  of every candidate pooled over folds, and the choice made on each fold;
- **per-item readings** (:func:`edited_per_item`): the cross-fitted reading per item, so
  the verdict re-scores it per concept group with the same formula.

The scoring itself (resumed forward, replicas) is :mod:`audit.intervene`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from audit.errors import LensError
from audit.items import KnowledgeItem
from audit.stats import recovery

if TYPE_CHECKING:
    from audit.context import AuditContext
    from audit.schema import Recovery

K = TypeVar("K", bound=Hashable)

__all__ = ["OutOfFold", "Sweep", "control_recoveries", "edited_per_item", "edited_recovery", "percentile",
           "require_folds", "subject_folds"]


def subject_folds(items: Sequence[KnowledgeItem], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each item; items of one subject (or id, untagged) share a fold."""
    groups = [it.subject or it.id for it in items]
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[j]: r % n_folds for r, j in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=int)


def require_folds(fold: np.ndarray, n_folds: int, who: str) -> None:
    """Raise a :class:`LensError` naming ``who`` unless every fold holds a forget item."""
    if any(not (fold == e).any() for e in range(n_folds)):
        raise LensError(f"{who} needs forget items of at least {n_folds} subjects for {n_folds} folds")


def percentile(x: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``x``; NaN for an empty array."""
    return float(np.percentile(x, q)) if len(x) else float("nan")


def control_recoveries(controls: np.ndarray, end: float, gap: float) -> np.ndarray:
    """Each control's recovery ``(mean score − end) / gap`` over its items (NaN without a gap).

    Args:
        controls: ``[n_controls, items]`` scores under the random controls.
        end: S(N) the controls are measured against (the edited end point).
        gap: the unedited S(B) − S(N).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return (controls.mean(1) - end) / gap if abs(gap) > 1e-9 else np.full(len(controls), np.nan)


@dataclass(frozen=True)
class OutOfFold:
    """Every item read under the candidate chosen for its fold."""

    score: np.ndarray
    """U's forget score per item, ``[items]``."""
    controls: np.ndarray
    """The chosen candidates' control scores, ``[n_controls, items]``."""
    retain: np.ndarray
    """U's retain accuracy per retain item, ``[retain items]``."""


@dataclass(frozen=True)
class Sweep(Generic[K]):
    """The out-of-fold scores of every candidate setting of an intervention lens.

    Each forget item's scores under a candidate were taken with the edit fitted on the
    other folds; the arrays are per item, in the item sets' order.
    """

    candidates: Sequence[K]
    """The candidates swept, in order of preference among ties."""
    score: Mapping[K, np.ndarray]
    """U's forget score under each candidate, in the lens's metric, ``[items]``."""
    accuracy: Mapping[K, np.ndarray]
    """U's forget accuracy under each candidate (for the curve), ``[items]``."""
    controls: Mapping[K, np.ndarray]
    """Scores under each candidate's random controls, ``[n_controls, items]`` (candidates
    may share one array: steering's controls are per site, form and scale)."""
    retain: Mapping[K, np.ndarray]
    """U's retain accuracy under each candidate, ``[retain items]``."""
    retain_plain: np.ndarray
    """U's unedited retain accuracy, ``[retain items]``."""
    tolerance: float
    """The most a candidate may drop retain accuracy and still be chosen first."""

    def excess_on(self, k: K, mask_f: np.ndarray) -> float:
        """Mean score under ``k`` on the items of ``mask_f``, minus the 95th percentile of its
        controls' mean scores there."""
        c = self.controls[k][:, mask_f].mean(1)
        return float(self.score[k][mask_f].mean() - np.percentile(c, 95))

    def drop_on(self, k: K, mask_r: np.ndarray) -> float:
        """Retain accuracy lost under ``k`` on the retain items of ``mask_r`` (0 when none)."""
        return float(self.retain_plain[mask_r].mean() - self.retain[k][mask_r].mean()) if mask_r.any() else 0.0

    def choose(self, fold_f: np.ndarray, fold_r: np.ndarray, n_folds: int) -> list[K]:
        """For each fold, the best candidate on the other folds (see the module docstring)."""
        rank = {k: i for i, k in enumerate(self.candidates)}
        chosen: list[K] = []
        for e in range(n_folds):
            mf, mr = fold_f != e, fold_r != e
            pool = [k for k in self.candidates if self.drop_on(k, mr) <= self.tolerance] or list(self.candidates)
            chosen.append(max(pool, key=lambda k: (self.excess_on(k, mf), -rank[k])))
        return chosen

    def out_of_fold(self, chosen: Sequence[K], fold_f: np.ndarray, fold_r: np.ndarray) -> OutOfFold:
        """Each forget (retain) item under the candidate chosen for its fold."""
        n_controls = len(next(iter(self.controls.values())))
        u = np.zeros(len(fold_f))
        c_pool = np.zeros((n_controls, len(fold_f)))
        ret = np.zeros(len(fold_r))
        for e, k in enumerate(chosen):
            idx_f = np.flatnonzero(fold_f == e)
            u[idx_f] = self.score[k][idx_f]
            c_pool[:, idx_f] = self.controls[k][:, idx_f]
            ret[fold_r == e] = self.retain[k][fold_r == e]
        return OutOfFold(u, c_pool, ret)

    def curve_row(self, k: K, end: float, gap: float) -> dict[str, Any]:
        """One dose-response row: candidate ``k`` pooled over folds (each item out of fold),
        its recovery and control threshold against the unedited end point ``end``."""
        c = self.controls[k].mean(1)
        su = float(self.score[k].mean())
        dr = self.drop_on(k, np.ones(len(self.retain_plain), dtype=bool))
        r_s = (su - end) / gap if abs(gap) > 1e-9 else float("nan")
        thr = (percentile(c, 95) - end) / gap if abs(gap) > 1e-9 else float("nan")
        return {
            "score": su, "accuracy": float(self.accuracy[k].mean()),
            "control_p5": percentile(c, 5), "control_p50": percentile(c, 50), "control_p95": percentile(c, 95),
            "retain_accuracy": float(self.retain[k].mean()), "retain_drop": dr,
            "side_effect_ok": dr <= self.tolerance, "recovery": r_s, "control_threshold": thr, "excess": r_s - thr,
        }

    def chosen_rows(self, chosen: Sequence[K], fold_f: np.ndarray, fold_r: np.ndarray,
                    describe: Callable[[K], dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per fold: the candidate chosen (as ``describe`` puts it) and how it did on
        the other folds, where it was chosen."""
        return [
            {"fold": e + 1, **describe(k), "n_items": int((fold_f == e).sum()),
             "other_folds_score_excess": self.excess_on(k, fold_f != e),
             "other_folds_retain_drop": self.drop_on(k, fold_r != e)}
            for e, k in enumerate(chosen)
        ]


def edited_recovery(
    ctx: AuditContext, *, base: np.ndarray, end: np.ndarray, end_edited: np.ndarray, oof: OutOfFold,
    retain_plain: np.ndarray, tolerance: float, n_boot: int, reading: str,
) -> tuple[Recovery, np.ndarray, float]:
    """Recovery of the cross-fitted reading, against its controls and side effects.

    ``R = (S_edited(U) − S_edited(N)) / (S(B) − S(N))``: N is put through the same
    procedure (its own edit, same setting) so an edit that manufactures answers is
    subtracted, and the denominator is the unedited gap, so an edit that harms B cannot
    inflate R. The control threshold is the 95th percentile of the chosen candidates'
    control recoveries.

    Args:
        ctx: the audit (seed, power margin, subject clusters, the answer-prior estimate).
        base: S(B) per forget item (unedited).
        end: the unedited end point (``[references, items]`` or ``[items]``).
        end_edited: the end point under the chosen edits (``end`` itself without a reference).
        oof: U's out-of-fold reading.
        retain_plain: U's unedited retain accuracy per retain item.
        tolerance: the side-effect tolerance on retain accuracy.
        n_boot: bootstrap resamples.
        reading: the reading's name.

    Returns:
        The recovery, the control recoveries, and the retain accuracy lost.
    """
    rec = recovery(base - end + end_edited, oof.score, end_edited, reading="", min_power=ctx.config.min_power,
                   n_boot=n_boot, seed=ctx.seed, clusters=ctx.clusters("forget"))
    # the estimate that stands in for N without a reference, kept with one too (benchmarks/null_estimate.py)
    rec.score_null = float(np.mean(ctx.null("forget")))
    if not ctx.has_reference:
        rec.end_point = "answer prior"
    gap = float(base.mean() - end.mean())
    ctrl_r = control_recoveries(oof.controls, float(end_edited.mean()), gap)
    threshold = percentile(ctrl_r, 95)
    drop = float(retain_plain.mean() - oof.retain.mean())
    rec = rec.model_copy(update={
        "reading": reading, "score_base": float(base.mean()), "score_reference": float(end_edited.mean()),
        "control_threshold": threshold, "excess": rec.value - threshold, "side_effect_ok": drop <= tolerance,
    })
    return rec, ctrl_r, drop


def edited_per_item(
    ctx: AuditContext, *, base: np.ndarray, end: np.ndarray, end_edited: np.ndarray, oof: OutOfFold,
    reading: str,
) -> dict[str, Any]:
    """The per-item scores of :func:`edited_recovery`'s reading (``LensData.per_item``), so a
    concept group's recovery is the same formula on the group's items.

    Per forget item: U's out-of-fold score (``unlearned``), each reference under its own
    chosen edit (``reference``, ``reference_2`` ...) or, without one, the unedited
    end-point estimate (``null``), and B shifted as the recovery shifts it,
    ``S(B) − S(N) + S_edited(N)`` (with several references, their mean shift: the point
    estimate is exact, only a group CI's draw of references holds B's shift fixed).

    Args: as :func:`edited_recovery`'s.
    """
    end2, edited2 = np.atleast_2d(end), np.atleast_2d(end_edited)
    per: dict[str, list[float]] = {
        "base": (base - end2.mean(0) + edited2.mean(0)).tolist(),
        "unlearned": np.asarray(oof.score, dtype=float).tolist(),
    }
    if ctx.has_reference:
        per.update({role: edited2[k].tolist() for k, role in enumerate(ctx.reference_roles)})
    else:
        per["null"] = end2[0].tolist()
    return {"ids": [it.id for it in ctx.items["forget"]], "readings": {reading: per}}
