"""Shared pieces of the benchmarks: paired timing, result rows, items and test models.

Every comparison runs both sides in one process, interleaved (A B, then B A, ...), after
one warm-up call each, and reports the median of the per-round ratios: on a shared,
noisy machine a ratio of neighbouring measurements is far steadier than either time.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def organisms_dir() -> Path:
    """The organism suite (``$BENCH_ORGANISMS``, default ``organisms/``, built by ``make demo``)."""
    return Path(os.environ.get("BENCH_ORGANISMS", ROOT / "organisms"))


def work_dir() -> Path:
    """Scratch space for generated models and caches (``$BENCH_WORK``)."""
    from audit.models import cache_root

    d = Path(os.environ.get("BENCH_WORK", cache_root() / "bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    case: str
    measured: str
    target: str
    met: bool | None  # None: skipped or not applicable
    note: str = ""


@dataclass
class Section:
    """What one benchmark returns: table rows and a free-form details block (markdown)."""

    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def paired(fns: dict[str, Callable[[], Any]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` times, in alternating order."""
    names = list(fns)
    if warmup:
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else reversed(names):
            t = time.perf_counter()
            fns[n]()
            out[n].append(time.perf_counter() - t)
    return out


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``time(a) / time(b)``."""
    return float(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)))


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of ``log y`` on ``log x`` (1 = linear growth)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def load_items_scaled(n: int, which: str = "forget"):
    """``n`` items of the organism world, cycling through the set with fresh ids and subjects."""
    from audit.items import KnowledgeItem
    from audit.sources import load_items

    base = load_items(organisms_dir() / f"{which}.jsonl")
    out = []
    for i in range(n):
        it = base[i % len(base)]
        k = i // len(base)
        if k == 0:
            out.append(it)
        else:
            out.append(KnowledgeItem(**{**it.model_dump(), "id": f"{it.id}~{k}",
                                        "subject": f"{it.subject}~{k}" if it.subject else None}))
    return out


def random_llama(name: str, *, d_model: int, n_layers: int, n_heads: int, d_mlp: int, kv_heads: int | None = None,
                 vocab: int | None = None, seed: int = 0) -> Path:
    """A random-init Llama checkpoint with the organisms' word-level tokenizer (cached by name).

    ``vocab`` pads the unembedding to a real model's size (the tokenizer only emits the
    first few hundred ids), so the head costs what it would there.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = work_dir() / "models" / name
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(organisms_dir() / "base")
    base_cfg = json.loads((organisms_dir() / "base" / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=max(vocab or 0, len(tok)), hidden_size=d_model, intermediate_size=d_mlp,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=kv_heads or n_heads,
        max_position_embeddings=256, bos_token_id=base_cfg.get("bos_token_id"),
        eos_token_id=base_cfg.get("eos_token_id"), pad_token_id=base_cfg.get("pad_token_id"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def smollm2_dir() -> Path | None:
    """The cached SmolLM2-135M-Instruct HF checkpoint, if it was fetched (``make smollm2``)."""
    try:
        from audit.lab.realmodel import GGUF_NAME, smollm2_cache
        from audit.models import content_hash
    except ImportError:
        return None
    gguf = smollm2_cache() / GGUF_NAME
    if not gguf.is_file():
        return None
    from audit.models import cache_root

    hf = cache_root() / "gguf" / content_hash(gguf)
    return hf if (hf / "config.json").is_file() else None


def describe(model) -> str:
    cfg = model.hf.config
    n = sum(p.numel() for p in model.hf.parameters())
    return f"{cfg.model_type}, {model.n_layers} layers, d={model.d_model}, {n / 1e6:.1f}M params"
