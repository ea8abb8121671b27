"""Activation capture, shared by every lens through an on-disk cache.

Residual activations at chosen hook points (default ``blocks.{l}.hook_resid_post`` for
every layer) are read at the last prompt token and as a mask-aware mean over the prompt
tokens (the first token, a BOS or attention sink, excluded). Each model is forwarded
once per item set: results are stored as safetensors keyed by model hash × item-set
hash × hooks × code version, written to a temp file and renamed.

:func:`capture_candidates` reads the same hooks at the last token of every ``prompt +
candidate`` (the shared candidate encoding), one forward per candidate, for read-outs
that score arbitrary answer strings (the linear-probe lens's truth probe).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from audit.atomic import atomic_path
from audit.batching import run_batched
from audit.items import KnowledgeItem, items_hash
from audit.models import LoadedModel, cache_root
from audit.progress import log, progress
from audit.scoring import candidate_token_ids, check_finite, encode_prompt, pad_batch, pad_id_of

CACHE_VERSION = "1"

# Forward passes made for capture in this process (tests assert cache reuse with it).
FORWARD_COUNTER = {"capture": 0}


def resid_hooks(n_layers: int) -> list[str]:
    """Default hook points: the residual stream after every block."""
    return [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


@dataclass
class Activations:
    """Captured activations of one model on one item set."""

    hooks: list[str]
    last: dict[str, Float[Tensor, "item d_model"]]
    mean: dict[str, Float[Tensor, "item d_model"]]

    def stack(self, which: str = "last") -> Float[Tensor, "layer item d_model"]:
        src = self.last if which == "last" else self.mean
        return torch.stack([src[h] for h in self.hooks])


def _key(model: LoadedModel, items: Sequence[KnowledgeItem], hooks: Sequence[str]) -> str:
    blob = "|".join([CACHE_VERSION, model.hash, items_hash(items), *hooks])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@torch.no_grad()
def capture_uncached(
    model: LoadedModel, items: Sequence[KnowledgeItem], hooks: Sequence[str], batch_size: int = 32
) -> Activations:
    """Forward the prompts once, reading every hook in ``hooks``.

    A batch that runs out of memory is retried at half the size.

    Raises:
        LensError: if an activation holds NaN or inf (naming the model, item and hook),
            or if memory runs out even at batch size 1.
    """
    tok = model.tokenizer
    prompts = [encode_prompt(tok, it.prompt) for it in items]
    hookset = set(hooks)
    who = f"{model.role} model ({model.path})"

    def chunk(a: int, b: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        ids, mask = pad_batch(prompts[a:b], pad_id_of(tok), model.device)
        _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in hookset)
        FORWARD_COUNTER["capture"] += 1
        lengths = mask.sum(1)
        pool = mask.clone().float()
        pool[:, 0] = torch.where(lengths > 1, 0.0, 1.0)
        rows = torch.arange(b - a, device=ids.device)
        last: dict[str, Tensor] = {}
        mean: dict[str, Tensor] = {}
        # hooks pooled a group at a time (per-hook loops cost more than a small model's
        # forward; a group stays under ~256 MB so a large model's peak does not double)
        per = max(1, (1 << 26) // max(1, ids.numel() * model.d_model))
        groups: list[list[str]] = []
        for h in hooks:  # consecutive hooks of one shape
            if groups and len(groups[-1]) < per and cache[h].shape == cache[groups[-1][0]].shape:
                groups[-1].append(h)
            else:
                groups.append([h])
        for names in groups:
            act = torch.stack([cache[h] for h in names]).float()  # hook batch pos d_model
            if not bool(torch.isfinite(act).all()):  # name the first broken item and hook
                for j, h in enumerate(names):
                    check_finite(act[j], mask, [it.id for it in items[a:b]], who, f"activations at {h}")
            last.update(zip(names, act[:, rows, lengths - 1].cpu().unbind(0), strict=True))
            pooled = (act * pool[None, ..., None]).sum(2) / pool.sum(1, keepdim=True)[None]
            mean.update(zip(names, pooled.cpu().unbind(0), strict=True))
        bar.advance(b - a)
        return last, mean

    with progress(f"capture {model.role}", total=len(prompts)) as bar:
        parts = run_batched(chunk, len(prompts), batch_size, what=f"activation capture ({who})")
    return Activations(
        list(hooks),
        {h: torch.cat([p[0][h] for p in parts]) for h in hooks},
        {h: torch.cat([p[1][h] for p in parts]) for h in hooks},
    )


def capture(
    model: LoadedModel,
    items: Sequence[KnowledgeItem],
    hooks: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
) -> Activations:
    """Cached capture: reuse the on-disk entry when model, items and hooks match."""
    hooks = list(hooks) if hooks is not None else resid_hooks(model.n_layers)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "activations"
    path = root / f"{_key(model, items, hooks)}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return Activations(hooks, {h: t[f"last/{h}"] for h in hooks}, {h: t[f"mean/{h}"] for h in hooks})
        except Exception as e:  # noqa: BLE001 (an unreadable entry is recomputed, never trusted)
            log.warning("activation cache entry %s is unreadable (%s); recomputing it", path, e)
    acts = capture_uncached(model, items, hooks, batch_size)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {f"last/{h}": acts.last[h].contiguous() for h in hooks}
    tensors.update({f"mean/{h}": acts.mean[h].contiguous() for h in hooks})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return acts


@dataclass
class CandidateActivations:
    """Activations at the last token of ``prompt + candidate``, one row per (item, candidate).

    Rows are item-major: item 0's candidates (answer first), then item 1's, ...
    """

    hooks: list[str]
    last: dict[str, Float[Tensor, "row d_model"]]
    item: Int[Tensor, " row"]
    """The item (index into the item set) of each row."""
    candidate: Int[Tensor, " row"]
    """The candidate of each row (0 = the answer)."""


@torch.no_grad()
def capture_last_tokens(
    model: LoadedModel, seqs: Sequence[Sequence[int]], hooks: Sequence[str], batch_size: int = 32,
    item_ids: Sequence[str] | None = None,
) -> dict[str, Float[Tensor, "seq d_model"]]:
    """Forward token sequences (sorted by length, batched) and read each hook at each one's
    last token, in the order given.

    Raises:
        LensError: if an activation holds NaN or inf, or memory runs out at batch size 1.
    """
    tok = model.tokenizer
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    hookset = set(hooks)
    who = f"{model.role} model ({model.path})"
    names = list(item_ids) if item_ids is not None else [str(k) for k in range(len(seqs))]

    def chunk(a: int, b: int) -> dict[str, Tensor]:
        idx = order[a:b]
        ids, mask = pad_batch([seqs[k] for k in idx], pad_id_of(tok), model.device)
        _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in hookset)
        FORWARD_COUNTER["capture"] += 1
        rows = torch.arange(len(idx), device=ids.device)
        last = mask.sum(1) - 1
        out: dict[str, Tensor] = {}
        for h in hooks:
            act = cache[h][rows, last].float()
            if not bool(torch.isfinite(act).all()):
                check_finite(cache[h].float(), mask, [names[k] for k in idx], who, f"activations at {h}")
            out[h] = act.cpu()
        bar.advance(b - a)
        return out

    with progress(f"capture {model.role} (last tokens)", total=len(seqs)) as bar:
        parts = run_batched(chunk, len(seqs), batch_size, what=f"activation capture ({who})")
    inv = torch.empty(len(seqs), dtype=torch.long)
    inv[torch.tensor(order, dtype=torch.long)] = torch.arange(len(seqs))
    return {h: (torch.cat([p[h] for p in parts])[inv] if parts else torch.zeros(0, model.d_model)) for h in hooks}


def capture_candidates_uncached(
    model: LoadedModel, items: Sequence[KnowledgeItem], hooks: Sequence[str], batch_size: int = 32
) -> CandidateActivations:
    """Forward every ``prompt + candidate`` (the shared candidate encoding,
    :func:`audit.scoring.candidate_token_ids`) and read each hook at its last token.

    Raises:
        LensError: if an activation holds NaN or inf, or memory runs out at batch size 1.
    """
    tok = model.tokenizer
    seqs: list[list[int]] = []
    item_idx: list[int] = []
    cand_idx: list[int] = []
    for i, it in enumerate(items):
        p = encode_prompt(tok, it.prompt)
        for j, c in enumerate(candidate_token_ids(tok, it)):
            seqs.append(p + c)
            item_idx.append(i)
            cand_idx.append(j)
    last = capture_last_tokens(model, seqs, hooks, batch_size, [items[i].id for i in item_idx])
    return CandidateActivations(list(hooks), last, torch.tensor(item_idx, dtype=torch.long),
                                torch.tensor(cand_idx, dtype=torch.long))


def capture_candidates(
    model: LoadedModel,
    items: Sequence[KnowledgeItem],
    hooks: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
) -> CandidateActivations:
    """Cached :func:`capture_candidates_uncached` (same cache folder and key scheme as
    :func:`capture`, tagged ``candidates``)."""
    hooks = list(hooks) if hooks is not None else resid_hooks(model.n_layers)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "activations"
    path = root / f"cand-{_key(model, items, ['candidates', *hooks])}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return CandidateActivations(hooks, {h: t[f"last/{h}"] for h in hooks}, t["item"], t["candidate"])
        except Exception as e:  # noqa: BLE001 (an unreadable entry is recomputed, never trusted)
            log.warning("activation cache entry %s is unreadable (%s); recomputing it", path, e)
    acts = capture_candidates_uncached(model, items, hooks, batch_size)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {f"last/{h}": acts.last[h].contiguous() for h in hooks}
    tensors.update({"item": acts.item.contiguous(), "candidate": acts.candidate.contiguous()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return acts
