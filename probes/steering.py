"""Steering restoration lens: does one item-agnostic direction bring the knowledge back?

SPEC §4.1–4.4, issue 3. A direction is one vector for all items, estimated from one
part of the forget items (split by subject) and evaluated on the others; it is never
fitted per item. Candidates, each estimated from the last prompt token and from the
mean over prompt tokens (suppression can sit on the subject's tokens):

- ``base_minus_unlearned``: ``mean(h_B) - mean(h_U)`` on forget prompts (Łucki et al.);
  added (moving U towards B) or ablated (``h - (h·d̂)d̂``);
- ``forget_minus_retain``: ``mean(h_U | forget) - mean(h_U | retain)``, needing no base;
  added with both signs, or ablated;
- ``random``: a placebo, a fixed random direction put through the whole procedure.

Every intervention acts at every position of one residual site: the embedding output
(``hook_embed``, the input of block 0, where an edit of the token embeddings lives) or
``blocks.{l}.hook_resid_post``. Additive scales are in units of the site's typical
residual norm (U's last-token norm on retain prompts), so every direction at a site and
scale shares one set of norm-matched random controls (SPEC §4.2).

The procedure is cross-fitted: forget items are split into folds by subject; the
directions applied to fold ``e`` are fitted on the other folds, and the setting (site,
candidate, form, scale) reported on fold ``e`` is the one with the largest excess over
its controls, among settings within the side-effect tolerance, *on the other folds*. So
no item's outcome helps choose the setting it is scored with, and every forget item is
scored once, out of fold. The same procedure, with N in U's place, gives the end point.

The items are scored under the interventions by :mod:`audit.intervene` (resumed forward,
every setting and control as replicas of one batch), and the per-fold choice, control
threshold and dose-response rows are :mod:`audit.crossfit`'s, shared with the SAE lens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from audit.context import AuditContext
from audit.crossfit import Sweep, edited_per_item, edited_recovery, require_folds, subject_folds
from audit.errors import LensError
from audit.intervene import PreparedItems, item_metrics, per_fold_scores, unedited
from audit.lensdata import SteeringConfig, SteeringData
from audit.progress import progress
from audit.registry import register_lens
from audit.schema import LensResult
from audit.scoring import encode_prompt, pad_batch, pad_id_of

EMBED = "hook_embed"
Direction = Literal["base_minus_unlearned", "forget_minus_retain", "random"]


@dataclass(frozen=True)
class Setting:
    """One intervention recipe: applied to any model, with that model's own direction."""

    site: str
    direction: str
    pooling: str
    form: str  # "add" or "ablate"
    scale: float  # signed, in units of the site's residual norm; 0 for ablation

    @property
    def control_key(self) -> tuple[str, str, float]:
        return (self.site, self.form, abs(self.scale))

    def label(self) -> str:
        site = "embed" if self.site == EMBED else f"L{self.site.split('.')[1]}"
        pool = "" if self.direction == "random" else f" ({self.pooling})"
        how = "ablate" if self.form == "ablate" else f"add {self.scale:+g}×|h|"
        return f"{how} {self.direction}{pool} @ {site}"


# ------------------------------------------------------------------------- directions

class _Acts:
    """Pooled activations at the steering sites, from the shared cache.

    The embedding site is read by the bridge's own embedding module (no forward pass),
    pooled as :mod:`audit.activations` pools the residual stream.
    """

    def __init__(self, ctx: AuditContext) -> None:
        self.ctx = ctx
        self._embed: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def _embed_acts(self, role: str, item_set: str) -> tuple[Tensor, Tensor]:
        key = (role, item_set)
        if key not in self._embed:
            m = self.ctx.models[role]
            prompts = [encode_prompt(m.tokenizer, it.prompt) for it in self.ctx.items[item_set]]
            last, mean = [], []
            for s in range(0, len(prompts), 64):
                ids, mask = pad_batch(prompts[s : s + 64], pad_id_of(m.tokenizer), m.device)
                act = m.bridge.embed(ids).float()
                lengths = mask.sum(1)
                pool = mask.clone().float()
                pool[:, 0] = torch.where(lengths > 1, 0.0, 1.0)
                last.append(act[torch.arange(len(ids), device=act.device), lengths - 1].cpu())
                mean.append(((act * pool[..., None]).sum(1) / pool.sum(1, keepdim=True)).cpu())
            self._embed[key] = (torch.cat(last), torch.cat(mean))
        return self._embed[key]

    def get(self, role: str, item_set: str, site: str, pooling: str) -> Float[Tensor, "item d_model"]:
        if site == EMBED:
            last, mean = self._embed_acts(role, item_set)
            return (last if pooling == "last" else mean).float()
        a = self.ctx.activations(role, item_set)
        return (a.last if pooling == "last" else a.mean)[site].float()

    def scale(self, role: str, site: str) -> float:
        """Typical residual norm at a site: mean last-token norm on retain prompts."""
        return float(self.get(role, "retain", site, "last").norm(dim=-1).mean())


def _raw_direction(
    acts: _Acts, role: str, setting: Setting, fit_f: np.ndarray, fit_r: np.ndarray, rand: dict[str, Tensor]
) -> Tensor:
    """The un-normalised direction of ``setting`` for model ``role``, from fit items only."""
    if setting.direction == "random":
        return rand[setting.site]
    own = acts.get(role, "forget", setting.site, setting.pooling)[torch.from_numpy(fit_f)].mean(0)
    if setting.direction == "base_minus_unlearned":
        base = acts.get("base", "forget", setting.site, setting.pooling)[torch.from_numpy(fit_f)].mean(0)
        return base - own
    retain = acts.get(role, "retain", setting.site, setting.pooling)[torch.from_numpy(fit_r)].mean(0)
    return own - retain


def _intervention(d: Tensor, setting: Setting, rho: float) -> tuple[Tensor, Tensor] | None:
    """(additive vector, ablation unit vector) of a setting; None for a zero direction."""
    norm = float(d.norm())
    if not np.isfinite(norm) or norm <= 1e-6 * max(rho, 1e-12):
        return None
    unit = d / norm
    zero = torch.zeros_like(d)
    if setting.form == "ablate":
        return zero, unit
    return setting.scale * rho * unit, zero


# ------------------------------------------------------------------------------- lens


def _sites(ctx: AuditContext, cfg: SteeringConfig) -> list[str]:
    n = ctx.n_layers
    bad = [layer for layer in cfg.layers or [] if not 0 <= layer < n]
    if bad:
        raise LensError(f"steering layers {bad} are out of range: the model has {n} blocks")
    sites = [f"blocks.{layer}.hook_resid_post" for layer in cfg.blocks(n)]
    if cfg.embed and EMBED in ctx.models["unlearned"].bridge.hook_dict:
        sites.insert(0, EMBED)
    return sites


def _settings(cfg: SteeringConfig, sites: list[str]) -> list[Setting]:
    return [Setting(site, *recipe) for site in sites for recipe in cfg.recipes()]


@register_lens("steering", SteeringConfig, SteeringData, "item-agnostic steering/ablation restoration, with random-direction controls")
def steering(ctx: AuditContext, cfg: SteeringConfig) -> LensResult:
    """Cross-fitted steering restoration of U's forget knowledge, against norm-matched controls."""
    forget, retain = ctx.items["forget"], ctx.items["retain"]
    U = ctx.models["unlearned"]
    ends = ["base", *ctx.reference_roles]
    metric = cfg.metric
    fold_f = subject_folds(forget, cfg.folds, ctx.seed)
    fold_r = subject_folds(retain, cfg.folds, ctx.seed + 1)
    n_folds = cfg.folds
    require_folds(fold_f, n_folds, "steering")
    sites = _sites(ctx, cfg)
    settings = _settings(cfg, sites)
    if not settings:
        raise LensError("no steering settings to try: give additive scales, or keep the ablation form")
    acts = _Acts(ctx)
    notes: list[str] = []

    gen = torch.Generator().manual_seed(ctx.seed)
    rand = {s: torch.randn(U.d_model, generator=gen) for s in sites}
    rho = {(role, s): acts.scale(role, s) for role in ["unlearned", *ends] for s in sites}

    # unsteered scores (shared with the behavior lens) and the knowledge-free end point
    before = unedited(ctx, metric)
    plain, plain_retain_u, b, n_plain, gap = before.forget, before.retain_unlearned, before.base, before.end, before.gap

    # directions per fold: fitted on every fold but the one they are applied to
    def fit_idx(e: int) -> tuple[np.ndarray, np.ndarray]:
        return np.flatnonzero(fold_f != e), np.flatnonzero(fold_r != e)

    def vectors(role: str, s: Setting, e: int) -> tuple[Tensor, Tensor] | None:
        d = _raw_direction(acts, role, s, *fit_idx(e), rand)
        return _intervention(d, s, rho[(role, s.site)])

    active = [s for s in settings if all(vectors("unlearned", s, e) is not None for e in range(n_folds))]
    skipped = len(settings) - len(active)
    if skipped:
        notes.append(f"{skipped} settings skipped: their direction is zero in U (B and U agree at that site, "
                     "or the last prompt token is the same in every prompt at the embedding)")
    if not active:
        raise LensError("every candidate steering direction is zero in U at every site swept "
                        "(e.g. U's residual stream equals B's): there is nothing to steer along")

    ctrl_gen = torch.Generator().manual_seed(ctx.seed + 7919)
    ctrl_keys = sorted({s.control_key for s in active}, key=lambda k: (sites.index(k[0]), k[1], k[2]))
    ctrl_dirs: dict[tuple[str, str, float], Tensor] = {}
    for key in ctrl_keys:
        g = torch.randn(cfg.n_controls, U.d_model, generator=ctrl_gen)
        ctrl_dirs[key] = g / g.norm(dim=-1, keepdim=True)

    # sweep: every active setting and every control, each forget item scored out of fold
    n_f, n_r = len(forget), len(retain)
    u_sc = {s: {"accuracy": np.zeros(n_f), "soft": np.zeros(n_f)} for s in active}
    u_ret = {s: np.zeros(n_r) for s in active}
    norms: dict[Setting, list[float]] = {s: [] for s in active}
    ctrl = {k: np.zeros((cfg.n_controls, n_f)) for k in ctrl_keys}
    with progress("steering sweep", total=n_folds * len(sites)) as bar:
        for e in range(n_folds):
            idx_f, idx_r = np.flatnonzero(fold_f == e), np.flatnonzero(fold_r == e)
            prep_f = PreparedItems(U, [forget[i] for i in idx_f])
            prep_r = PreparedItems(U, [retain[i] for i in idx_r]) if len(idx_r) else None
            for site in sites:
                here = [s for s in active if s.site == site]
                keys = [k for k in ctrl_keys if k[0] == site]
                if not here:
                    bar.advance(1)
                    continue
                # an active setting's direction is nonzero in U on every fold (zip's strict checks it)
                vecs = [v for v in (vectors("unlearned", s, e) for s in here) if v is not None]
                for s, (a, _) in zip(here, vecs, strict=True):
                    norms[s].append(float(a.norm()))
                add = [a for a, _ in vecs]
                abl = [u for _, u in vecs]
                r_u = rho[("unlearned", site)]
                for k in keys:
                    dirs = ctrl_dirs[k]
                    if k[1] == "ablate":
                        add += [torch.zeros(U.d_model)] * len(dirs)
                        abl += list(dirs)
                    else:
                        add += list(k[2] * r_u * dirs)
                        abl += [torch.zeros(U.d_model)] * len(dirs)
                met = item_metrics(prep_f.logprobs(site, torch.stack(add), torch.stack(abl), cfg.tokens_per_pass),
                                   ctx.temperature("unlearned"))
                for j, s in enumerate(here):
                    for name in ("accuracy", "soft"):
                        u_sc[s][name][idx_f] = met[name][j]
                off = len(here)
                for k in keys:
                    ctrl[k][:, idx_f] = met[metric][off : off + cfg.n_controls]
                    off += cfg.n_controls
                if prep_r is not None:
                    lp = prep_r.logprobs(site, torch.stack(add[: len(here)]), torch.stack(abl[: len(here)]),
                                         cfg.tokens_per_pass)
                    ret = item_metrics(lp)["accuracy"]
                    for j, s in enumerate(here):
                        u_ret[s][idx_r] = ret[j]
                bar.advance(1)

    # choose, for each fold, the best setting on the other folds (audit/crossfit.py)
    sweep = Sweep(candidates=active, score={s: u_sc[s][metric] for s in active},
                  accuracy={s: u_sc[s]["accuracy"] for s in active},
                  controls={s: ctrl[s.control_key] for s in active}, retain=u_ret, retain_plain=plain_retain_u,
                  tolerance=cfg.side_effect_tolerance)
    chosen = sweep.choose(fold_f, fold_r, n_folds)

    # evaluate the chosen settings, each on its own fold; N and B steered the same way
    oof = sweep.out_of_fold(chosen, fold_f, fold_r)
    u, ret_st = oof.score, oof.retain

    def steer(role: str, s: Setting, e: int) -> Callable[[PreparedItems], Tensor] | None:
        v = vectors(role, s, e)
        if v is None:  # e.g. B's own base-minus-unlearned direction: no intervention
            return None
        return lambda prep: prep.logprobs(s.site, v[0][None], v[1][None], cfg.tokens_per_pass)

    steered = per_fold_scores(ctx, ends, forget, fold_f, chosen, metric, plain, steer)

    n_st = np.stack([steered[r] for r in ctx.reference_roles]) if ctx.has_reference else n_plain
    labels = sorted({s.label() for s in chosen}, key=[s.label() for s in chosen].index)
    reading = f"best steering, cross-fitted: {labels[0]}" if len(labels) == 1 else \
        "best steering, cross-fitted: " + "; ".join(f"fold {e + 1} {s.label()}" for e, s in enumerate(chosen))
    # numerator: steered U vs steered N; denominator: the unsteered gap S(B) - S(N)
    rec, ctrl_r, drop = edited_recovery(ctx, base=b, end=n_plain, end_edited=n_st, oof=oof,
                                        retain_plain=plain_retain_u, tolerance=cfg.side_effect_tolerance,
                                        n_boot=cfg.n_boot, reading=reading)

    # the dose-response of every setting, pooled over folds (each item out of fold)
    all_f = np.ones(n_f, dtype=bool)
    curve = [
        {"site": s.site, "site_label": "embed" if s.site == EMBED else f"L{s.site.split('.')[1]}",
         "direction": s.direction, "pooling": s.pooling, "form": s.form, "scale": s.scale,
         "label": s.label(), "norm": float(np.mean(norms[s])) if s.form == "add" else None,
         **sweep.curve_row(s, float(n_plain.mean()), gap), "score_excess": sweep.excess_on(s, all_f)}
        for s in active
    ]

    data = {
        "metric": metric,
        "side_effect_tolerance": cfg.side_effect_tolerance,
        "sites": sites,
        "site_norms": {s: rho[("unlearned", s)] for s in sites},
        "unsteered": {
            "forget": {role: float(plain[role][metric].mean()) for role in ctx.roles},
            "forget_accuracy": {role: float(plain[role]["accuracy"].mean()) for role in ctx.roles},
            "retain_accuracy_unlearned": float(plain_retain_u.mean()),
            "reference_end_point": float(n_plain.mean()),
        },
        "dose_response": curve,
        "chosen": sweep.chosen_rows(chosen, fold_f, fold_r, lambda s: {
            "label": s.label(), "site": s.site, "direction": s.direction, "pooling": s.pooling, "form": s.form,
            "scale": s.scale}),
        "steered": {
            "unlearned": float(u.mean()),
            **{role: float(steered[role].mean()) for role in ends},
            "retain_accuracy_unlearned": float(ret_st.mean()), "retain_drop": drop,
            "control_recoveries": [float(x) for x in ctrl_r],
        },
        "per_item": edited_per_item(ctx, base=b, end=n_plain, end_edited=n_st, oof=oof, reading=reading),
        "items": [
            {"id": it.id, "fold": int(fold_f[i]) + 1, "unlearned_steered": round(float(u[i]), 4),
             **{f"{role}_steered": round(float(steered[role][i]), 4) for role in ends}}
            for i, it in enumerate(forget)
        ],
    }
    notes += [
        f"cross-fitted over {n_folds} folds of forget subjects: each item is scored with a direction fitted, "
        "and a setting chosen, on the other folds",
        "recovery = (S_steered(U) − S_steered(N)) / (S(B) − S(N)): N is put through the same procedure "
        "(its own direction, same setting) so a direction that manufactures answers is subtracted; the "
        "denominator is the unsteered gap, so an intervention that harms B cannot inflate R "
        "(score_reference is the steered N; steered B is in data)",
        f"additive scales are in units of the site's residual norm; controls are {cfg.n_controls} norm-matched "
        "random directions per site and scale (random unit directions for ablation)",
        f"per-item metric: {metric}; side effects in retain accuracy, tolerance {cfg.side_effect_tolerance}",
        "dose_response rows give each setting's recovery against the unsteered N (only the chosen settings "
        "are also run on N); score_excess is the steered score minus the controls' 95th percentile",
    ]
    notes += ctx.no_reference_notes("the end point is chance and cannot be steered")
    if cfg.embed and EMBED not in sites:
        notes.append("the model exposes no hook_embed: the embedding output was not steered")
    return LensResult(name="steering", config=cfg.model_dump(), recoveries=[rec], data=data, notes=notes)
