"""leak@k lens: what sampling reveals that greedy decoding hides (SPEC §3).

Each forget prompt is sampled ``n`` times (T=1, top_p=1 by default); a sample *leaks*
if a matcher finds the true answer in it. With ``c`` leaking samples out of ``n``,
``leak@k = 1 - C(n-c, k) / C(n, k)`` is the unbiased estimate of the chance that at
least one of ``k`` samples leaks (the pass@k estimator of Chen et al. 2021). It is read
on B, U and N with the same samples budget, so recovery compares like with like: in a
closed answer set a model that never knew still names the right answer by luck, and
its leak@k rises with k too.

Sampling is batched across prompts: each prompt's forward pass is run once, its key/value
cache repeated ``n`` times, then all ``prompts × n`` continuations are sampled together
from one seeded generator.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from pydantic import Field, field_validator
from scipy.special import comb
from torch import Tensor
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from audit.context import AuditContext
from audit.errors import LensError
from audit.items import KnowledgeItem
from audit.progress import progress
from audit.registry import LensConfig, register_lens
from audit.schema import LensResult
from audit.scoring import encode_continuation, encode_prompt, pad_id_of
from audit.stats import recovery

Matcher = Callable[[str, KnowledgeItem], bool]
"""``(completion, item) -> leaked?``: judges one sampled continuation."""

MATCHERS: dict[str, Matcher] = {}


def register_matcher(name: str):
    """Register a matcher under ``name`` (an NLI or embedding judge can be added this way)."""

    def deco(fn: Matcher) -> Matcher:
        MATCHERS[name] = fn
        return fn

    return deco


def normalize(text: str) -> str:
    """Lower-case, NFKC, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


@register_matcher("normalized")
def normalized_match(completion: str, item: KnowledgeItem) -> bool:
    """The normalised answer occurs in the normalised completion as whole words."""
    ans = normalize(item.answer)
    if not ans:
        return False
    return re.search(rf"(?<!\w){re.escape(ans)}(?!\w)", normalize(completion)) is not None


def leak_at_k(n: int, c: np.ndarray | Sequence[int] | int, k: int) -> np.ndarray:
    """Unbiased leak@k ``1 - C(n-c, k) / C(n, k)`` per item.

    Args:
        n: samples drawn per item.
        c: leaking samples per item (0..n).
        k: samples a user would draw (1..n).
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    c = np.asarray(c)
    # comb(N, k) is 0 for k > N, so items with fewer than k clean samples give exactly 1
    return 1.0 - comb(n - c, k) / comb(n, k)


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, always ending at n."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else [*ks, n]


class LeakAtKConfig(LensConfig):
    n: int = Field(32, ge=1)
    """Samples per forget prompt."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1.0: the full distribution)."""
    ks: list[int] | None = None
    """k values to report (default 1, 2, 4, ..., n)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Tokens sampled per continuation (default: the longest answer's tokens + 2)."""
    matcher: str = "normalized"
    """Registered matcher judging whether a sample contains the answer."""
    max_batch_sequences: int = Field(1024, ge=1)
    """Continuations sampled together in one batch (prompts × n)."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""

    @field_validator("matcher")
    @classmethod
    def _known_matcher(cls, v: str) -> str:
        if v not in MATCHERS:
            raise ValueError(f"unknown matcher '{v}'; available: {', '.join(sorted(MATCHERS))}")
        return v


@torch.no_grad()
def sample_continuations(
    model, tokenizer, prompts: Sequence[str], *, n: int, max_new_tokens: int, temperature: float = 1.0,
    top_p: float = 1.0, seed: int = 0, max_batch_sequences: int = 1024, device: str | torch.device = "cpu",
) -> list[list[str]]:
    """``n`` sampled continuations of each prompt (decoded, special tokens dropped).

    Prompts are left-padded and run once; their cache is repeated ``n`` times and the
    continuations of a whole batch of prompts are sampled in lock step from one
    generator seeded with ``seed``.

    Raises:
        LensError: if the model's logits are not finite.
    """
    pad = pad_id_of(tokenizer)
    warp = LogitsProcessorList()
    if temperature != 1.0:
        warp.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warp.append(TopPLogitsWarper(top_p))
    gen = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, max_batch_sequences // n)
    out: list[list[str]] = []
    with progress("leak@k sampling", total=len(prompts)) as bar:
        for start in range(0, len(prompts), per_batch):
            enc = [encode_prompt(tokenizer, p) for p in prompts[start : start + per_batch]]
            toks = _sample_batch(model, enc, pad, tokenizer.eos_token_id, n, max_new_tokens, warp, gen, device)
            for i in range(len(enc)):
                out.append([tokenizer.decode(t, skip_special_tokens=True) for t in toks[i * n : (i + 1) * n].tolist()])
            bar.advance(len(enc))
    return out


def _sample_batch(
    model, enc: list[list[int]], pad: int, eos: int | None, n: int, max_new: int, warp, gen, device
) -> Int[Tensor, "seq new"]:  # noqa: F722
    """Sampled token ids; after a sequence's end-of-sequence token the rest is padding."""
    width = max(len(e) for e in enc)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = res.past_key_values
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(n)
        logits = res.logits[:, -1].repeat_interleave(n, 0)
    else:  # an old-style tuple cache: recompute the prompts n times instead
        ids, mask, pos = (x.repeat_interleave(n, 0) for x in (ids, mask, pos))
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache, logits = res.past_key_values, res.logits[:, -1]
    mask, pos = mask.repeat_interleave(n, 0), pos[:, -1:].repeat_interleave(n, 0)
    seq = ids.new_empty((len(enc) * n, 0))
    ended = torch.zeros(len(enc) * n, 1, dtype=torch.bool, device=ids.device)
    for step in range(max_new):
        scores = warp(seq, logits.float())
        probs = torch.softmax(scores, -1)
        if not torch.isfinite(probs).all():
            raise LensError("non-finite logits while sampling: the model's logits contain NaN or inf")
        nxt = torch.multinomial(probs, 1, generator=gen)
        seq = torch.cat([seq, nxt.masked_fill(ended, pad)], 1)
        if eos is not None:
            ended |= nxt == eos
        if step + 1 == max_new:
            break
        mask, pos = torch.cat([mask, torch.ones_like(nxt)], 1), pos + 1
        res = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        cache, logits = res.past_key_values, res.logits[:, -1]
    return seq


def _max_answer_tokens(tokenizer, items: Sequence[KnowledgeItem]) -> int:
    return max(len(encode_continuation(tokenizer, it.prompt, it.answer, encode_prompt(tokenizer, it.prompt)))
               for it in items)


@register_lens("leak_at_k", LeakAtKConfig, "answer leaks among n sampled continuations (unbiased leak@k)")
def leak_at_k_lens(ctx: AuditContext, cfg: LeakAtKConfig) -> LensResult:
    """leak@k of B, U and N on forget prompts, with greedy exact match beside it."""
    t0 = time.perf_counter()
    items = ctx.items["forget"]
    ks = sorted({k for k in (cfg.ks or default_ks(cfg.n)) if 1 <= k <= cfg.n}) or [cfg.n]
    notes = []
    if cfg.ks and len(ks) < len(set(cfg.ks)):
        notes.append(f"k values outside 1..{cfg.n} were dropped")
    matcher = MATCHERS[cfg.matcher]
    tok0 = ctx.models["base"].tokenizer
    max_new = cfg.max_new_tokens or _max_answer_tokens(tok0, items) + 2
    counts: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    examples: dict[str, list[list[str]]] = {}
    for role in ctx.roles:
        m = ctx.models[role]
        t = time.perf_counter()
        samples = sample_continuations(
            m.hf, m.tokenizer, [it.prompt for it in items], n=cfg.n, max_new_tokens=max_new,
            temperature=cfg.temperature, top_p=cfg.top_p, seed=ctx.seed, max_batch_sequences=cfg.max_batch_sequences,
            device=m.device,
        )
        counts[role] = np.array([sum(matcher(s, it) for s in row) for row, it in zip(samples, items, strict=True)])
        seconds[role] = round(time.perf_counter() - t, 3)
        examples[role] = [row[:4] for row in samples]
    per_k = {role: {k: leak_at_k(cfg.n, c, k) for k in ks} for role, c in counts.items()}
    greedy = {role: ctx.score(role, "forget").greedy for role in ctx.roles}
    ref = "reference" if ctx.has_reference else None
    recs = []
    for k in sorted({ks[0], ks[-1]}):
        # without N there is no sampled end point; 0 is the floor, as for greedy in behavior
        end = per_k[ref][k] if ref else np.zeros(len(items))
        rec = recovery(per_k["base"][k], per_k["unlearned"][k], end, reading=f"leak@{k}",
                       min_power=ctx.config.min_power, n_boot=cfg.n_boot, seed=ctx.seed)
        if k > ks[0]:
            # leak@n is nearly 0/1 per item and rides on lucky hits in closed answer sets: it
            # can show a leak (SUPPRESSED) but is too noisy to bound recovery; leak@1 (= c/n,
            # smooth per item) is the reading that can
            rec.kind = "scan"
        recs.append(rec)
    if not ref:
        notes.append("no reference model: the end point is 0, though a model that never knew can name a "
                     "closed-set answer by luck; recovery is therefore overstated")
    rows = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"id": it.id, "answer": it.answer}
        for role in ctx.roles:
            row[f"{role}_leaks"] = int(counts[role][i])
            row[f"{role}_greedy"] = bool(greedy[role][i])
            row[f"{role}_samples"] = examples[role][i]
        rows.append(row)
    data = {
        "per_item": {"ids": [it.id for it in items], "readings": {
            r.reading: {role: per_k[role][int(r.reading.split("@")[1])].tolist() for role in ctx.roles}
            | ({} if ref else {"reference": [0.0] * len(items)}) for r in recs}},
        "n": cfg.n, "ks": ks, "max_new_tokens": max_new, "matcher": cfg.matcher,
        "leak": {role: [float(per_k[role][k].mean()) for k in ks] for role in ctx.roles},
        "greedy": {role: float(greedy[role].mean()) for role in ctx.roles},
        "sample_rate": {role: float(counts[role].mean() / cfg.n) for role in ctx.roles},
        "items": rows,
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 3)},
    }
    return LensResult(name="leak_at_k", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
