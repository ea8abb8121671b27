"""Membership-inference lens: does a model read the forget facts as text it was trained on?

Four published statistics score a text from one forward pass, higher meaning "more like a
training text": **LOSS** (mean token log-prob; Yeom et al. 2018), **zlib** (mean token
log-prob over the text's zlib-compressed length; Carlini et al. 2021), **Min-K%** (mean
log-prob of the text's lowest ``k`` share of tokens; Shi et al. 2024) and **Min-K%++**
(Zhang et al. 2024: per token ``(log p(x_t) − μ_t) / σ_t``, with ``μ_t`` and ``σ_t`` the
mean and standard deviation of ``log p(z)`` for ``z`` drawn from the model's next-token
distribution, averaged over the lowest ``k`` share of tokens). Min-K%++ is the primary
reading, the others scans.

**Members and non-members.** A forget item's member text is its prompt followed by its
answer: the fact as a statement. Its non-members are the same prompt followed by *other
forget items' answers* of the same attribute (counterfactual facts no model was trained
on). The pairs are drawn symmetrically: in each of ``rounds`` seeded permutations of the
items sharing an attribute, item ``i`` takes the answers of the items before and after it,
so when ``j``'s answer is ``i``'s counterfactual, ``i``'s answer is ``j``'s. A model that
never learned the facts sees member and counterfactual texts as exchangeable: the prompt
is the same and the answer values are the same multiset on both sides, so a prior over
answer values (a model that likes "paris", whatever the subject), a length bias or a
sampling temperature raises members and non-members alike. The item's own distractors are
not used: they are not drawn from the answers' distribution (the skewed-prior organism
reads below its references on them, as behavior's raw ranking does). An item whose group
has no other answer value falls back to its distractors (counted in ``fallback_items``).

**The score.** Per item, the share of its counterfactual texts that its true text
out-scores (ties count half): a paired AUC, 0.5 in expectation for a model without the
knowledge, near 1 for one that knows. S is its mean; recovery ``(S(U) − S(N)) / (S(B) −
S(N))`` reads through ``ctx.recovery``; without a reference the end point is 0.5 (the
exchangeable null). The same statistic on retain items (facts every model learned) is the
control where U should read B (``side_effect_ok``), and shuffled-label controls (each
item's member replaced by one of its texts at random, on U) give the primary reading's
control threshold and excess.

Every reading is ``kind="support"``: shown, never read by the verdict, until calibration
shows this lens separates knowledge-present from knowledge-absent models at AUROC ≥ 0.8.

Cost: one forward pass per text per model, batched, no sampling; an item whose answers are
all one token forwards its prompt once and reads every value at its last position.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from audit.batching import run_batched
from audit.context import AuditContext
from audit.items import KnowledgeItem
from audit.lensdata import MiaConfig, MiaData
from audit.models import LoadedModel, cached_json
from audit.registry import register_lens
from audit.schema import LensResult, Recovery
from audit.scoring import (
    candidate_sequences,
    check_finite,
    encode_continuation,
    encode_prompt,
    pad_batch,
    pad_id_of,
)

MIA_CACHE_VERSION = "1"
STATISTICS = ("Min-K%++", "Min-K%", "LOSS", "zlib")
"""The statistics, primary first."""
TIE = 1e-6
"""Relative difference below which two texts' statistics tie (the same prompt's tokens read in
two padded batches differ by float rounding only)."""


def reading_name(stat: str) -> str:
    return f"{stat} AUC (true vs counterfactual answers)"


# ------------------------------------------------------------------------------ design


@dataclass
class Design:
    """Per item, the values its texts end in (index 0: the true answer) and, per counterfactual
    value, how many partners gave it (the comparisons' weights)."""

    values: list[list[str]]
    weights: list[list[float]]
    fallback: list[bool]

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.values).encode()).hexdigest()[:16]


def counterfactual_design(items: Sequence[KnowledgeItem], rounds: int, seed: int) -> Design:
    """Symmetric answer swaps within each attribute (see the module docstring)."""
    rng = np.random.default_rng(abs(int(seed)) % (2**63))
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.attribute or "", []).append(i)
    partners: list[list[int]] = [[] for _ in items]
    for idx in groups.values():
        if len(idx) < 2:
            continue
        for _ in range(rounds):
            perm = [idx[int(j)] for j in rng.permutation(len(idx))]
            for a in range(len(perm)):
                # each adjacent pair (a, a+1) of the cycle gives both items the other's answer
                i, j = perm[a], perm[(a + 1) % len(perm)]
                if i != j and (len(perm) > 2 or a == 0):
                    partners[i].append(j)
                    partners[j].append(i)
    values, weights, fallback = [], [], []
    for i, it in enumerate(items):
        own = it.answer.strip().casefold()
        counts: dict[str, float] = {}
        for j in partners[i]:
            v = items[j].answer
            if v.strip().casefold() != own:
                counts[v] = counts.get(v, 0.0) + 1.0
        fb = not counts
        if fb:  # no other answer value to swap in: the item's own distractors
            counts = {d: 1.0 for d in it.distractors}
        values.append([it.answer, *counts])
        weights.append(list(counts.values()))
        fallback.append(fb)
    return Design(values, weights, fallback)


# ------------------------------------------------------------------------------ forward


def _joined(prompt: str, value: str) -> str:
    """The text ``prompt`` + ``value`` as :func:`audit.scoring.encode_continuation` joins them."""
    if prompt.endswith((" ", "\n")):
        value = value.lstrip(" ")
    sep = "" if prompt.endswith((" ", "\n")) or value.startswith((" ", "\n")) else " "
    return prompt + sep + value


def text_statistics(lp: np.ndarray, z: np.ndarray, text: str, k: float) -> list[float]:
    """The four statistics (:data:`STATISTICS` order) of one text from its tokens' log-probs
    ``lp`` and Min-K%++ scores ``z``; higher reads more like a training text."""
    if lp.size == 0:
        return [math.nan] * len(STATISTICS)
    n = max(1, math.ceil(k * lp.size))
    zl = len(zlib.compress(text.encode("utf-8")))
    return [float(np.sort(z)[:n].mean()), float(np.sort(lp)[:n].mean()), float(lp.mean()), float(lp.mean() / zl)]


@torch.no_grad()
def model_statistics(m: LoadedModel, items: Sequence[KnowledgeItem], values: Sequence[Sequence[str]], k: float,
                     batch_size: int, what: str) -> list[list[list[float]]]:
    """Per item, per value, the statistics of ``prompt + value`` under ``m``: one forward pass
    per text (the prompt once where every value is one token)."""
    tok = m.tokenizer
    pad = pad_id_of(tok)
    prompts = [encode_prompt(tok, it.prompt) for it in items]
    conts = [[encode_continuation(tok, it.prompt, v, p) for v in vals]
             for it, vals, p in zip(items, values, prompts, strict=True)]
    # per sequence: (item, value, prompt len, ids)
    seqs, reads = candidate_sequences(prompts, conts)
    order = sorted(range(len(seqs)), key=lambda s: len(seqs[s]))
    out: list[list[list[float]]] = [[[math.nan] * len(STATISTICS) for _ in v] for v in values]

    def chunk(a: int, b: int) -> list[tuple[int, int, list[float]]]:
        idx = order[a:b]
        ids, mask = pad_batch([seqs[s] for s in idx], pad, m.device)
        logits = m.forward(ids, mask).float()
        check_finite(logits, mask, [items[reads[s][0][0]].id for s in idx], what, "logits")
        logp = torch.log_softmax(logits, dim=-1)
        prob = logp.exp()
        mu = (prob * logp).sum(-1)
        sd = ((prob * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
        rows = []
        for row, s in enumerate(idx):
            seq = torch.tensor(seqs[s], device=logp.device)
            for i, j, plen, c in reads[s]:
                tgt = torch.cat([seq[1:plen], torch.tensor(c, device=logp.device)])
                pos = torch.arange(0, len(tgt), device=logp.device)
                lp = logp[row, pos, tgt]
                z = (lp - mu[row, pos]) / sd[row, pos]
                rows.append((i, j, text_statistics(lp.cpu().double().numpy(), z.cpu().double().numpy(),
                                                   _joined(items[i].prompt, values[i][j]), k)))
        return rows

    for rows in run_batched(chunk, len(order), batch_size, what=f"membership inference ({what})"):
        for i, j, st in rows:
            out[i][j] = st
    return out


def cached_statistics(m: LoadedModel, items: Sequence[KnowledgeItem], design: Design, k: float,
                      batch_size: int, what: str) -> list[list[list[float]]]:
    """:func:`model_statistics`, cached on disk per checkpoint content (``$AUDIT_CACHE/mia``)."""
    from audit.items import items_hash

    return cached_json(m, "mia", [MIA_CACHE_VERSION, items_hash(items), design.key(), repr(k), str(batch_size)],
                       lambda: model_statistics(m, items, design.values, k, batch_size, what),
                       lambda x: x, lambda x: x)


# ------------------------------------------------------------------------------ scoring


def _beats(a: float, b: np.ndarray) -> np.ndarray:
    """1 where ``a`` out-scores ``b``, 0.5 on a tie (or a NaN), 0 below."""
    diff = a - b
    tie = ~np.isfinite(diff) | (np.abs(diff) <= TIE * (1.0 + np.abs(a) + np.abs(b)))
    return np.where(tie, 0.5, (diff > 0).astype(float))


def paired_auc(stats: Sequence[Sequence[Sequence[float]]], design: Design, s: int) -> np.ndarray:
    """Per item, the weighted share of its counterfactual texts that its true text out-scores
    on statistic ``s``."""
    out = np.empty(len(stats))
    for i, row in enumerate(stats):
        x = np.array([r[s] for r in row], dtype=float)
        w = np.asarray(design.weights[i], dtype=float)
        out[i] = float((_beats(x[0], x[1:]) * w).sum() / w.sum()) if w.size else 0.5
    return out


def shuffled_auc(stats: Sequence[Sequence[Sequence[float]]], s: int, rng: np.random.Generator) -> np.ndarray:
    """Per item, the paired AUC with a text drawn at random standing in for the member."""
    out = np.empty(len(stats))
    for i, row in enumerate(stats):
        x = np.array([r[s] for r in row], dtype=float)
        q = int(rng.integers(len(x)))
        out[i] = float(_beats(x[q], np.delete(x, q)).mean()) if len(x) > 1 else 0.5
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not pos.size or not neg.size:
        return None
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def roc_curve(stats: Sequence[Sequence[Sequence[float]]], s: int, points: int = 60) -> dict:
    """ROC of members vs counterfactuals on statistic ``s``, each text's value minus the mean
    of its item's texts (so the curve reads the paired comparison, not which prompt is easy)."""
    pos, neg = [], []
    for row in stats:
        x = np.array([r[s] for r in row], dtype=float)
        c = x - np.nanmean(x) if np.isfinite(x).any() else x
        pos.append(c[0])
        neg += c[1:].tolist()
    p, n = np.asarray(pos), np.asarray(neg)
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    if not p.size or not n.size:
        return {"fpr": [], "tpr": [], "auc": None}
    thr = np.unique(np.concatenate([p, n]))[::-1]
    if thr.size > points:
        thr = np.quantile(thr, np.linspace(1, 0, points))
    fpr = [0.0] + [float((n >= t).mean()) for t in thr] + [1.0]
    tpr = [0.0] + [float((p >= t).mean()) for t in thr] + [1.0]
    return {"fpr": fpr, "tpr": tpr, "auc": _auc(p, n)}


# ------------------------------------------------------------------------------ the lens


@register_lens("mia", MiaConfig, MiaData,
               "membership inference (Min-K%++, Min-K%, LOSS, zlib): true vs answer-swapped texts (support only)")
def mia_lens(ctx: AuditContext, cfg: MiaConfig) -> LensResult:
    """Paired membership-inference AUC of B, U and every reference on forget texts against
    answer-swapped counterfactuals, with retain items as the control."""
    t0 = time.perf_counter()
    roles = ctx.roles
    sets = {name: ctx.items[name] for name in ("forget", "retain") if ctx.items.get(name)}
    designs = {name: counterfactual_design(items, cfg.rounds, ctx.seed + (0 if name == "forget" else 7919))
               for name, items in sets.items()}
    stats: dict[str, dict[str, list]] = {name: {} for name in sets}
    seconds: dict[str, float] = {}
    for role in roles:  # one model at a time (--low-memory reads each model's weights once here)
        t = time.perf_counter()
        m = ctx.models[role]
        for name, items in sets.items():
            stats[name][role] = cached_statistics(m, items, designs[name], cfg.k, ctx.config.batch_size,
                                                  f"{role} model ({m.path}), {name} texts")
        seconds[role] = round(time.perf_counter() - t, 3)
    forget = ctx.items["forget"]
    n = len(forget)
    half = np.full(n, 0.5)
    null_name = "exchangeable counterfactuals (AUC 0.5)"
    per: dict[str, dict[str, np.ndarray]] = {
        st: {role: paired_auc(stats["forget"][role], designs["forget"], s) for role in roles}
        for s, st in enumerate(STATISTICS)}
    ret: dict[str, dict[str, float]] = {}
    if "retain" in sets:
        ret = {st: {role: float(paired_auc(stats["retain"][role], designs["retain"], s).mean()) for role in roles}
               for s, st in enumerate(STATISTICS)}
    recs: list[Recovery] = []
    readings: dict[str, dict[str, list[float]]] = {}
    for st in STATISTICS:
        name = reading_name(st)
        rec = ctx.recovery(per[st], reading=name, null=half, null_name=null_name, n_boot=cfg.n_boot)
        rec.kind = "support"
        if ret:
            rec.side_effect_ok = bool(ret[st]["base"] - ret[st]["unlearned"] <= cfg.side_effect_tolerance)
        recs.append(rec)
        readings[name] = {role: v.tolist() for role, v in per[st].items()} | (
            {} if ctx.has_reference else {"null": half.tolist()})
    primary = recs[0]
    controls: list[float] = []
    if cfg.n_controls and math.isfinite(primary.value):
        rng = np.random.default_rng(ctx.seed + 4242)
        span = primary.score_base - primary.score_reference
        for _ in range(cfg.n_controls):
            c = shuffled_auc(stats["forget"]["unlearned"], 0, rng).mean()
            controls.append(float((c - primary.score_reference) / span) if abs(span) > 1e-12 else math.nan)
        ok = [c for c in controls if math.isfinite(c)]
        if ok:
            primary.control_threshold = float(np.percentile(ok, 95))
            primary.excess = primary.value - primary.control_threshold
    notes = [
        "support only: every reading is shown but never read by the verdict until calibration shows this lens "
        "separates knowledge-present from knowledge-absent models at AUROC >= 0.8",
        "non-members are each forget prompt completed with other forget items' answers of the same attribute, "
        "swapped symmetrically: exchangeable with the true texts for a model that never learned the facts",
    ]
    fb = int(sum(designs["forget"].fallback))
    if fb:
        notes.append(f"{fb} forget item(s) had no other item's answer to swap in; their own distractors were used "
                     "(not exchangeable under a prior over answer values)")
    if ret and primary.side_effect_ok is False:
        notes.append(f"U's retain AUC ({ret[STATISTICS[0]]['unlearned']:.2f}) fell more than "
                     f"{cfg.side_effect_tolerance:g} below B's ({ret[STATISTICS[0]]['base']:.2f}): the statistic "
                     "itself changed in U, so a low forget reading is weaker evidence")
    notes += ctx.no_reference_notes("the end point is 0.5, the AUC of a model to which true and answer-swapped "
                                    "texts are exchangeable (a prior over answer values moves both sides alike)")
    d = designs["forget"]
    data = {
        "per_item": {"ids": [it.id for it in forget], "readings": readings},
        "primary": reading_name(STATISTICS[0]), "statistics": [reading_name(s) for s in STATISTICS], "k": cfg.k,
        "roles": roles,
        "score": {st: {role: float(v.mean()) for role, v in per[st].items()} for st in STATISTICS},
        "retain_score": ret,
        "pooled_auc": {st: {role: _auc(np.array([r[0][s] for r in stats["forget"][role]]),
                                       np.array([x[s] for r in stats["forget"][role] for x in r[1:]]))
                            for role in roles} for s, st in enumerate(STATISTICS)},
        "roc": {role: roc_curve(stats["forget"][role], 0) for role in roles},
        "controls": controls,
        "n_counterfactuals": float(np.mean([len(v) - 1 for v in d.values])) if d.values else 0.0,
        "fallback_items": fb,
        "texts": {name: sum(len(v) for v in designs[name].values) for name in sets},
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 3)},
    }
    return LensResult(name="mia", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
