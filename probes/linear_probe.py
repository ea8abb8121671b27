"""Linear probe lens: does a linear read-out of the activations still know the answers?

Two read-outs, one per item set (SPEC §3, §5 "open answers"; issues 3 and 17):

- **classifier** (closed answer sets): per layer, a scikit-learn ``LogisticRegression`` on
  standardised last-prompt-token activations predicts the answer *value*; an item counts
  as known when its answer gets the highest class score among its candidates. It can
  only read answers that repeat across items (city, sport, continent).
- **truth_probe** (any answer strings): per layer, the activation at the last token of
  ``prompt + candidate`` (the shared candidate encoding,
  :func:`audit.scoring.candidate_token_ids`) for the answer (label 1) and every
  distractor (label 0), centred on the item's mean over its candidates; one
  item-agnostic direction is fit (logistic regression on standardised features, or the
  difference of class means), and an item is scored by the answer's softmax share of the
  probe scores over its candidates (``soft``) or whether it outscores every distractor
  (``accuracy``).

``read_out: auto`` (the default) uses the classifier where the answers repeat enough for
it (:func:`_classifier_schemes`: at least ``min_closed_share`` of the scored items' answer
values occur among the training answers, and every training side holds two or more
values), and the truth probe otherwise. Each read-out runs two fitting schemes:

- **transfer**: fit on retain items, score forget items;
- **crossfit**: K-fold within forget items grouped by subject (no subject in both sides).

The identical probe is fit on each of B, U and N's own activations; a shuffled-label
probe (on U) is the control. A fold that cannot be fit (one class) is skipped and its
items left out of the reading, with a note. The reported reading per scheme is the best
informative layer, with its CI widened for the number of layers it was picked from.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit.activations import capture_candidates, capture_last_tokens
from audit.context import AuditContext
from audit.items import KnowledgeItem, items_hash
from audit.lensdata import LinearProbeConfig, LinearProbeData
from audit.models import LoadedModel, cached_json
from audit.registry import register_lens
from audit.schema import LensResult, Recovery
from audit.scoring import candidate_token_ids, encode_prompt

METRICS = ("accuracy", "soft")


# ---------------------------------------------------------------------------- classifier


def _labels(items: Sequence[KnowledgeItem], tokenizer) -> list[list[str]]:
    """Candidate labels per item (index 0 = answer): each candidate's token ids in the shared
    encoding, so ``" Paris"`` and ``"Paris"`` are one value."""
    return [[str(ids) for ids in candidate_token_ids(tokenizer, it)] for it in items]


def _probe(cfg: LinearProbeConfig, seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=seed))


def _rank_correct(clf, X: np.ndarray, cands: list[list[str]], metric: str = "accuracy") -> np.ndarray:
    """Per-item score from the probe's class scores over each item's candidates.

    ``accuracy``: 1 where the answer's score beats every distractor's; ``soft``: the
    answer's softmax share among the candidates. Classes the probe never saw score -inf.
    """
    scores = clf.decision_function(X)
    if scores.ndim == 1:  # binary problem: column for classes_[1]
        scores = np.stack([-scores, scores], 1)
    col = {c: i for i, c in enumerate(clf.classes_)}
    out = np.zeros(len(X))
    for i, row in enumerate(cands):
        s = np.array([scores[i, col[c]] if c in col else -np.inf for c in row])
        if metric == "soft":
            z = s - s[np.isfinite(s)].max() if np.isfinite(s).any() else s
            p = np.exp(z)
            out[i] = float(p[0] / p.sum()) if np.isfinite(s[0]) else 0.0
        else:
            out[i] = float(s[0] > s[1:].max())
    return out


def _folds(n_splits: int, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-grouped folds of the forget items (deterministic: GroupKFold)."""
    if n_splits < 2:
        return []
    idx = np.arange(len(groups))
    return list(GroupKFold(n_splits=n_splits).split(idx, idx, groups))


def _classifier_schemes(
    cf: list[list[str]], cr: list[list[str]], folds: list[tuple[np.ndarray, np.ndarray]], min_share: float,
) -> dict[str, str]:
    """Closed-set criterion: for each scheme, why the classifier cannot read it ("" = it can).

    A scheme is readable when every training side holds two or more answer values and at
    least ``min_share`` of the scored items' answer values occur among its training answers.
    """
    ans_f = [c[0] for c in cf]
    why: dict[str, str] = {}
    train_r = {c[0] for c in cr}
    share = float(np.mean([a in train_r for a in ans_f])) if ans_f else 0.0
    why["transfer"] = ("" if len(train_r) >= 2 and share >= min_share else
                       f"{share:.0%} of forget answers are retain answers ({len(train_r)} retain answer values)")
    if not folds:
        why["crossfit"] = "fewer than 2 subjects"
    else:
        hit, one_class = 0, 0
        for tr, te in folds:
            seen = {ans_f[i] for i in tr}
            one_class += len(seen) < 2
            hit += sum(ans_f[i] in seen for i in te)
        share = hit / len(ans_f)
        why["crossfit"] = ("" if not one_class and share >= min_share else
                           f"{share:.0%} of forget answers occur in their training folds, {one_class} fold(s) "
                           "with one answer value")
    return why


# ---------------------------------------------------------------------------- truth probe


def _label_history_bias(test: list[list[str]], train: list[list[str]]) -> float:
    """Share of ``test`` items with a candidate that the ``train`` items label one way only.

    Candidates are compared by their own part: their token ids less the prefix and suffix
    that all the item's candidates share (in ``"the birth town of Ann is Leeds ."`` only
    ``Leeds``). A part that the training rows hold only as an answer, or only as a
    distractor, carries that label into any probe that can see a candidate's identity: a
    held-out answer seen in training only as a distractor reads below chance, a distractor
    seen only as a distractor lifts the answer, for a model that knows nothing as much as
    for B.
    """
    if not test:
        return 0.0

    def own(c: list[str]) -> list[tuple[int, ...]]:
        toks = [list(ast.literal_eval(v)) for v in c]
        if len(toks) < 2:
            return [tuple(t) for t in toks]
        a = _common_prefix(toks)
        rev = [t[a:][::-1] for t in toks]
        b = _common_prefix(rev) if all(rev) else 0
        return [tuple(t[a : len(t) - b]) for t in toks]

    true: set[tuple[int, ...]] = set()
    false: set[tuple[int, ...]] = set()
    for c in train:
        t = own(c)
        true.add(t[0])
        false.update(t[1:])
    one_sided = true ^ false
    return sum(any(v in one_sided for v in own(c)) for c in test) / len(test)


def _common_prefix(cands: list[list[int]]) -> int:
    """Length of the token prefix every candidate shares (never a whole candidate)."""
    n = min(len(c) for c in cands) - 1
    k = 0
    while k < n and all(c[k] == cands[0][k] for c in cands):
        k += 1
    return k


def _center_items(X: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Subtract each item's mean over its candidates' rows."""
    _, j = np.unique(item, return_inverse=True)
    sums = np.zeros((int(j.max()) + 1 if len(j) else 0, X.shape[1]))
    np.add.at(sums, j, X)
    return X - (sums / np.bincount(j)[:, None])[j]


def _truth_features(
    item: np.ndarray, center: bool, cand_act: np.ndarray | None = None, prompt_last: np.ndarray | None = None,
    cand_emb: np.ndarray | None = None,
) -> np.ndarray:
    """Rows (item × candidate) of truth-probe features at one layer.

    ``cand_act``: the activation at the last token of ``prompt + candidate``;
    ``prompt_last`` (per item) × ``cand_emb`` (per row): the prompt's last-token activation
    times the candidate's input embedding, elementwise (a diagonal bilinear form once the
    probe weights it). Centred per item on the mean over its candidates when ``center``.
    """
    blocks = []
    if cand_act is not None:
        blocks.append(cand_act.astype(np.float64))
    if prompt_last is not None and cand_emb is not None:
        blocks.append(prompt_last[item] * cand_emb)
    X = np.concatenate(blocks, 1)
    return _center_items(X, item) if center else X


def _item_softmax_share(s: np.ndarray, item: np.ndarray, cand: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the answer's softmax share of ``s`` over its candidates, and whether it beats them all."""
    top = np.full(n, -np.inf)
    np.maximum.at(top, item, s)
    e = np.exp(s - top[item])
    den = np.zeros(n)
    np.add.at(den, item, e)
    ans = cand == 0
    soft = np.zeros(n)
    soft[item[ans]] = e[ans] / den[item[ans]]
    best_d = np.full(n, -np.inf)
    np.maximum.at(best_d, item[~ans], s[~ans])
    acc = np.zeros(n)
    acc[item[ans]] = (s[ans] > best_d[item[ans]]).astype(float)
    return soft, acc


def _truth_fit(
    cfg: LinearProbeConfig, X: np.ndarray, item: np.ndarray, cand: np.ndarray, seed: int,
    shuffle_rng: np.random.Generator | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """One item-agnostic truth direction fit on ``X`` (rows: item × candidate); ``None`` if
    the rows hold one class only. A shuffled control labels a random candidate of each item true."""
    if shuffle_rng is not None:
        items = np.unique(item)
        counts = np.bincount(item)[items]
        true_c = {i: int(shuffle_rng.integers(k)) for i, k in zip(items, counts, strict=True)}
        y = np.array([c == true_c[i] for i, c in zip(item, cand, strict=True)])
    else:
        y = cand == 0
    if y.all() or not y.any():
        return None
    if cfg.truth_fit == "logistic":
        clf = _probe(cfg, seed).fit(X, y)
        return clf.decision_function
    sc = StandardScaler().fit(X)
    Z = sc.transform(X)
    w = Z[y].mean(0) - Z[~y].mean(0)
    s = Z @ w
    # the temperature that best explains the training items' answers (the soft score needs a scale)
    n = int(item.max()) + 1
    ans_item = item[y]
    best_t, best_ll = 1.0, -np.inf
    for t in np.logspace(-4, 1, 26):
        soft, _ = _item_softmax_share(t * s, item, np.where(y, 0, 1), n)
        ll = float(np.log(np.maximum(soft[ans_item], 1e-12)).sum())
        if ll > best_ll:
            best_t, best_ll = float(t), ll
    return lambda Xn: best_t * (sc.transform(Xn) @ w)


# ---------------------------------------------------------------------------- the lens

PROBE_CACHE_VERSION = "probe-reads-1"
"""Bump when a change to the probe fits changes what a reading holds (invalidates the cache)."""

Reads = dict[str, list[dict[str, np.ndarray]]]


def _cached_reads(model: LoadedModel, parts: list[str], compute: Callable[[], Reads]) -> Reads:
    """``compute()`` (per scheme, per layer, per metric: the items' scores) of one model,
    through :func:`audit.models.cached_json` (NaN, an unscored item, is stored as null)."""
    return cached_json(
        model, "linear_probe", parts, compute,
        lambda out: {s: [{m: [None if not np.isfinite(x) else float(x) for x in v] for m, v in per.items()}
                         for per in layers] for s, layers in out.items()},
        lambda d: {s: [{m: np.array([np.nan if x is None else x for x in v], dtype=float) for m, v in per.items()}
                       for per in layers] for s, layers in d.items()})


@register_lens("linear_probe", LinearProbeConfig, LinearProbeData,
               "linear probes per layer: answer classifier on closed sets, contrastive truth probe on open answers")
def linear_probe(ctx: AuditContext, cfg: LinearProbeConfig) -> LensResult:
    """Per-layer probe knowledge score on B, U, N for both schemes, with shuffled controls."""
    forget, retain = ctx.items["forget"], ctx.items["retain"]
    tok = ctx.models["base"].tokenizer
    notes: list[str] = []
    cf, cr = _labels(forget, tok), _labels(retain, tok)
    groups = np.array([it.subject or it.id for it in forget])
    n_groups = len(set(groups))
    n_folds = min(cfg.folds, n_groups)
    folds = _folds(n_folds, groups)
    if 2 <= n_folds < cfg.folds:
        notes.append(f"only {n_groups} subjects: cross-fitting uses {n_folds} folds")
    why = _classifier_schemes(cf, cr, folds, cfg.min_closed_share)
    read_out = cfg.read_out
    if read_out == "auto":
        read_out = "classifier" if any(v == "" for v in why.values()) else "truth_probe"
        if read_out == "truth_probe":
            notes.append("open answers (" + "; ".join(f"{s}: {w}" for s, w in why.items())
                         + "): the contrastive truth probe reads them")
    roles = ctx.roles
    L = ctx.n_layers
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(L)]

    # every reader returns per-metric per-item scores over the forget items (NaN: not scored)
    readers: dict[str, Callable[[str, int, np.random.Generator | None], dict[str, np.ndarray]]] = {}
    rows_f = np.arange(len(forget))
    truth_bias: dict[str, float] = {}
    if read_out == "classifier":
        schemes = [s for s in ("transfer", "crossfit") if why[s] == ""]
        if cfg.read_out == "classifier":  # forced: run whatever can be fit
            schemes = ["transfer"] * any(c[0] in {r[0] for r in cr} for c in cf) + ["crossfit"] * bool(folds)
        for s in ("transfer", "crossfit"):
            if s not in schemes:
                notes.append(f"classifier {s} skipped: {why[s] or 'no forget answer among its training answers'}")

        def feats(role: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
            af, ar = ctx.activations(role, "forget"), ctx.activations(role, "retain")
            src_f = af.last if cfg.position == "last" else af.mean
            src_r = ar.last if cfg.position == "last" else ar.mean
            return src_f[hooks[layer]].numpy(), src_r[hooks[layer]].numpy()

        def cls_transfer(role, layer, rng):
            Xf, Xr = feats(role, layer)
            y = np.array([c[0] for c in cr])
            if rng is not None:
                y = rng.permutation(y)
            if len(set(y)) < 2:
                return {m: np.full(len(cf), np.nan) for m in METRICS}
            clf = _probe(cfg, ctx.seed).fit(Xr, y)
            return {m: _rank_correct(clf, Xf, cf, m) for m in METRICS}

        def cls_crossfit(role, layer, rng):
            Xf, _ = feats(role, layer)
            y = np.array([c[0] for c in cf])
            out = {m: np.full(len(cf), np.nan) for m in METRICS}
            for tr, te in folds:
                ytr = rng.permutation(y[tr]) if rng is not None else y[tr]
                if len(set(ytr)) < 2:
                    continue  # one answer value: nothing to classify, the fold's items go unscored
                clf = _probe(cfg, ctx.seed).fit(Xf[tr], ytr)
                for m in out:
                    out[m][te] = _rank_correct(clf, Xf[te], [cf[i] for i in te], m)
            return out

        readers = {"transfer": cls_transfer, "crossfit": cls_crossfit}
        readers = {s: readers[s] for s in schemes}
    else:
        rng0 = np.random.default_rng(ctx.seed)
        if len(forget) > cfg.max_items:
            rows_f = np.sort(rng0.choice(len(forget), cfg.max_items, replace=False))
            notes.append(f"truth probe: {cfg.max_items} of {len(forget)} forget items scored (max_items)")
        ret_items, keep = list(retain), None
        if len(retain) > cfg.max_items:
            keep = np.sort(rng0.choice(len(retain), cfg.max_items, replace=False))
            ret_items = [retain[i] for i in keep]
            notes.append(f"truth probe: fit on {cfg.max_items} of {len(retain)} retain items (max_items)")
        f_items = [forget[i] for i in rows_f]
        nf_all = len(forget)
        sets = {"forget": (f_items, rows_f if nf_all > len(rows_f) else None), "retain": (ret_items, keep)}
        feat_cache: dict[tuple[str, str], tuple] = {}

        def truth_rows(role: str, which: str):
            """(candidate activations or None, item, candidate, prompt last-token acts by hook, candidate embeddings)."""
            if (role, which) not in feat_cache:
                m = ctx.models[role]
                its = sets[which][0]
                ids = [candidate_token_ids(m.tokenizer, it) for it in its]
                item = np.array([i for i, row in enumerate(ids) for _ in row])
                cand = np.array([j for row in ids for j in range(len(row))])
                ca = (capture_candidates(m, its, hooks, batch_size=ctx.config.batch_size,
                                         cache_dir=ctx.config.cache_dir)
                      if cfg.truth_features in ("both", "candidate") else None)
                pl, emb = None, None
                if cfg.truth_features in ("both", "interaction"):
                    # where the model must produce the first token that tells the candidates
                    # apart: the prompt plus the prefix every candidate shares (the prompt's
                    # last token for one-token or differently starting answers)
                    pre = [_common_prefix(row) for row in ids]
                    ctx_seqs = [encode_prompt(m.tokenizer, it.prompt) + row[0][:k]
                                for it, row, k in zip(its, ids, pre, strict=True)]
                    acts = capture_last_tokens(m, ctx_seqs, hooks, ctx.config.batch_size, [it.id for it in its])
                    pl = {h: acts[h].numpy().astype(np.float64) for h in hooks}
                    w = m.hf.get_input_embeddings().weight.detach().float().cpu().numpy()
                    emb = np.stack([w[c[k:] or c[-1:]].mean(0) for row, k in zip(ids, pre, strict=True)
                                    for c in row]).astype(np.float64)
                feat_cache[(role, which)] = (ca, item, cand, pl, emb)
            return feat_cache[(role, which)]

        def features(role: str, which: str, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            ca, item, cand, pl, emb = truth_rows(role, which)
            h = hooks[layer]
            X = _truth_features(item, cfg.truth_center, None if ca is None else ca.last[h].numpy(),
                                None if pl is None else pl[h], emb)
            return X, item, cand

        nf = len(rows_f)
        g_f = groups[rows_f]
        t_folds = _folds(min(cfg.folds, len(set(g_f))), g_f)
        cf_t = [cf[i] for i in rows_f]
        cr_t = cr if keep is None else [cr[i] for i in keep]
        bias = {"transfer": _label_history_bias(cf_t, cr_t) if ret_items else float("nan"),
                "crossfit": (sum(_label_history_bias([cf_t[i] for i in te], [cf_t[i] for i in tr]) * len(te)
                                 for tr, te in t_folds) / nf) if t_folds else float("nan")}
        schemes = []
        for s, possible, why_not in (("transfer", bool(ret_items), "no retain items"),
                               ("crossfit", bool(t_folds), "fewer than 2 subjects among the forget items")):
            if not possible:
                notes.append(f"truth probe {s} skipped: {why_not}")
            elif bias[s] > cfg.max_label_history:
                notes.append(f"truth probe {s} skipped: on {bias[s]:.0%} of the scored items a candidate's value "
                             "is labelled one way only in the training items (e.g. the answer occurs there only as "
                             "a distractor), so a probe would learn the values' labels, not truth "
                             f"(max_label_history {cfg.max_label_history})")
            else:
                schemes.append(s)

        def truth_transfer(role, layer, rng):
            Xr, ir, cr_ = features(role, "retain", layer)
            Xf, i_f, c_f = features(role, "forget", layer)
            fit = _truth_fit(cfg, Xr, ir, cr_, ctx.seed, rng)
            if fit is None:
                return {m: np.full(nf, np.nan) for m in METRICS}
            soft, acc = _item_softmax_share(fit(Xf), i_f, c_f, nf)
            return {"soft": soft, "accuracy": acc}

        def truth_crossfit(role, layer, rng):
            X, item, cand = features(role, "forget", layer)
            out = {m: np.full(nf, np.nan) for m in METRICS}
            for tr, te in t_folds:
                rtr, rte = np.isin(item, tr), np.isin(item, te)
                fit = _truth_fit(cfg, X[rtr], item[rtr], cand[rtr], ctx.seed, rng)
                if fit is None:
                    continue
                soft, acc = _item_softmax_share(fit(X[rte]), item[rte], cand[rte], nf)
                out["soft"][te], out["accuracy"][te] = soft[te], acc[te]
            return out

        readers = {"transfer": truth_transfer, "crossfit": truth_crossfit}
        truth_bias = {k: round(v, 4) for k, v in bias.items() if np.isfinite(v)}
        readers = {s: readers[s] for s in schemes}

    base_data = {"read_out": read_out, "label_history_bias": truth_bias, "first_token_labels": False, "metric": cfg.metric,
                 "chance": float(ctx.chance("forget")[rows_f].mean()) if len(rows_f) else None,
                 "classifier_criterion": why}
    retain_answers = {r[0] for r in cr}
    shared = float(np.mean([c[0] in retain_answers for c in cf])) if cf else 0.0
    if not readers and cfg.read_out == "auto" and read_out == "truth_probe" and shared >= 0.25:
        # the answers repeat, only too few of them fall in the training items for the
        # criterion (e.g. a small sample of a closed set: at least a quarter of the forget
        # answers are retain answers): the classifier reads what it can, as before
        res = linear_probe(ctx, cfg.model_copy(update={"read_out": "classifier"}))
        res.config = cfg.model_dump()
        res.notes = [*notes, "no truth-probe scheme can be fit: the closed-set classifier reads the answers that "
                     "its training items share", *res.notes]
        return res
    if not readers:
        notes.append(f"no {read_out} scheme can be fit on these items: the lens reads nothing (uninformative)")
        # empty curves (gaps) rather than no panel: the report draws one panel per scheme
        empty = {f"{s}_{m}": {r: [None] * L for r in roles} for s in ("transfer", "crossfit") for m in METRICS}
        return LensResult(name="linear_probe", config=cfg.model_dump(), recoveries=[], notes=notes,
                          data={**base_data, "per_layer": empty, "layer_recoveries": {}, "primary_layers": {}})

    per_layer: dict[str, dict[str, list[float | None]]] = {f"{s}_{m}": {r: [] for r in roles} for s in readers for m in METRICS}
    correct: dict[tuple[str, str, int], np.ndarray] = {}
    scored: dict[str, np.ndarray] = {}
    # each model's own probe readings depend on nothing but its checkpoint, the items and the
    # settings: cached on disk, so B's and N's fits are made once for every U audited against them
    parts = [PROBE_CACHE_VERSION, f"sklearn {sklearn.__version__}", items_hash(forget), items_hash(retain), read_out, repr(tuple(readers)), str(L),
             str(ctx.seed), str(ctx.config.batch_size), repr(rows_f.tolist()),
             cfg.model_copy(update={"n_shuffles": 0}).model_dump_json()]

    def own_reads(role: str) -> Reads:
        return {s: [read(role, layer, None) for layer in range(L)] for s, read in readers.items()}

    for role in roles:
        reads = _cached_reads(ctx.models[role], parts, partial(own_reads, role))
        for layer in range(L):
            for s in readers:
                c = reads[s][layer]
                ok = np.isfinite(c[cfg.metric])
                scored.setdefault(s, ok)
                correct[(s, role, layer)] = c[cfg.metric]
                for m, v in c.items():
                    per_layer[f"{s}_{m}"][role].append(float(v[ok].mean()) if ok.any() else None)
    for s, ok in scored.items():
        if not ok.all():
            notes.append(f"{read_out} {s}: {int((~ok).sum())} of {len(ok)} items in folds that could not be fit "
                         "(one class) are left out of the reading")
    readers = {s: r for s, r in readers.items() if scored[s].any()}
    if not readers:
        notes.append(f"no {read_out} fold could be fit: the lens reads nothing (uninformative)")
        return LensResult(name="linear_probe", config=cfg.model_dump(), recoveries=[], notes=notes,
                          data={**base_data, "per_layer": per_layer, "layer_recoveries": {}, "primary_layers": {}})
    schemes_t = tuple(readers)

    def rows_of(scheme: str) -> np.ndarray | None:
        idx = rows_f[scored[scheme]]
        return None if len(idx) == len(forget) else idx

    def control(scheme: str, layer: int, r: Recovery) -> None:
        """Shuffled-label probes on U at ``layer``: their recovery's 95th percentile."""
        ctrl = []
        ok = scored[scheme]
        shuffled = _cached_reads(
            ctx.models["unlearned"], [*parts, f"control {scheme} {layer} {cfg.n_shuffles}"],
            lambda: {"control": [readers[scheme]("unlearned", layer, np.random.default_rng(ctx.seed + 1000 + k))
                                 for k in range(cfg.n_shuffles)]})["control"]
        for k in range(cfg.n_shuffles):
            c = shuffled[k][cfg.metric][ok]
            if np.isfinite(c).all():
                ctrl.append((c.mean() - r.score_reference) / max(1e-9, r.score_base - r.score_reference))
        if ctrl:
            r.control_threshold = float(np.percentile(ctrl, 95))
            r.excess = r.value - r.control_threshold

    def rec(scheme: str, layer: int, n_compared: int = 1) -> Recovery:
        ok = scored[scheme]
        return ctx.recovery({r: correct[(scheme, r, layer)][ok] for r in roles}, rows=rows_of(scheme),
                            reading=f"{read_out} {scheme} layer {layer}", n_compared=n_compared)

    rows = {s: [rec(s, layer) for layer in range(L)] for s in schemes_t}
    layer_recs = {s: [r.model_dump() for r in rows[s]] for s in schemes_t}
    recs: list[Recovery] = []
    chosen: dict[str, int] = {}
    # primary: the (scheme, layer) where the probe best separates B from N, chosen without U
    ps, pl = max(((s, i) for s in schemes_t for i in range(L)),
                 key=lambda x: rows[x[0]][x[1]].score_base - rows[x[0]][x[1]].score_reference)
    primary = rows[ps][pl].model_copy()
    primary.reading = f"{read_out} {ps} @ layer {pl} (most powerful)"
    control(ps, pl, primary)
    recs.append(primary)
    chosen[ps] = pl
    # scans: per scheme, the best informative layer by recovery, CI widened for all readings
    for scheme in schemes_t:
        informative = [i for i in range(L) if rows[scheme][i].informative and np.isfinite(rows[scheme][i].value)]
        if not informative:
            continue
        s_layer = max(informative, key=lambda i: rows[scheme][i].value)
        scan = rec(scheme, s_layer, n_compared=len(schemes_t) * L)
        scan.reading = f"{read_out} {scheme}, best of {L} layers (layer {s_layer})"
        scan.kind = "scan"
        control(scheme, s_layer, scan)
        recs.append(scan)
        chosen.setdefault(scheme, s_layer)
    ok = scored[ps]
    return LensResult(
        name="linear_probe", config=cfg.model_dump(), recoveries=recs, notes=notes,
        data={**base_data, "per_layer": per_layer, "layer_recoveries": layer_recs, "primary_layers": chosen,
              "per_item": {"ids": [forget[i].id for i in rows_f[ok]], "readings": {
                  primary.reading: {r: np.round(correct[(ps, r, pl)][ok], 4).tolist() for r in roles}}}},
    )
