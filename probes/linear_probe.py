"""Linear probe lens: does a linear read-out of the activations still know the answers?

Per layer, a scikit-learn ``LogisticRegression`` on standardised last-prompt-token
activations predicts the answer; an item counts as known when the true answer gets the
highest class score among its candidates (the knowledge score, read from the probe).
Two fitting schemes (SPEC §3, issue 3):

- **transfer**: fit on retain items, score forget items;
- **crossfit**: K-fold within forget items grouped by subject (no subject in both sides).

The identical probe runs on B, U and N; a shuffled-label probe is the control. The
reported reading per scheme is the best informative layer, with its CI widened for the
number of layers it was picked from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit.context import AuditContext
from audit.items import KnowledgeItem
from audit.registry import LensConfig, register_lens
from audit.schema import LensResult, Recovery


class LinearProbeConfig(LensConfig):
    C: float = 1.0
    """Inverse L2 regularisation strength of the logistic regression."""
    folds: int = 5
    """Folds for cross-fitting within forget items (grouped by subject)."""
    position: str = "last"
    """Activation read-out: ``last`` prompt token or ``mean`` over prompt tokens."""
    n_shuffles: int = 5
    """Shuffled-label control probes per scheme."""
    max_iter: int = 2000
    """Solver iterations."""
    metric: str = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's share of the probe's
    probability over the item's candidates; far less noisy near chance) or ``accuracy``
    (1 if the answer outranks every distractor). Per-layer curves show both."""


def _labels(items: Sequence[KnowledgeItem], tokenizer, first_token: bool) -> list[list[str]]:
    """Candidate labels per item (index 0 = answer): the strings, or their first tokens."""
    if not first_token:
        return [it.candidates for it in items]
    out = []
    for it in items:
        out.append([str(tokenizer(" " + c, add_special_tokens=False)["input_ids"][:1]) for c in it.candidates])
    return out


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


def _transfer(cfg, Xr, yr, Xf, cf, seed, shuffle_rng=None) -> dict[str, np.ndarray]:
    y = np.array([c[0] for c in yr])
    if shuffle_rng is not None:
        y = shuffle_rng.permutation(y)
    clf = _probe(cfg, seed).fit(Xr, y)
    return {m: _rank_correct(clf, Xf, cf, m) for m in ("accuracy", "soft")}


def _crossfit(cfg, Xf, cf, groups, seed, shuffle_rng=None) -> dict[str, np.ndarray]:
    y = np.array([c[0] for c in cf])
    out = {m: np.zeros(len(Xf)) for m in ("accuracy", "soft")}
    for tr, te in GroupKFold(n_splits=cfg.folds).split(Xf, y, groups):
        ytr = shuffle_rng.permutation(y[tr]) if shuffle_rng is not None else y[tr]
        if len(set(ytr)) < 2:
            continue
        clf = _probe(cfg, seed).fit(Xf[tr], ytr)
        for m in out:
            out[m][te] = _rank_correct(clf, Xf[te], [cf[i] for i in te], m)
    return out


@register_lens("linear_probe", LinearProbeConfig, "logistic-regression probes per layer on last-token activations")
def linear_probe(ctx: AuditContext, cfg: LinearProbeConfig) -> LensResult:
    """Per-layer probe knowledge score on B, U, N for both schemes, with shuffled controls."""
    forget, retain = ctx.items["forget"], ctx.items["retain"]
    tok = ctx.models["base"].tokenizer
    retain_answers = {it.answer for it in retain}
    first_token = not all(it.answer in retain_answers for it in forget)
    notes = []
    if first_token:
        notes.append("forget answers are not all among retain answers (not a closed set): the probe "
                     "predicts and ranks the answers' first tokens instead")
    cf, cr = _labels(forget, tok, first_token), _labels(retain, tok, first_token)
    retain_labels = {c[0] for c in cr}
    schemes: tuple[str, ...] = ("transfer", "crossfit")
    if not any(c[0] in retain_labels for c in cf):
        schemes = ("crossfit",)
        notes.append("no forget answer is a retain answer (e.g. a different relation): a probe fit on retain "
                     "items cannot rank forget candidates, so only the cross-fitted probe is run")
    groups = np.array([it.subject or it.id for it in forget])
    n_groups = len(set(groups))
    folds = min(cfg.folds, n_groups)
    if folds < cfg.folds:
        notes.append(f"only {n_groups} subjects: cross-fitting uses {folds} folds")
    cfg_cf = cfg.model_copy(update={"folds": folds})
    roles = ctx.roles
    L = ctx.n_layers
    per_layer: dict[str, dict[str, list[float]]] = {
        f"{s}_{m}": {r: [] for r in roles} for s in schemes for m in ("accuracy", "soft")
    }
    correct: dict[tuple[str, str, int], np.ndarray] = {}
    for role in roles:
        af, ar = ctx.activations(role, "forget"), ctx.activations(role, "retain")
        src_f = af.last if cfg.position == "last" else af.mean
        src_r = ar.last if cfg.position == "last" else ar.mean
        for layer, hook in enumerate(af.hooks):
            Xf, Xr = src_f[hook].numpy(), src_r[hook].numpy()
            for scheme in schemes:
                c = (_transfer(cfg, Xr, cr, Xf, cf, ctx.seed) if scheme == "transfer"
                     else _crossfit(cfg_cf, Xf, cf, groups, ctx.seed))
                correct[(scheme, role, layer)] = c[cfg.metric]
                for m, v in c.items():
                    per_layer[f"{scheme}_{m}"][role].append(float(v.mean()))
    chance = ctx.chance("forget")
    recs: list[Recovery] = []
    chosen: dict[str, int] = {}

    def control(scheme: str, layer: int, r: Recovery) -> None:
        """Shuffled-label probes on U at ``layer``: their recovery's 95th percentile."""
        hook = f"blocks.{layer}.hook_resid_post"
        af, ar = ctx.activations("unlearned", "forget"), ctx.activations("unlearned", "retain")
        Xf = (af.last if cfg.position == "last" else af.mean)[hook].numpy()
        Xr = (ar.last if cfg.position == "last" else ar.mean)[hook].numpy()
        ctrl = []
        for k in range(cfg.n_shuffles):
            rng = np.random.default_rng(ctx.seed + 1000 + k)
            c = (_transfer(cfg, Xr, cr, Xf, cf, ctx.seed, rng) if scheme == "transfer"
                 else _crossfit(cfg_cf, Xf, cf, groups, ctx.seed, rng))
            ctrl.append((c[cfg.metric].mean() - r.score_reference) / max(1e-9, r.score_base - r.score_reference))
        if ctrl:
            r.control_threshold = float(np.percentile(ctrl, 95))
            r.excess = r.value - r.control_threshold

    def rec(scheme: str, layer: int, n_compared: int = 1) -> Recovery:
        return ctx.recovery({r: correct[(scheme, r, layer)] for r in roles}, reading=f"{scheme} layer {layer}",
                            n_compared=n_compared)

    rows = {s: [rec(s, layer) for layer in range(L)] for s in schemes}
    layer_recs = {s: [r.model_dump() for r in rows[s]] for s in schemes}
    # primary: the (scheme, layer) where the probe best separates B from N, chosen without U
    ps, pl = max(((s, i) for s in schemes for i in range(L)),
                 key=lambda x: rows[x[0]][x[1]].score_base - rows[x[0]][x[1]].score_reference)
    primary = rows[ps][pl].model_copy()
    primary.reading = f"{ps} @ layer {pl} (most powerful)"
    control(ps, pl, primary)
    recs.append(primary)
    chosen[ps] = pl
    # scans: per scheme, the best informative layer by recovery, CI widened for all readings
    for scheme in schemes:
        informative = [i for i in range(L) if rows[scheme][i].informative and np.isfinite(rows[scheme][i].value)]
        if not informative:
            continue
        s_layer = max(informative, key=lambda i: rows[scheme][i].value)
        scan = rec(scheme, s_layer, n_compared=len(schemes) * L)
        scan.reading = f"{scheme}, best of {L} layers (layer {s_layer})"
        scan.kind = "scan"
        control(scheme, s_layer, scan)
        recs.append(scan)
        chosen.setdefault(scheme, s_layer)
    return LensResult(
        name="linear_probe", config=cfg.model_dump(), recoveries=recs, notes=notes,
        data={"per_layer": per_layer, "layer_recoveries": layer_recs, "first_token_labels": first_token,
              "chance": float(chance.mean()), "metric": cfg.metric, "primary_layers": chosen,
              "per_item": {"ids": [it.id for it in forget], "readings": {
                  primary.reading: {r: np.round(correct[(ps, r, pl)], 4).tolist() for r in roles}}}},
    )
