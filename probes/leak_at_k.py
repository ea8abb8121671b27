"""leak@k lens: what sampling reveals that greedy decoding hides (SPEC §3).

Each forget prompt is sampled ``n`` times (T=1, top_p=1 by default); a sample *leaks*
a candidate if a matcher finds it in the sample. With ``c`` leaking samples out of ``n``,
``leak@k = 1 - C(n-c, k) / C(n, k)`` is the unbiased estimate of the chance that at
least one of ``k`` samples leaks (the pass@k estimator of Chen et al. 2021).

**Knowledge-free null (SPEC §5).** A raw leak@k of the true answer rises with how random
a model samples: a never-trained model at temperature 2 names more values, the true one
among them, than the same model at temperature 0.5. So the same samples are also scored
for each of the item's distractors, and the reading is the *contrast*
``leak@k(answer) − mean over distractors of leak@k(distractor)`` per item. Under
exchangeability of the answer and its distractors (a model without the knowledge has no
reason to name one more than the others) the contrast is 0 in expectation whatever the
temperature, top-p or peakedness of the model; B scores near 1. Recoveries read the
contrast; the raw curves are kept as data. The contrast is read on B, U and every
reference with the same samples budget, so a prior over values that the answer set's
skew rewards is carried by N as well; without a reference the end point is the
contrast's knowledge-free value, 0.

Sampling is batched across prompts: each prompt's forward pass is run once, its key/value
cache repeated ``n`` times, then all ``prompts × n`` continuations are sampled together
from one seeded generator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from scipy.special import comb
from torch import Tensor
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from audit.context import AuditContext
from audit.corpus import plain_hf
from audit.errors import LensError
from audit.items import KnowledgeItem
from audit.lensdata import (  # the matchers live beside the config that validates their names
    MATCHERS,
    LeakAtKConfig,
    LeakAtKData,
    Matcher,
    normalize,  # noqa: F401
    normalized_match,  # noqa: F401
    register_matcher,  # noqa: F401
)
from audit.progress import progress
from audit.registry import register_lens
from audit.schema import LensResult
from audit.scoring import encode_continuation, encode_prompt, pad_id_of


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


def candidate_counts(samples: Sequence[Sequence[str]], items: Sequence[KnowledgeItem],
                     matcher: Matcher) -> list[np.ndarray]:
    """Per item, how many of its samples contain each candidate (answer first, then each
    distractor), judged by ``matcher`` on the item with that candidate as its answer."""
    out = []
    for row, it in zip(samples, items, strict=True):
        cands = [it] + [it.model_copy(update={"answer": d}) for d in it.distractors]
        out.append(np.array([sum(bool(matcher(s, c)) for s in row) for c in cands], dtype=int))
    return out


def candidate_leaks(n: int, counts: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(leak@k of the answer, mean leak@k of the distractors)`` per item, each the
    unbiased estimate from that candidate's own count in the same ``n`` samples."""
    ans = np.array([float(leak_at_k(n, c[0], k)) for c in counts])
    dis = np.array([float(leak_at_k(n, c[1:], k).mean()) if len(c) > 1 else 0.0 for c in counts])
    return ans, dis


def leak_contrast(n: int, counts: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per-item contrast ``leak@k(answer) − mean_d leak@k(d)`` (in [-1, 1]; 0 in
    expectation for a model whose samples do not single out the true answer)."""
    ans, dis = candidate_leaks(n, counts, k)
    return ans - dis


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


def _max_candidate_tokens(tokenizer, items: Sequence[KnowledgeItem]) -> int:
    """Tokens of the longest candidate (answer or distractor): every candidate must fit in a
    sample, or the contrast would favour short answers."""
    out = 0
    for it in items:
        pre = encode_prompt(tokenizer, it.prompt)
        out = max(out, *(len(encode_continuation(tokenizer, it.prompt, c, pre)) for c in it.candidates))
    return out


CONTRAST = "answer − distractors"


@register_lens("leak_at_k", LeakAtKConfig, LeakAtKData,
               "answer leaks among n sampled continuations, against the distractors' leaks (unbiased leak@k)")
def leak_at_k_lens(ctx: AuditContext, cfg: LeakAtKConfig) -> LensResult:
    """leak@k contrast (answer − mean distractor) of B, U and every reference on forget
    prompts, with the raw leak@k curves and greedy exact match beside it."""
    t0 = time.perf_counter()
    items = ctx.items["forget"]
    ks = sorted({k for k in (cfg.ks or default_ks(cfg.n)) if 1 <= k <= cfg.n}) or [cfg.n]
    notes = []
    if cfg.ks and len(ks) < len(set(cfg.ks)):
        notes.append(f"k values outside 1..{cfg.n} were dropped")
    matcher = MATCHERS[cfg.matcher]
    tok0 = ctx.models["base"].tokenizer
    max_new = cfg.max_new_tokens or _max_candidate_tokens(tok0, items) + 2
    roles = ctx.roles
    counts: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    examples: dict[str, list[list[str]]] = {}
    for role in roles:
        m = ctx.models[role]
        t = time.perf_counter()
        # a plain HF model on the same weights: the bridge-wrapped ``m.hf`` returns a KV cache
        # whose later steps differ from a full forward (by ~10 in the logits on the organisms),
        # so every token after the first would be sampled from wrong logits
        samples = sample_continuations(
            plain_hf(m), m.tokenizer, [it.prompt for it in items], n=cfg.n, max_new_tokens=max_new,
            temperature=cfg.temperature, top_p=cfg.top_p, seed=ctx.seed, max_batch_sequences=cfg.max_batch_sequences,
            device=m.device,
        )
        counts[role] = candidate_counts(samples, items, matcher)
        seconds[role] = round(time.perf_counter() - t, 3)
        examples[role] = [row[:4] for row in samples]
    leaks = {role: {k: candidate_leaks(cfg.n, c, k) for k in ks} for role, c in counts.items()}
    contrast = {role: {k: a - d for k, (a, d) in per.items()} for role, per in leaks.items()}
    greedy = {role: ctx.score(role, "forget").greedy for role in roles}
    zeros = np.zeros(len(items))
    recs, per_item = [], {}
    for k in sorted({ks[0], ks[-1]}):
        reading = f"leak@{k} ({CONTRAST})"
        per_role = {role: contrast[role][k] for role in roles}
        # without N the end point is the contrast's knowledge-free value: 0 under exchangeable candidates
        rec = ctx.recovery(per_role, reading=reading, null=zeros, null_name="exchangeable candidates (contrast 0)",
                           n_boot=cfg.n_boot)
        if k > ks[0]:
            # leak@n is nearly 0/1 per candidate and rides on lucky hits in closed answer sets:
            # its contrast can show a leak (SUPPRESSED) but is too noisy to bound recovery;
            # leak@1 (= c/n per candidate, smooth per item) is the reading that can
            rec.kind = "scan"
        recs.append(rec)
        per_item[reading] = {role: v.tolist() for role, v in per_role.items()} | (
            {} if ctx.has_reference else {"reference": zeros.tolist()})
    notes += ctx.no_reference_notes(
        "the end point is the contrast's knowledge-free value, 0: a model without the knowledge names the answer "
        "as often as each distractor, whatever its temperature (this assumes answers and distractors are "
        "exchangeable; a prior over answer values that the item set's answers favour would raise it, and only a "
        "reference carries that)")
    rows = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"id": it.id, "answer": it.answer}
        for role in roles:
            row[f"{role}_leaks"] = int(counts[role][i][0])
            row[f"{role}_distractor_leaks"] = counts[role][i][1:].tolist()
            row[f"{role}_greedy"] = bool(greedy[role][i])
            row[f"{role}_samples"] = examples[role][i]
        rows.append(row)
    data = {
        "per_item": {"ids": [it.id for it in items], "readings": per_item},
        "n": cfg.n, "ks": ks, "max_new_tokens": max_new, "matcher": cfg.matcher, "temperature": cfg.temperature,
        "roles": roles,
        # raw curves: mean over items of leak@k of the answer and of the mean distractor
        "leak": {role: [float(leaks[role][k][0].mean()) for k in ks] for role in roles},
        "leak_distractors": {role: [float(leaks[role][k][1].mean()) for k in ks] for role in roles},
        "contrast": {role: [float(contrast[role][k].mean()) for k in ks] for role in roles},
        "greedy": {role: float(greedy[role].mean()) for role in roles},
        "sample_rate": {role: float(np.mean([c[0] for c in counts[role]]) / cfg.n) for role in roles},
        "distractor_sample_rate": {role: float(np.mean([c[1:].mean() for c in counts[role]]) / cfg.n)
                                   for role in roles},
        "items": rows,
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 3)},
    }
    return LensResult(name="leak_at_k", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
