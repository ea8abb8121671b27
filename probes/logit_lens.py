"""Logit lens: each layer's residual read through the model's own final norm and unembedding.

Patil et al.'s "head projection": if an intermediate layer still ranks the true answer
above the distractors while the output does not, the knowledge is present and blocked
later. Candidates are the tokens scoring reads (:func:`audit.scoring.candidate_token_ids`),
and a multi-token candidate is read teacher-forced: each layer's residual at every
position that predicts one of its tokens goes through the final norm and unembedding,
and the candidate's layer-l log-prob is the sum over its tokens. At the last layer this
is the model's own output, so the last layer reproduces the behavior score.

Every candidate's first token is read from the cached last-prompt-token activations
(shared with the other lenses), so a closed set of one-token answers needs no extra
forward. A longer candidate's later tokens come from one batched forward of
``prompt + candidate[:-1]`` per model, with every layer's residual hooked in the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from audit.activations import resid_hooks
from audit.batching import run_batched
from audit.context import AuditContext
from audit.errors import LensError
from audit.lensdata import LogitLensConfig, LogitLensData
from audit.models import LoadedModel
from audit.progress import progress
from audit.registry import register_lens
from audit.schema import LensResult, Recovery
from audit.scoring import candidate_token_ids, check_finite, encode_prompt, pad_batch, pad_id_of


@dataclass
class _Plan:
    """What to read. Every candidate's first token is read at the prompt's last token, from
    the cached prompt activations; a longer candidate's later tokens from a forward of
    ``prompt + candidate[:-1]``, at the positions that predict them."""

    cands: list[list[list[int]]]  # item -> candidate (0 = answer) -> token ids
    seqs: list[list[int]] = field(default_factory=list)
    seq_reads: list[tuple[int, int, int]] = field(default_factory=list)  # per sequence: (item, candidate, prompt len)

    @property
    def n_multi(self) -> int:
        """Items with a multi-token candidate."""
        return len({i for i, _, _ in self.seq_reads})


def _plan(tokenizer, items) -> _Plan:
    plan = _Plan([candidate_token_ids(tokenizer, it) for it in items])
    for i, (it, cands) in enumerate(zip(items, plan.cands, strict=True)):
        if any(not c for c in cands):
            raise LensError(f"item '{it.id}': a candidate answer tokenizes to nothing")
        if all(len(c) == 1 for c in cands):
            continue
        p = encode_prompt(tokenizer, it.prompt)
        for j, c in enumerate(cands):
            if len(c) > 1:
                plan.seqs.append(p + c[:-1])
                plan.seq_reads.append((i, j, len(p)))
    return plan


def _unembed_rows(model: LoadedModel) -> int:
    """Rows per unembedding call, so one call's fp32 logits stay under ~128 MB."""
    return max(1, (1 << 25) // max(1, int(model.bridge.cfg.d_vocab)))


@torch.no_grad()
def _logprobs(
    model: LoadedModel, h: Float[Tensor, "pos d_model"], rows: Tensor, toks: Tensor, first: Tensor, first_tok: Tensor,
    top_k: int,
) -> tuple[Tensor, Tensor]:
    """Log-probs of ``toks`` at positions ``rows`` of ``h`` through the final norm and
    unembedding, and whether ``first_tok`` is in the top-k at positions ``first`` (on the CPU)."""
    dtype = model.dtype
    out = torch.empty(len(rows))
    hit = torch.zeros(len(first), dtype=torch.bool)
    step = _unembed_rows(model)
    for a in range(0, len(h), step):
        x = h[a : a + step].to(model.device, dtype=dtype)
        # fp16/bf16 weights: the softmax runs in fp32, as in scoring
        logp = torch.log_softmax(model.bridge.unembed(model.bridge.ln_final(x)).float(), dim=-1)
        sel = ((rows >= a) & (rows < a + len(x))).nonzero()[:, 0]
        out[sel] = logp[(rows[sel] - a).to(logp.device), toks[sel].to(logp.device)].cpu()
        fsel = ((first >= a) & (first < a + len(x))).nonzero()[:, 0]
        if len(fsel):
            fl = logp[(first[fsel] - a).to(logp.device)]
            kth = fl.topk(min(top_k, fl.shape[-1]), dim=-1).values[:, -1]
            hit[fsel] = (fl.gather(1, first_tok[fsel, None].to(logp.device))[:, 0] >= kth).cpu()
    return out, hit


@torch.no_grad()
def read_layers(ctx: AuditContext, role: str, top_k: int = 4, plan: _Plan | None = None,
                head: str | None = None, item_set: str = "forget") -> dict[str, np.ndarray]:
    """Every layer's reading of one model on an item set (the forget items by default).

    Returns:
        ``logprobs`` (layer x item x candidate, 0 = answer; ``-inf`` past an item's last
        candidate): each candidate's summed token log-prob through the layer, teacher-forced;
        ``soft`` (layer x item): the answer's share of probability among the candidates, with
        the log-probs divided by the model's sharpness relative to B (``ctx.temperature``);
        ``accuracy`` (layer x item): 1 where the answer outranks every distractor;
        ``topk`` (layer x item): 1 where the answer's first token is in the layer's top-k.
        At the last layer ``logprobs`` are scoring's candidate log-probs.

    With ``head`` (a role, e.g. ``base``), the residuals of ``role`` are read through that
    model's final norm and unembedding instead of its own, at that model's sharpness.
    """
    model = ctx.models[role]
    head_model = ctx.models[head] if head is not None else model
    items = ctx.items[item_set]
    plan = plan if plan is not None else _plan(model.tokenizer, items)
    L, n, width = model.n_layers, len(plan.cands), max(len(c) for c in plan.cands)
    lp = torch.zeros(L, n, width, dtype=torch.float32)
    topk = torch.zeros(L, n, dtype=torch.bool)

    def add(h_layers: Sequence[Tensor], reads: list[tuple[int, int, int, int]], firsts: list[tuple[int, int, int]]):
        """Accumulate reads ``(row of h, item, candidate, token)`` and top-k checks ``(row, item, token)``."""
        rows = torch.tensor([r[0] for r in reads], dtype=torch.long)
        toks = torch.tensor([r[3] for r in reads], dtype=torch.long)
        it = torch.tensor([r[1] for r in reads], dtype=torch.long)
        cd = torch.tensor([r[2] for r in reads], dtype=torch.long)
        frow = torch.tensor([f[0] for f in firsts], dtype=torch.long)
        fitem = torch.tensor([f[1] for f in firsts], dtype=torch.long)
        ftok = torch.tensor([f[2] for f in firsts], dtype=torch.long)
        # every layer in one pass: few large unembedding calls instead of one small call per layer
        n_pos, n_layers = len(h_layers[0]), len(h_layers)
        shift = torch.arange(n_layers)[:, None] * n_pos
        v, hit = _logprobs(head_model, torch.cat(list(h_layers)), (rows[None] + shift).flatten(), toks.repeat(n_layers),
                           (frow[None] + shift).flatten(), ftok.repeat(n_layers), top_k)
        return it, cd, fitem, v.view(n_layers, len(reads)), hit.view(n_layers, len(firsts))

    parts = []
    acts = ctx.activations(role, item_set)  # the prompt's last token predicts every candidate's first token
    reads = [(i, i, j, c[0]) for i in range(n) for j, c in enumerate(plan.cands[i])]
    firsts = [(i, i, plan.cands[i][0][0]) for i in range(n)]
    parts.append(add([acts.last[hk] for hk in acts.hooks], reads, firsts))
    if plan.seqs:
        hooks = resid_hooks(L)
        hookset = set(hooks)
        order = sorted(range(len(plan.seqs)), key=lambda k: len(plan.seqs[k]))
        who = f"{role} model ({model.path})"

        def chunk(a: int, b: int):
            ks = order[a:b]
            ids, mask = pad_batch([plan.seqs[k] for k in ks], pad_id_of(model.tokenizer), model.device)
            _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda nm: nm in hookset)
            reads: list[tuple[int, int, int, int]] = []
            firsts: list[tuple[int, int, int]] = []
            pos: list[tuple[int, int]] = []
            for row, k in enumerate(ks):
                i, j, plen = plan.seq_reads[k]
                for t, tok in enumerate(plan.cands[i][j][1:], start=1):  # the token before each one predicts it
                    reads.append((len(pos), i, j, tok))
                    pos.append((row, plen - 1 + t))
            r_idx = torch.tensor([p[0] for p in pos], device=ids.device)
            p_idx = torch.tensor([p[1] for p in pos], device=ids.device)
            hs = []
            for hk in hooks:
                h = cache[hk]
                if not bool(torch.isfinite(h).all()):
                    check_finite(h, mask, [items[plan.seq_reads[k][0]].id for k in ks], who, f"activations at {hk}")
                hs.append(h[r_idx, p_idx])
            del cache
            res = add(hs, reads, firsts)
            bar.advance(b - a)
            return res

        with progress(f"logit lens {role}", total=len(order)) as bar:
            parts += run_batched(chunk, len(order), ctx.config.batch_size, what=f"logit lens ({who})")
    for it, cd, fitem, v, hit in parts:
        for layer in range(L):
            lp[layer].index_put_((it, cd), v[layer], accumulate=True)
            topk[layer, fitem] = hit[layer]
    if not bool(torch.isfinite(lp).all()):
        bad = int((~torch.isfinite(lp)).any(-1).any(0).nonzero()[0])
        raise LensError(f"{role} model ({model.path}): non-finite logit-lens log-probability on item '{items[bad].id}'")
    for i, c in enumerate(plan.cands):  # items with fewer candidates than the widest
        lp[:, i, len(c):] = -torch.inf
    lp64 = lp.double()
    # at the model's sharpness relative to B (ctx.temperature, read on retain items): an
    # unembedding that is only scaled changes no soft share (docs/verdict.md)
    soft = torch.softmax(lp64 / ctx.temperature(head or role), dim=-1)[..., 0]
    correct = lp64[..., 0] > lp64[..., 1:].amax(-1)
    return {"accuracy": correct.float().numpy(), "soft": soft.numpy(), "topk": topk.float().numpy(),
            "logprobs": lp64.numpy()}


BASIS_SHARE = 0.5
"""A model is in B's basis when B's head, reading its last-layer residual on retain items,
ranks at least this share of what its own head ranks above chance (:func:`base_basis`)."""


def base_basis(ctx: AuditContext, cfg: LogitLensConfig) -> tuple[dict[str, dict[str, Any]], str]:
    """Whether U and every reference are in B's basis, read on retain items; and, when not,
    why the base-head readings cannot count.

    B's head (final norm and unembedding) was trained on the forget facts, so it can hold
    them itself: a model that shares B's basis (say B's own pre-forget checkpoint, trained
    on retain only) carries each subject's identity where B's head maps it to the answer,
    and reads the answer through B's head without ever having learned it (docs/lenses.md).
    A base-head reading of U is therefore compared only with references in the same basis:
    U and every reference must rank retain answers through B's head at their last layer at
    least ``BASIS_SHARE`` of what their own head ranks above chance. Without a reference, or
    without retain items, there is no such end point and the readings do not count.

    Returns per role (not B) the retain ranking accuracy through its own head (``own``,
    behavior's scoring), through B's head (``base_head``), chance and ``in_basis``; B's
    head's accuracy on the role's residual at every layer (``base_head_layers``) beside its
    accuracy on B's own (``base_layers``), and ``outside_every_layer``: at no layer where
    B's head reads B's residual (10 points above chance) does it read the role's at
    ``BASIS_SHARE`` of that, so no part of the role's network is B's (the verdict's
    stand-in rule, docs/verdict.md); and a reason ("" when the readings count).
    """
    retain = ctx.items.get("retain") or []
    if not ctx.reference_roles:
        return {}, ("base-head readings not counted: without a reference there is no knowledge-free model "
                    "in B's basis to compare them with (B's head may hold the facts itself; docs/lenses.md)")
    if not retain:
        return {}, "base-head readings not counted: no retain items to check that U and N are in B's basis"
    plan = _plan(ctx.models["base"].tokenizer, retain)
    chance = float(ctx.chance("retain").mean())
    out: dict[str, dict[str, Any]] = {}
    # B's head on B's own residual at every layer: where it reads retain answers above chance,
    # a model derived from B (any block left as B's) reads them there too
    b_layers = read_layers(ctx, "base", cfg.top_k, plan, item_set="retain")["accuracy"].mean(1)
    for r in ctx.roles:
        if r == "base":
            continue
        own = float(ctx.score(r, "retain").correct.mean())
        layers = read_layers(ctx, r, cfg.top_k, plan, head="base", item_set="retain")["accuracy"].mean(1)
        via_b = float(layers[-1])
        ok = own - chance > 0.1 and via_b - chance >= BASIS_SHARE * (own - chance)
        outside_every = all(v - chance < BASIS_SHARE * (b - chance) for v, b in zip(layers, b_layers, strict=True)
                            if b - chance > 0.1)
        out[r] = {"own": round(own, 4), "base_head": round(via_b, 4), "chance": round(chance, 4), "in_basis": ok,
                  "base_head_layers": [round(float(v), 4) for v in layers],
                  "base_layers": [round(float(b), 4) for b in b_layers], "outside_every_layer": outside_every}
    outside = [r for r, v in out.items() if not v["in_basis"]]
    if not outside:
        return out, ""
    said = "; ".join(f"{r} {out[r]['base_head']:.0%} (own head {out[r]['own']:.0%})" for r in outside)
    return out, (f"base-head readings not counted: B's head ranks retain answers first from the last-layer residual "
                 f"of {said}, chance {chance:.0%}, so {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} "
                 "not in B's basis and the readings compare unlike models. B's head may hold the facts itself "
                 "(docs/lenses.md); a reference in B's basis, e.g. B's pre-forget checkpoint trained further on "
                 "retain only, makes them count")


@register_lens("logit_lens", LogitLensConfig, LogitLensData, "each layer's residual through the final norm and unembedding")
def logit_lens(ctx: AuditContext, cfg: LogitLensConfig) -> LensResult:
    """Per-layer candidate log-probs (teacher-forced), knowledge score and gold-in-top-k on B, U, N."""
    forget = ctx.items["forget"]
    plan = _plan(ctx.models["base"].tokenizer, forget)
    notes = []
    same = sum(len({tuple(c) for c in cands}) < len(cands) for cands in plan.cands)
    if same:
        notes.append(f"{same} item(s) have two candidates with the same tokens; this lens cannot separate them")
    multi = plan.n_multi
    if multi:
        notes.append(f"{multi} of {len(forget)} items have multi-token candidates, read teacher-forced "
                     "(each candidate's token log-probs summed per layer)")
    reads = {role: read_layers(ctx, role, cfg.top_k, plan) for role in ctx.roles}
    L = ctx.n_layers
    chance = ctx.chance("forget")
    rows: list[Recovery] = []
    for layer in range(L):
        rows.append(ctx.recovery({r: reads[r][cfg.metric][layer] for r in reads}, reading=f"layer {layer}"))
    p = max(range(L), key=lambda i: rows[i].score_base - rows[i].score_reference)
    primary = rows[p].model_copy(update={"reading": f"layer {p} (most powerful)"})
    recs = [primary]
    informative = [i for i in range(L) if rows[i].informative and np.isfinite(rows[i].value)]
    if informative:
        s = max(informative, key=lambda i: rows[i].value)
        scan = ctx.recovery({r: reads[r][cfg.metric][s] for r in reads}, reading=f"best of {L} layers (layer {s})",
                            n_compared=L)
        scan.kind = "scan"
        recs.append(scan)
    # B's head on every model's residuals: suppression placed in U's own head or final norm
    # cannot hide what U's residual stream still carries (the read-out that B itself uses)
    d_model = {r: ctx.models[r].d_model for r in ctx.roles}
    bh_rows: list[Recovery] = []
    basis: dict[str, dict[str, Any]] = {}
    if len(set(d_model.values())) == 1:
        bh = {r: reads[r] if r == "base" else read_layers(ctx, r, cfg.top_k, plan, head="base") for r in ctx.roles}
        basis, why_not = base_basis(ctx, cfg)
        if why_not:
            notes.append(why_not)
        for layer in range(L):
            rec = ctx.recovery({r: bh[r][cfg.metric][layer] for r in bh}, reading=f"base head, layer {layer}")
            bh_rows.append(rec.model_copy(update={"informative": False}) if why_not else rec)
        q = max(range(L), key=lambda i: bh_rows[i].score_base - bh_rows[i].score_reference)
        recs.append(bh_rows[q].model_copy(update={"reading": f"base head, layer {q} (most powerful)"}))
        inf_bh = [i for i in range(L) if bh_rows[i].informative and np.isfinite(bh_rows[i].value)]
        if inf_bh:
            s2 = max(inf_bh, key=lambda i: bh_rows[i].value)
            scan2 = ctx.recovery({r: bh[r][cfg.metric][s2] for r in bh}, n_compared=L,
                                 reading=f"base head, best of {L} layers (layer {s2})")
            scan2.kind = "scan"
            recs.append(scan2)
    else:
        bh = {}
        notes.append("the models' residual widths differ, so B's head cannot read them: no base-head reading")
    data = {
        "per_layer": {m: {r: reads[r][m].mean(1).round(4).tolist() for r in reads} for m in ("accuracy", "soft", "topk")},
        "per_layer_base_head": {m: {r: bh[r][m].mean(1).round(4).tolist() for r in bh} for m in ("accuracy", "soft")},
        "base_head_recoveries": [r.model_dump() for r in bh_rows],
        "base_head_basis": basis, "base_head_basis_share": BASIS_SHARE,
        "layer_recoveries": [r.model_dump() for r in rows],
        "chance": float(chance.mean()), "top_k": cfg.top_k, "metric": cfg.metric,
        "readout": "teacher-forced candidate log-prob (summed over its tokens), scoring's candidate tokens",
        "n_multi_token_items": multi,
        "per_item": {"ids": [it.id for it in forget], "readings": {
            primary.reading: {r: reads[r][cfg.metric][p].round(4).tolist() for r in reads}}},
    }
    return LensResult(name="logit_lens", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
