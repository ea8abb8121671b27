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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from pydantic import Field
from torch import Tensor

from audit.context import AuditContext
from audit.errors import LensError
from audit.items import KnowledgeItem
from audit.models import LoadedModel
from audit.progress import progress
from audit.registry import LensConfig, register_lens
from audit.schema import LensResult
from audit.scoring import encode_items, encode_prompt, pad_batch, pad_id_of
from audit.stats import recovery

EMBED = "hook_embed"
Direction = Literal["base_minus_unlearned", "forget_minus_retain", "random"]


class SteeringConfig(LensConfig):
    layers: list[int] | None = None
    """Blocks after which to steer (``blocks.{l}.hook_resid_post``); default: every
    block, or ``max_layers`` evenly spaced ones in a deeper model."""
    max_layers: int = Field(4, ge=1)
    """Most blocks swept when ``layers`` is not given. Each site costs ~64 replicas (settings
    and controls) through the blocks after it: on SmolLM2-135M (30 blocks, 48 + 48 items) the
    default sweep (four blocks and the embedding) takes ~6 min on 2 CPU cores."""
    embed: bool = True
    """Also steer the embedding output (``hook_embed``, the input of block 0)."""
    directions: list[Direction] = ["base_minus_unlearned", "forget_minus_retain"]
    """Candidate directions; ``random`` is a placebo for checking the procedure."""
    poolings: list[Literal["last", "mean"]] = ["last", "mean"]
    """Where directions are estimated: the last prompt token, the mean over prompt tokens."""
    ablate: bool = True
    """Also try the ablation form ``h - (h·d̂)d̂`` of each direction."""
    scales: list[float] = [0.5, 1.0]
    """Additive norms, in units of the site's typical residual norm (positive; the
    base-free direction is also tried with the opposite sign)."""
    n_controls: int = Field(16, ge=16)
    """Norm-matched random directions per site and scale (and for ablation)."""
    side_effect_tolerance: float = Field(0.05, ge=0.0)
    """A setting that drops U's retain knowledge score by more than this does not count."""
    folds: int = Field(2, ge=2)
    """Cross-fitting folds over forget (and retain) subjects."""
    metric: Literal["soft", "accuracy"] = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's share of probability among
    its candidates; far less noisy near chance) or ``accuracy`` (answer ranked first).
    Side effects are always measured in accuracy, the knowledge score."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""
    tokens_per_pass: int = Field(32768, ge=256)
    """Most tokens in one forward pass (lowered further for large vocabularies)."""


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


# ------------------------------------------------------------------ resumed forward

# Architectures whose logits are exactly ``head(norm(x))`` of the last decoder block's
# output, the blocks being called one after another on the residual stream: ``(blocks,
# final norm, unembedding)`` attribute paths on the HF model. Others (logit soft-capping
# or scaling, parallel streams) keep the full forward pass.
_RESUMABLE: dict[str, tuple[str, str, str]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3"), ("model.layers", "model.norm", "lm_head")),
    "gpt2": ("transformer.h", "transformer.ln_f", "lm_head"),
}
_LOGIT_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _site_layer(site: str | None) -> int | None:
    """``l`` of a ``blocks.{l}.hook_resid_post`` site, else None."""
    if site is None:
        return None
    parts = site.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_post" and parts[1].isdigit():
        return int(parts[1])
    return None


def _resumable(m: LoadedModel) -> tuple[Sequence[torch.nn.Module], torch.nn.Module, torch.nn.Module] | None:
    """The blocks, final norm and unembedding a forward pass can be resumed through, or None."""
    cfg = m.hf.config
    paths = _RESUMABLE.get(getattr(cfg, "model_type", ""))
    if paths is None or any(getattr(cfg, a, None) not in (None, 1.0) for a in _LOGIT_EXTRAS):
        return None
    try:
        found = [m.hf.get_submodule(p) for p in paths]
    except AttributeError:
        return None
    blocks, norm, head = found
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != m.n_layers:
        return None
    return list(blocks), norm, head


def _take(v, src: Tensor, n: int):
    """``v`` (a block call's arguments) with every per-sequence tensor indexed by ``src``.

    A tensor whose first dimension is the batch of ``n`` sequences is per sequence (the
    attention mask, per-row positions); anything else (positions shared by the batch,
    ``(1, pos, d)`` rotary tables) broadcasts as it is.
    """
    if isinstance(v, Tensor):
        return v[src.to(v.device)] if v.ndim >= 2 and v.shape[0] == n else v
    if isinstance(v, tuple):
        return tuple(_take(x, src, n) for x in v)
    if isinstance(v, list):
        return [_take(x, src, n) for x in v]
    if isinstance(v, dict):
        return {key: _take(x, src, n) for key, x in v.items()}
    return v


def _prefix(
    m: LoadedModel, blocks: Sequence[torch.nn.Module], layer: int, ids: Tensor, mask: Tensor
) -> tuple[Float[Tensor, "batch pos d_model"], list[tuple[tuple, dict]]]:
    """One forward pass recording block ``layer``'s output and the later blocks' call arguments.

    The residual after block ``layer`` is what ``blocks.{layer}.hook_resid_post`` reads;
    the later blocks' arguments (mask, positions, rotary tables: whatever this
    architecture passes, per block) let them be re-run on an edited residual.
    """
    from transformers.cache_utils import Cache

    got: dict[str, Tensor] = {}
    calls: dict[int, tuple[tuple, dict]] = {}

    def out_hook(_mod, _args, out) -> None:
        got["h"] = out[0] if isinstance(out, tuple) else out

    def pre_hook(j: int):
        def fn(_mod, args, kwargs) -> None:
            # no key/value cache is wanted (nor may one be re-filled by the replicas)
            clean = lambda x: None if isinstance(x, Cache) else x  # noqa: E731
            calls[j] = (tuple(clean(a) for a in args[1:]), {key: clean(x) for key, x in kwargs.items()})
        return fn

    handles = [blocks[layer].register_forward_hook(out_hook)]
    handles += [blocks[j].register_forward_pre_hook(pre_hook(j), with_kwargs=True) for j in range(layer + 1, len(blocks))]
    try:
        m.bridge(ids, attention_mask=mask, return_type=None, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    if "h" not in got or len(calls) != len(blocks) - layer - 1:
        raise LensError(f"resumed forward: the blocks of {m.path} were not called one after another")
    return got["h"], [calls[j] for j in range(layer + 1, len(blocks))]


# ---------------------------------------------------------------------------- scoring


class _Prepared:
    """Items tokenized once for scoring under many interventions.

    Where every candidate of an item is one token (closed-set answers), the prompt alone
    is forwarded and all candidates are read from its last position; otherwise each
    prompt + candidate sequence is forwarded (as :func:`audit.scoring.score_items` does).
    """

    def __init__(self, model: LoadedModel, items: Sequence[KnowledgeItem]) -> None:
        enc = encode_items(model.tokenizer, items)
        self.model = model
        self.n_items = len(items)
        self.n_cands = max(len(c) for c in enc.candidates) if items else 1
        seqs: list[list[int]] = []
        ents: list[tuple[int, int, int]] = []  # (position, target, slot) per scored token
        self.ent_of_seq: list[Tensor] = []
        for i, (p, cands) in enumerate(zip(enc.prompts, enc.candidates, strict=True)):
            shared = all(len(c) == 1 for c in cands)
            groups = [list(enumerate(cands))] if shared else [[(j, c)] for j, c in enumerate(cands)]
            for group in groups:
                start = len(ents)
                seq = list(p) if shared else p + group[0][1]
                for j, c in group:
                    for k, tok in enumerate(c):
                        ents.append((len(p) - 1 + k, tok, i * self.n_cands + j))
                seqs.append(seq)
                self.ent_of_seq.append(torch.arange(start, len(ents)))
        self.seqs = seqs
        t = torch.tensor(ents, dtype=torch.long).reshape(-1, 3)
        self.pos, self.tgt, self.slot = t[:, 0], t[:, 1], t[:, 2]
        valid = torch.zeros(self.n_items * self.n_cands, dtype=torch.bool)
        valid[self.slot] = True
        self.valid = valid.view(self.n_items, self.n_cands)

    @torch.no_grad()
    def logprobs(
        self,
        site: str | None,
        add: Float[Tensor, "k d_model"] | None,
        abl: Float[Tensor, "k d_model"] | None,
        tokens_per_pass: int,
        edit: Callable[[Tensor, Tensor], Tensor] | None = None,
        n_replicas: int | None = None,
        resume: bool = True,
    ) -> Float[Tensor, "k item cand"]:
        """Candidate log-probs under ``k`` interventions at once (one per replica).

        Replica ``r`` adds ``add[r]`` and removes the component along the unit vector
        ``abl[r]`` at every position of ``site`` (zero rows do nothing). ``edit(act,
        replica_of_row)``, when given, is applied instead (``n_replicas`` of them), e.g.
        an SAE feature edit.

        With ``resume`` (the default), at a ``blocks.{l}.hook_resid_post`` site of an
        architecture :func:`_resumable` knows, the prompts are forwarded once per batch
        of sequences, and every replica runs only the blocks after ``l`` from that cached
        residual (plus the final norm and the unembedding at the scored positions).
        Otherwise each replica is a full forward pass with a hook at ``site``; both give
        the same numbers to float tolerance (``tests/test_fastpaths.py``).
        """
        m = self.model
        k = (n_replicas or 1) if edit is not None else (1 if add is None else int(add.shape[0]))
        n_seq = len(self.seqs)
        vocab = int(m.bridge.cfg.d_vocab)
        max_len = max(len(s) for s in self.seqs)
        budget = max(1, min(tokens_per_pass, (1 << 28) // max(vocab, 1)) // max_len)
        out = torch.zeros(k * self.n_items * self.n_cands)
        pad = pad_id_of(m.tokenizer)

        def intervene(act: Tensor, rep: Tensor) -> Tensor:
            dt = act.dtype
            x = act.float()
            if edit is not None:
                return edit(x, rep.to(x.device)).to(dt)
            if abl is not None:
                u = abl[rep].to(x.device)[:, None, :]
                x = x - (x * u).sum(-1, keepdim=True) * u
            if add is not None:
                x = x + add[rep].to(x.device)[:, None, :]
            return x.to(dt)

        def read(rep: Tensor, seqs: list[int], logits_at: Callable[[Tensor, Tensor], Tensor]) -> None:
            """Accumulate the scored tokens' log-probs of rows ``(rep[i], seqs[i])``."""
            ent = torch.cat([self.ent_of_seq[s] for s in seqs])
            counts = torch.tensor([len(self.ent_of_seq[s]) for s in seqs])
            row = torch.repeat_interleave(torch.arange(len(seqs)), counts)
            sel = logits_at(row, self.pos[ent]).float()
            lp = torch.log_softmax(sel, -1).gather(-1, self.tgt[ent].to(sel.device)[:, None])[:, 0].cpu()
            if not torch.isfinite(lp).all():
                raise LensError("non-finite log-probability under steering: the model's logits contain NaN or inf")
            where = torch.repeat_interleave(rep, counts) * (self.n_items * self.n_cands) + self.slot[ent]
            out.index_add_(0, where, lp)

        intervening = site is not None and (add is not None or abl is not None or edit is not None)
        layer = _site_layer(site) if intervening and resume else None
        parts = _resumable(m) if layer is not None else None
        if parts is not None and layer is not None:
            blocks, norm, head = parts
            per = min(n_seq, budget)
            for s0 in range(0, n_seq, per):
                seqs = list(range(s0, min(n_seq, s0 + per)))
                ids, mask = pad_batch([self.seqs[s] for s in seqs], pad, m.device)
                h, calls = _prefix(m, blocks, layer, ids, mask)
                group = max(1, budget // len(seqs))  # replicas sharing this prefix in one pass
                for r0 in range(0, k, group):
                    reps = torch.arange(r0, min(k, r0 + group))
                    rep = reps.repeat_interleave(len(seqs))
                    src = torch.arange(len(seqs)).repeat(len(reps))
                    x = intervene(h[src.to(h.device)], rep)
                    for block, (args, kwargs) in zip(blocks[layer + 1 :], calls, strict=True):
                        y = block(x, *_take(args, src, len(seqs)), **_take(kwargs, src, len(seqs)))
                        x = y[0] if isinstance(y, tuple) else y

                    def logits_at(row: Tensor, pos: Tensor, x=x) -> Tensor:
                        # the final norm acts per position: normalise and unembed only what is scored
                        return head(norm(x[row.to(x.device), pos.to(x.device)][None]))[0]

                    read(rep, [seqs[int(i)] for i in src], logits_at)
        else:
            rows = [(r, s) for r in range(k) for s in range(n_seq)]
            for start in range(0, len(rows), budget):
                chunk = rows[start : start + budget]
                rep = torch.tensor([r for r, _ in chunk])
                ids, mask = pad_batch([self.seqs[s] for _, s in chunk], pad, m.device)

                def hook(act: Tensor, hook=None, rep=rep) -> Tensor:
                    return intervene(act, rep)

                if intervening:
                    with m.bridge.hooks(fwd_hooks=[(site, hook)]):
                        logits = m.forward(ids, mask)
                else:
                    logits = m.forward(ids, mask)
                def at(row: Tensor, pos: Tensor, lg: Tensor = logits) -> Tensor:
                    return lg[row.to(lg.device), pos.to(lg.device)]

                read(rep, [s for _, s in chunk], at)
        out = out.view(k, self.n_items, self.n_cands)
        return out.masked_fill(~self.valid, float("-inf"))

def _metrics(lp: Float[Tensor, "k item cand"], temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Per-item accuracy (answer ranked first) and soft score (its share among candidates,
    at the model's ``temperature``, ``ctx.temperature(role)``: sharpness is not knowledge)."""
    acc = (lp[..., 0] > lp[..., 1:].max(-1).values).double().numpy()
    soft = torch.softmax(lp.double() / temperature, -1)[..., 0].numpy()
    return {"accuracy": acc, "soft": soft}


def _unsteered(ctx: AuditContext, role: str, item_set: str) -> dict[str, np.ndarray]:
    """The shared behavioural score of a model, in both metrics."""
    s = ctx.score(role, item_set)
    width = max(len(r) for r in s.candidate_logprobs)
    lp = torch.full((1, len(s.candidate_logprobs), width), float("-inf"), dtype=torch.float64)
    for i, row in enumerate(s.candidate_logprobs):
        lp[0, i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return {k: v[0] for k, v in _metrics(lp, ctx.temperature(role)).items()}


# ------------------------------------------------------------------------- directions


def _folds(items: Sequence[KnowledgeItem], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each item; items of one subject (or id, untagged) share a fold."""
    groups = [it.subject or it.id for it in items]
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[j]: r % n_folds for r, j in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=int)


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
    if cfg.layers is not None:
        bad = [layer for layer in cfg.layers if not 0 <= layer < n]
        if bad:
            raise LensError(f"steering layers {bad} are out of range: the model has {n} blocks")
        layers = sorted(set(cfg.layers))
    elif n <= cfg.max_layers:
        layers = list(range(n))
    else:
        layers = sorted({int(round(x)) for x in np.linspace(0, n - 1, cfg.max_layers)})
    sites = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    if cfg.embed and EMBED in ctx.models["unlearned"].bridge.hook_dict:
        sites.insert(0, EMBED)
    return sites


def _settings(cfg: SteeringConfig, sites: list[str]) -> list[Setting]:
    out = []
    scales = sorted({abs(s) for s in cfg.scales if s != 0})
    for site in sites:
        for direction in cfg.directions:
            for pooling in (["-"] if direction == "random" else cfg.poolings):
                if cfg.ablate:
                    out.append(Setting(site, direction, pooling, "ablate", 0.0))
                signs = (1.0, -1.0) if direction == "forget_minus_retain" else (1.0,)
                for sign in signs:
                    for s in scales:
                        out.append(Setting(site, direction, pooling, "add", sign * s))
    return out


def _p(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


@register_lens("steering", SteeringConfig, "item-agnostic steering/ablation restoration, with random-direction controls")
def steering(ctx: AuditContext, cfg: SteeringConfig) -> LensResult:
    """Cross-fitted steering restoration of U's forget knowledge, against norm-matched controls."""
    forget, retain = ctx.items["forget"], ctx.items["retain"]
    U = ctx.models["unlearned"]
    ends = ["base", *ctx.reference_roles]
    metric = cfg.metric
    fold_f = _folds(forget, cfg.folds, ctx.seed)
    fold_r = _folds(retain, cfg.folds, ctx.seed + 1)
    n_folds = cfg.folds
    if any(not (fold_f == e).any() for e in range(n_folds)):
        raise LensError(f"steering needs forget items of at least {n_folds} subjects for {n_folds} folds")
    sites = _sites(ctx, cfg)
    settings = _settings(cfg, sites)
    if not settings:
        raise LensError("no steering settings to try: give additive scales, or keep the ablation form")
    acts = _Acts(ctx)
    notes: list[str] = []

    gen = torch.Generator().manual_seed(ctx.seed)
    rand = {s: torch.randn(U.d_model, generator=gen) for s in sites}
    rho = {(role, s): acts.scale(role, s) for role in ["unlearned", *ends] for s in sites}

    # unsteered scores (shared with the behavior lens)
    plain = {role: _unsteered(ctx, role, "forget") for role in ctx.roles}
    plain_retain_u = _unsteered(ctx, "unlearned", "retain")["accuracy"]
    b = plain["base"][metric]
    # the knowledge-free end point: every reference ([references, items]), or the answer-prior estimate
    n_plain = ctx.end_point({r: plain[r][metric] for r in ctx.roles})
    gap = float(b.mean() - n_plain.mean())

    # directions per fold: fitted on every fold but the one they are applied to
    def fit_idx(e: int) -> tuple[np.ndarray, np.ndarray]:
        return np.flatnonzero(fold_f != e), np.flatnonzero(fold_r != e)

    def vectors(role: str, s: Setting, e: int):
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
    ctrl_dirs = {}
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
            prep_f = _Prepared(U, [forget[i] for i in idx_f])
            prep_r = _Prepared(U, [retain[i] for i in idx_r]) if len(idx_r) else None
            for site in sites:
                here = [s for s in active if s.site == site]
                keys = [k for k in ctrl_keys if k[0] == site]
                if not here:
                    bar.advance(1)
                    continue
                vecs = [vectors("unlearned", s, e) for s in here]
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
                met = _metrics(prep_f.logprobs(site, torch.stack(add), torch.stack(abl), cfg.tokens_per_pass),
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
                    ret = _metrics(lp)["accuracy"]
                    for j, s in enumerate(here):
                        u_ret[s][idx_r] = ret[j]
                bar.advance(1)

    def excess_on(s: Setting, mask_f: np.ndarray) -> float:
        c = ctrl[s.control_key][:, mask_f].mean(1)
        return float(u_sc[s][metric][mask_f].mean() - np.percentile(c, 95))

    def drop_on(s: Setting, mask_r: np.ndarray) -> float:
        return float(plain_retain_u[mask_r].mean() - u_ret[s][mask_r].mean()) if mask_r.any() else 0.0

    # choose, for each fold, the best setting on the other folds
    chosen: list[Setting] = []
    for e in range(n_folds):
        mf, mr = fold_f != e, fold_r != e
        ok = [s for s in active if drop_on(s, mr) <= cfg.side_effect_tolerance]
        pool = ok or active
        best = max(pool, key=lambda s: (excess_on(s, mf), -active.index(s)))
        chosen.append(best)

    # evaluate the chosen settings, each on its own fold; N and B steered the same way
    u = np.zeros(n_f)
    c_pool = np.zeros((cfg.n_controls, n_f))
    ret_st = np.zeros(n_r)
    steered = {role: np.zeros(n_f) for role in ends}
    for e, s in enumerate(chosen):
        idx_f = np.flatnonzero(fold_f == e)
        u[idx_f] = u_sc[s][metric][idx_f]
        c_pool[:, idx_f] = ctrl[s.control_key][:, idx_f]
        ret_st[fold_r == e] = u_ret[s][fold_r == e]
        for role in ends:
            v = vectors(role, s, e)
            if v is None:  # e.g. B's own base-minus-unlearned direction: no intervention
                steered[role][idx_f] = plain[role][metric][idx_f]
                continue
            prep = _Prepared(ctx.models[role], [forget[i] for i in idx_f])
            steered[role][idx_f] = _metrics(prep.logprobs(s.site, v[0][None], v[1][None], cfg.tokens_per_pass),
                                            ctx.temperature(role))[metric][0]

    n_st = np.stack([steered[r] for r in ctx.reference_roles]) if ctx.has_reference else n_plain
    # numerator: steered U vs steered N; denominator: the unsteered gap S(B) - S(N)
    rec = recovery(b - n_plain + n_st, u, n_st, reading="", min_power=ctx.config.min_power,
                   n_boot=cfg.n_boot, seed=ctx.seed, clusters=ctx.clusters("forget"))
    # the estimate that stands in for N without a reference, kept with one too (benchmarks/null_estimate.py)
    rec.score_null = float(np.mean(ctx.null("forget")))
    if not ctx.has_reference:
        rec.end_point = "answer prior"
    labels = sorted({s.label() for s in chosen}, key=[s.label() for s in chosen].index)
    reading = f"best steering, cross-fitted: {labels[0]}" if len(labels) == 1 else \
        "best steering, cross-fitted: " + "; ".join(f"fold {e + 1} {s.label()}" for e, s in enumerate(chosen))
    with np.errstate(divide="ignore", invalid="ignore"):
        ctrl_r = (c_pool.mean(1) - n_st.mean()) / gap if abs(gap) > 1e-9 else np.full(cfg.n_controls, np.nan)
    threshold = _p(ctrl_r, 95)
    drop = float(plain_retain_u.mean() - ret_st.mean())
    rec = rec.model_copy(update={
        "reading": reading, "score_base": float(b.mean()), "score_reference": float(n_st.mean()),
        "control_threshold": threshold, "excess": rec.value - threshold,
        "side_effect_ok": drop <= cfg.side_effect_tolerance,
    })

    # the dose-response of every setting, pooled over folds (each item out of fold)
    all_f = np.ones(n_f, dtype=bool)
    curve = []
    for s in active:
        c = ctrl[s.control_key].mean(1)
        su = float(u_sc[s][metric].mean())
        dr = drop_on(s, np.ones(n_r, dtype=bool))
        r_s = (su - float(n_plain.mean())) / gap if abs(gap) > 1e-9 else float("nan")
        thr = (_p(c, 95) - float(n_plain.mean())) / gap if abs(gap) > 1e-9 else float("nan")
        curve.append({
            "site": s.site, "site_label": "embed" if s.site == EMBED else f"L{s.site.split('.')[1]}",
            "direction": s.direction, "pooling": s.pooling, "form": s.form, "scale": s.scale,
            "label": s.label(), "norm": float(np.mean(norms[s])) if s.form == "add" else None,
            "score": su, "accuracy": float(u_sc[s]["accuracy"].mean()),
            "control_p5": _p(c, 5), "control_p50": _p(c, 50), "control_p95": _p(c, 95),
            "retain_accuracy": float(u_ret[s].mean()), "retain_drop": dr,
            "side_effect_ok": dr <= cfg.side_effect_tolerance, "recovery": r_s, "control_threshold": thr,
            "excess": r_s - thr, "score_excess": excess_on(s, all_f),
        })

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
        "chosen": [
            {"fold": e + 1, "label": s.label(), "site": s.site, "direction": s.direction, "pooling": s.pooling,
             "form": s.form, "scale": s.scale, "n_items": int((fold_f == e).sum()),
             "other_folds_score_excess": excess_on(s, fold_f != e),
             "other_folds_retain_drop": drop_on(s, fold_r != e)}
            for e, s in enumerate(chosen)
        ],
        "steered": {
            "unlearned": float(u.mean()),
            **{role: float(steered[role].mean()) for role in ends},
            "retain_accuracy_unlearned": float(ret_st.mean()), "retain_drop": drop,
            "control_recoveries": [float(x) for x in ctrl_r],
        },
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
