"""What a lens sees: the loaded models, the item sets and shared, cached computations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.activations import Activations, capture
from audit.caveats import no_reference_note
from audit.config import AuditConfig
from audit.items import KnowledgeItem, items_hash
from audit.models import LoadedModel, cached_json
from audit.schema import Recovery
from audit.scoring import ScoreResult, logit_scale, score_items
from audit.stats import cluster_ids, recovery

ROLES = ("base", "unlearned", "reference")
PRIOR_PLACEHOLDERS = 4
"""Names no model saw, per item, that :meth:`AuditContext.prior_logprobs` averages over."""
SCORE_CACHE_VERSION = "1"
"""Part of every score cache key: bump it when :func:`audit.scoring.score_items` changes what it computes."""


def cached_scores(m: LoadedModel, items: Sequence[KnowledgeItem], batch_size: int, model_name: str) -> ScoreResult:
    """:func:`audit.scoring.score_items` of a loaded model, read from ``$AUDIT_CACHE/scores``
    when the same checkpoint content scored the same items before (same batch size, device,
    dtype and torch), as the activation cache does. Audits that share B or N (a
    calibration, a sweep, a re-run) score each of them once."""
    return cached_json(m, "scores", [SCORE_CACHE_VERSION, items_hash(items), str(batch_size)],
                       lambda: score_items(m.forward, m.tokenizer, items, batch_size=batch_size, device=m.device,
                                           model_name=model_name),
                       ScoreResult.to_dict, ScoreResult.from_dict)


def mean_candidate_logprobs(models: Mapping[str, LoadedModel], role: str, flat: Sequence[tuple[int, KnowledgeItem]],
                            shape: tuple[int, int], batch_size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Score every ``(row, item)`` of ``flat`` with ``role``'s model and average each row's
    candidate log-probs (``[rows, width]``, zero-padded); beside it, which rows had an item.
    The prior over answer values is this mean over an item's subject-replaced copies. The
    model is not touched when ``flat`` is empty."""
    out, done = np.zeros(shape), np.zeros(shape[0], dtype=bool)
    if not flat:
        return out, done
    m = models[role]
    s = cached_scores(m, [it for _, it in flat], batch_size, f"{role} model ({m.path}), {what}")
    rows: dict[int, list[list[float]]] = {}
    for (r, _), lp in zip(flat, s.candidate_logprobs, strict=True):
        rows.setdefault(r, []).append(lp)
    for r, lps in rows.items():
        a = np.asarray(lps, dtype=float)
        out[r, : a.shape[1]] = a.mean(axis=0)
        done[r] = True
    return out, done


def placeholder_names(pool: list[str], known: set[str], k: int, seed: int) -> list[str]:
    """``k`` names built from parts of other subjects, none of them a subject any model may know.

    Multi-word subjects give the first word of one and the last word of another
    ("davair brupin" + "kaistoux maigai" -> "davair maigai"); one-word subjects the first
    half of one and the second half of another ("Albania" + "Austria" -> "Albtria"). A name
    equal (case-insensitively) to any subject of the item sets is skipped. The parts come
    from the scored set's own subjects, so they look like its names and no model knows the
    combination: a model that never learned the facts and one that did see the same
    unknown person.
    """
    rng = np.random.default_rng(abs(int(seed)) % (2**63))
    out: list[str] = []
    for _ in range(20 * k):
        if len(out) == k:
            break
        a, b = rng.choice(len(pool), size=2, replace=False)
        wa, wb = pool[int(a)].split(), pool[int(b)].split()
        if len(wa) > 1 and len(wb) > 1:
            name = " ".join([*wa[:-1], wb[-1]])
        else:
            x, y = pool[int(a)], pool[int(b)]
            name = x[: max(1, len(x) // 2)] + y[len(y) // 2 :]
        if name.strip().lower() not in known and name not in out:
            out.append(name)
    return out


@dataclass
class AuditContext:
    """Shared state of one audit run.

    Scores and activations are computed at most once per (model, item set) and reused
    by every lens that asks.
    """

    config: AuditConfig
    models: dict[str, LoadedModel]
    items: dict[str, list[KnowledgeItem]]
    _scores: dict[tuple[str, str], ScoreResult] = field(default_factory=dict)
    _temperatures: dict[str, float] = field(default_factory=dict)
    _acts: dict[tuple[str, str], Activations] = field(default_factory=dict)
    _priors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _placeholders: dict[str, list[list[KnowledgeItem] | None]] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def has_reference(self) -> bool:
        return bool(self.reference_roles)

    def no_reference_notes(self, end_point: str) -> list[str]:
        """A lens's no-reference caveat (:func:`audit.caveats.no_reference_note`) as a list
        of notes: one without a reference, none with one.

        Args:
            end_point: what stood in for N in this lens, and what that costs.
        """
        return [] if self.has_reference else [no_reference_note(end_point)]

    @property
    def reference_roles(self) -> list[str]:
        """Roles of the never-trained models: ``reference``, ``reference_2``, ... (may be empty)."""
        return [r for r in self.models if r == "reference" or r.startswith("reference_")]

    @property
    def roles(self) -> list[str]:
        return [r for r in ("base", "unlearned") if r in self.models] + self.reference_roles

    @property
    def n_layers(self) -> int:
        return self.models["base"].n_layers

    def score(self, role: str, item_set: str) -> ScoreResult:
        """Behavioural knowledge score of a model on ``forget`` or ``retain`` items."""
        key = (role, item_set)
        if key not in self._scores:
            m = self.models[role]
            self._scores[key] = cached_scores(m, self.items[item_set], self.config.batch_size,
                                              f"{role} model ({m.path})")
        return self._scores[key]

    def temperature(self, role: str) -> float:
        """The model's output sharpness relative to B's, read on retain items: its
        :func:`~audit.scoring.logit_scale` over B's (B itself: 1).

        Soft readings through a model's unembedding divide its candidate log-probs by this,
        so a model that differs from another only in being more or less peaked (an
        unembedding scaled by 2 reads 2) reads the same: sharpness is not knowledge.
        """
        if not self.items.get("retain"):  # nothing to read sharpness on: read as is
            return 1.0
        if role not in self._temperatures:
            base = logit_scale(self.score("base", "retain").candidate_logprobs)
            own = logit_scale(self.score(role, "retain").candidate_logprobs)
            t = own / base if np.isfinite(own) and np.isfinite(base) and own > 0 and base > 0 else 1.0
            self._temperatures[role] = float(np.clip(t, 0.05, 20.0))
        return self._temperatures[role]

    def placeholder_items(self, item_set: str = "forget") -> list[list[KnowledgeItem] | None]:
        """Per item, copies of it whose subject is replaced by names no model saw
        (``PRIOR_PLACEHOLDERS`` of them), or ``None`` where the item names no subject in its
        prompt. See :func:`placeholder_names`."""
        if item_set not in self._placeholders:
            items = self.items[item_set]
            known = {it.subject.strip().lower() for s in self.items.values() for it in s if it.subject}
            pool = sorted({it.subject.strip() for it in items if it.subject and it.subject.strip()})
            out: list[list[KnowledgeItem] | None] = []
            for i, it in enumerate(items):
                subj = (it.subject or "").strip()
                if not subj or subj not in it.prompt or len(pool) < 3:
                    out.append(None)
                    continue
                names = placeholder_names(pool, known, PRIOR_PLACEHOLDERS, seed=self.seed * 100_003 + i)
                if not names:
                    out.append(None)
                    continue
                out.append([it.model_copy(update={
                    "prompt": it.prompt.replace(subj, n),
                    "question": it.question.replace(subj, n) if it.question else it.question,
                }) for n in names])
            self._placeholders[item_set] = out
        return self._placeholders[item_set]

    def prior_logprobs(self, role: str, item_set: str = "forget") -> np.ndarray:
        """Per item and candidate, the model's log-prob of the candidate when the subject is
        replaced by names no model saw: its prior over answer values (``[item, candidate]``,
        the mean log-prob over the placeholders; 0 where an item has none). The mean of
        log-probs, not of probabilities, keeps the calibrated ranking unchanged by the
        model's sharpness: scaling the unembedding scales every difference alike.

        Subtracting it from the item's own candidate log-probs (contextual calibration, Zhao
        et al. 2021) leaves what the model says about *this* subject: a model that only
        prefers some answer values, whatever the subject, reads at chance.
        """
        key = (role, item_set)
        if key not in self._priors:
            ph = self.placeholder_items(item_set)
            items = self.items[item_set]
            width = max((len(it.candidates) for it in items), default=1)
            flat = [(i, c) for i, cs in enumerate(ph) if cs for c in cs]
            self._priors[key] = mean_candidate_logprobs(self.models, role, flat, (len(items), width),
                                                        self.config.batch_size, "subject replaced")[0]
        return self._priors[key]

    def calibrated(self, role: str, item_set: str = "forget") -> list[list[float]]:
        """The item's candidate log-probs minus :meth:`prior_logprobs` (per item, per candidate)."""
        raw = self.score(role, item_set).candidate_logprobs
        prior = self.prior_logprobs(role, item_set)
        return [(np.asarray(r, dtype=float) - prior[i, : len(r)]).tolist() for i, r in enumerate(raw)]

    def calibrated_items(self, item_set: str = "forget") -> int:
        """How many items of the set have a prior read with placeholder subjects."""
        return sum(x is not None for x in self.placeholder_items(item_set))

    def activations(self, role: str, item_set: str) -> Activations:
        """All layers' residual activations of a model on an item set (cached on disk)."""
        key = (role, item_set)
        if key not in self._acts:
            self._acts[key] = capture(
                self.models[role], self.items[item_set], batch_size=self.config.batch_size,
                cache_dir=self.config.cache_dir,
            )
        return self._acts[key]

    def chance(self, item_set: str) -> np.ndarray:
        """Per-item chance of ranking the answer first: 1 / #candidates."""
        return np.array([1.0 / len(it.candidates) for it in self.items[item_set]])

    def null(self, item_set: str = "forget") -> np.ndarray:
        """Knowledge-free estimate of the ranking score per item, for runs without a reference.

        A model that never learned the facts can still know how often each answer value
        occurs (its prior over values). Its chance of ranking item i's answer first is then
        ``f(answer) / sum(f(candidates))``, with ``f`` the value's frequency as an answer in
        the item set (at least 1). With every answer distinct (TOFU, capitals) or balanced
        answers this is chance, 1 / #candidates; with skewed closed-set answers it is higher
        for the common values, which is what a prior alone earns.
        """
        items = self.items[item_set]
        counts: dict[str, int] = {}
        for it in items:
            key = it.answer.strip().lower()
            counts[key] = counts.get(key, 0) + 1
        out = np.empty(len(items))
        for i, it in enumerate(items):
            f = [max(1, counts.get(c.strip().lower(), 0)) for c in it.candidates]
            out[i] = f[0] / sum(f)
        return out

    def clusters(self, item_set: str) -> np.ndarray:
        """Per-item cluster ids for the bootstrap: items that share a subject form one cluster."""
        return cluster_ids([it.subject for it in self.items[item_set]])

    def end_point(
        self, per_role: Mapping[str, Any], item_set: str = "forget", *, null: Any | None = None,
        rows: Any | None = None,
    ) -> np.ndarray:
        """The knowledge-free end point of a reading: every reference's per-item scores
        (``[references, items]``), or without a reference the ``null`` estimate (per item),
        by default :meth:`null` (the answer prior of the item set).

        Args:
            per_role: per-item scores by role (``base``, ``unlearned``, ``reference``, ...).
            item_set: the item set scored.
            null: the lens's knowledge-free estimate, used only without a reference.
            rows: the items scored, when only some of ``item_set`` were.
        """
        refs = [np.asarray(per_role[r], dtype=float) for r in self.reference_roles]
        if refs:
            return np.stack(refs)
        out = np.asarray(null, dtype=float) if null is not None else self.null(item_set)
        return out if rows is None or null is not None else out[rows]

    def recovery(
        self, per_role: Mapping[str, Any], *, reading: str, item_set: str = "forget", null: Any | None = None,
        rows: Any | None = None, n_boot: int = 1000, n_compared: int = 1, null_name: str = "answer prior",
    ) -> Recovery:
        """Recovery of one reading from per-item scores by role (SPEC §3), with the run's
        seed, power margin, subject clusters and every reference (or the ``null``)."""
        cl = self.clusters(item_set)
        rec = recovery(
            np.asarray(per_role["base"], dtype=float), np.asarray(per_role["unlearned"], dtype=float),
            self.end_point(per_role, item_set, null=null, rows=rows), reading=reading,
            min_power=self.config.min_power, n_boot=n_boot, seed=self.seed, n_compared=n_compared,
            clusters=cl if rows is None else cl[rows],
        )
        est = np.asarray(null, dtype=float) if null is not None else self.null(item_set)
        if null is None and rows is not None:
            est = est[rows]
        rec.score_null = float(np.nanmean(est)) if est.size else None
        if not self.reference_roles:
            rec.end_point = null_name
        return rec
