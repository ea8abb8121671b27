"""Activation capture, shared by every lens through an on-disk cache.

Residual activations at chosen hook points (default ``blocks.{l}.hook_resid_post`` for
every layer) are read at the last prompt token and as a mask-aware mean over the prompt
tokens (the first token, a BOS or attention sink, excluded). Each model is forwarded
once per item set: results are stored as safetensors keyed by model hash × item-set
hash × hooks × code version, written to a temp file and renamed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from audit.items import KnowledgeItem, items_hash
from audit.models import LoadedModel, cache_root
from audit.progress import progress
from audit.scoring import encode_prompt, pad_batch, pad_id_of

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
    """Forward the prompts once, reading every hook in ``hooks``."""
    tok = model.tokenizer
    prompts = [encode_prompt(tok, it.prompt) for it in items]
    last = {h: [] for h in hooks}
    mean = {h: [] for h in hooks}
    hookset = set(hooks)
    with progress(f"capture {model.role}", total=len(prompts)) as bar:
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            ids, mask = pad_batch(chunk, pad_id_of(tok), model.device)
            _, cache = model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in hookset)
            FORWARD_COUNTER["capture"] += 1
            lengths = mask.sum(1)
            pool = mask.clone().float()
            pool[:, 0] = torch.where(lengths > 1, 0.0, 1.0)
            rows = torch.arange(len(chunk), device=ids.device)
            for h in hooks:
                act = cache[h].float()
                last[h].append(act[rows, lengths - 1].cpu())
                mean[h].append(((act * pool[..., None]).sum(1) / pool.sum(1, keepdim=True)).cpu())
            bar.advance(len(chunk))
    return Activations(list(hooks), {h: torch.cat(v) for h, v in last.items()}, {h: torch.cat(v) for h, v in mean.items()})


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
        t = load_file(str(path))
        return Activations(hooks, {h: t[f"last/{h}"] for h in hooks}, {h: t[f"mean/{h}"] for h in hooks})
    acts = capture_uncached(model, items, hooks, batch_size)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {f"last/{h}": acts.last[h].contiguous() for h in hooks}
    tensors.update({f"mean/{h}": acts.mean[h].contiguous() for h in hooks})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return acts
