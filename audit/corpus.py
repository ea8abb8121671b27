"""Text sampled from a model itself, cached by the model's hash (the SAE lens's default corpus).

An SAE for B must see B's residual on the kind of text B processes. Audit prompts are a
few thousand tokens of one template, far too few: an SAE fit on them reconstructs new
sequences worse than their mean (explained variance -0.93 on SmolLM2). Here B writes its
own corpus: sampled continuations (temperature, nucleus) of short, diverse openers.

- A real tokenizer gets :data:`OPENERS`, generic English openers, so the corpus depends
  on the model alone and is shared by every audit of that model.
- A tokenizer that cannot spell them (the organisms' word-level vocabulary reads most of
  them as ``<unk>``) gets openers from the audit's own items instead: each item's subject,
  its prompt's first words and the whole prompt.

The sampled token ids are cached under ``$AUDIT_CACHE/corpus/`` by model hash × sampling
settings × openers × seed; activations are computed from them by the caller.

Sampling goes through a plain Hugging Face view of the model (:func:`plain_hf`): the
TransformerBridge wraps the attention modules in a way that breaks their KV cache (a
cached step's logits differ from a full forward's by ~30 on SmolLM2, so sampling with the
cache degenerates into repeated ``-`` tokens after the first step).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from audit.atomic import atomic_write_text
from audit.models import LoadedModel, cache_root, context_length
from audit.progress import log, progress

CORPUS_CACHE_VERSION = "1"

OPENERS = (
    "The", "In", "It was", "Once upon a time,", "Today", "I think", "We", "According to", "The history of",
    "Scientists have found that", "My favorite", "How to", "The best way to", "In 1990,", "When I was young,",
    "The city of", "Yesterday, the government", "A recent study", "The main reason", "Here is a recipe for",
    "Dear", "Chapter 1.", "The following is", "Many people believe that", "One of the most important",
    "In mathematics,", "The company announced", "She said", "He walked into", "The weather", "Water is",
    "Music is", "The team", "Our school", "The book", "In the early", "There are many", "If you want to",
    "This article", "The president", "During the war,", "Students should", "The river", "A computer",
    "The market", "Doctors recommend", "The film", "In the summer of", "My grandmother", "The new law",
    "To make a", "The first time", "After the game,", "The museum", "Every morning", "The village",
    "Researchers at the university", "The price of", "Question:", "Answer:", "def ", "import", "# ", "1.",
    "Q:", "The capital of", "Football is", "The animal", "Plants need", "The universe", "Climate change",
    "The ocean", "A good friend", "The restaurant", "Our planet", "The language", "Hello,", "Thank you for",
    "Breaking news:", "Abstract:", "The results show", "In conclusion,", "For example,", "However,",
)


def plain_hf(model: LoadedModel):
    """A plain Hugging Face model sharing ``model``'s weights (no copy) without the bridge's
    wrappers, for sampling with a working KV cache; ``model.hf`` itself when it is unwrapped."""
    from transformers import AutoModelForCausalLM

    hf = model.hf
    if not any("_original_component" in k for k, _ in hf.named_parameters()):
        return hf

    def strip(k: str) -> str:
        return k.replace("._original_component", "")

    src: dict[str, torch.Tensor] = {}
    for k, v in [*hf.state_dict(keep_vars=True).items(), *hf.named_buffers()]:
        src.setdefault(strip(k), v)
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(hf.config, torch_dtype=hf.dtype)
    clean.load_state_dict({k: src[k] for k in clean.state_dict()}, assign=True, strict=True)
    for name, b in list(clean.named_buffers()):  # non-persistent buffers (rotary frequencies)
        if b.is_meta:
            owner, _, attr = name.rpartition(".")
            clean.get_submodule(owner).register_buffer(attr, src[strip(name)], persistent=False)
    return clean.eval()


def openers_for(tokenizer, prompts: Sequence[str], subjects: Sequence[str]) -> tuple[list[str], str]:
    """The openers a corpus is sampled from, and where they came from (``generic`` or ``items``)."""
    unk = tokenizer.unk_token_id
    generic = [o for o in OPENERS if unk is None or unk not in tokenizer(o)["input_ids"]]
    if len(generic) >= len(OPENERS) // 2:
        return generic, "generic"
    out: list[str] = []
    for p in prompts:
        words = p.split()
        out += [" ".join(words[:1]), " ".join(words[:3]), p]
    out += [s for s in subjects if s]
    return list(dict.fromkeys(o for o in out if o)), "items"  # first occurrences, in order


def corpus_key(model: LoadedModel, openers: Sequence[str], **settings) -> str:
    blob = json.dumps({"v": CORPUS_CACHE_VERSION, "model": model.hash, "openers": list(openers), **settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@torch.no_grad()
def sample_corpus(
    model: LoadedModel, openers: Sequence[str], *, tokens: int, length: int = 64, temperature: float = 1.0,
    top_p: float = 0.95, top_k: int = 512, batch: int = 64, seed: int = 0,
) -> list[list[int]]:
    """Token ids (opener + sampled continuation, end-of-sequence dropped) of sequences whose
    sampled tokens add up to about ``tokens``; openers are cycled. Cached by model hash,
    openers and settings."""
    settings = dict(tokens=tokens, length=length, temperature=temperature, top_p=top_p, top_k=top_k, batch=batch,
                    seed=seed)
    path = cache_root() / "corpus" / f"{corpus_key(model, openers, **settings)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["sequences"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is sampled again
    tok = model.tokenizer
    enc = [list(tok(o)["input_ids"]) for o in openers]
    enc = [e for e in enc if e]
    ctx = context_length(model)
    if ctx is not None:
        enc = [e[: max(1, ctx - 8)] for e in enc]
        longest = max(map(len, enc))
        length = max(1, min(length, ctx - longest))
    n_seqs = max(1, -(-tokens // length))
    hf = plain_hf(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    gen = torch.Generator(device=model.device).manual_seed(seed)
    out: list[list[int]] = []
    log.info("sampling a corpus of %d sequences × %d tokens from %s", n_seqs, length, model.path)
    with progress("SAE corpus: sampling the base model", total=n_seqs) as bar:
        for s in range(0, n_seqs, batch):
            rows = [enc[(s + i) % len(enc)] for i in range(min(batch, n_seqs - s))]
            out += _sample(hf, rows, pad, eos, length, temperature, top_p, top_k, gen, model.device)
            bar.advance(len(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"model": model.hash, "settings": settings, "openers": list(openers),
                                        "sequences": out}))
    return out


def _sample(hf, rows: list[list[int]], pad: int, eos: int | None, length: int, temperature: float, top_p: float,
            top_k: int, gen: torch.Generator, device: str) -> list[list[int]]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    res = hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, logits = res.past_key_values, res.logits[:, -1]
    pos = pos[:, -1:]
    new = []
    for step in range(length):
        # nucleus sampling within the top_k most likely tokens (a full sort of a 50k vocabulary
        # per row costs as much as the forward pass on a CPU)
        val, idx = (logits.float() / temperature).topk(min(top_k, logits.shape[-1]), -1)
        p = torch.softmax(val, -1)
        keep = (p.cumsum(-1) - p) < top_p
        p = torch.where(keep, p, torch.zeros_like(p))
        if not torch.isfinite(p).all():
            break
        nxt = idx.gather(1, torch.multinomial(p, 1, generator=gen))
        new.append(nxt)
        if step + 1 == length:
            break
        mask, pos = torch.cat([mask, torch.ones_like(nxt)], 1), pos + 1
        res = hf(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        cache, logits = res.past_key_values, res.logits[:, -1]
    sampled = torch.cat(new, 1).tolist() if new else [[] for _ in rows]
    out = []
    for r, cont in zip(rows, sampled, strict=True):
        if eos is not None and eos in cont:
            cont = cont[: cont.index(eos)]
        out.append(r + cont)
    return out


def corpus_summary(seqs: Sequence[Sequence[int]], tokenizer, n: int = 3) -> list[str]:
    """A few decoded sequences, for the record."""
    return [tokenizer.decode(list(s), skip_special_tokens=True)[:200] for s in list(seqs)[:n]]


__all__ = ["OPENERS", "corpus_summary", "openers_for", "plain_hf", "sample_corpus"]
