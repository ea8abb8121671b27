"""Quantization lens: the knowledge score after weight-only quantization (SPEC §3).

Zhang et al. (ICLR 2025) found that quantizing an "unlearned" model to 4 bits brings
back most of the forgotten knowledge: unlearning moves weights by less than a
quantization step, so rounding snaps them back toward the base model's. Here every
``nn.Linear`` (the unembedding included; embeddings and norms stay in full precision)
of B, U and N is quantized group-wise by round-to-nearest (RTN), symmetric
and asymmetric, and scored. Recovery uses quantized B and quantized N as end points,
since quantization costs B some accuracy too. The primary reading, fixed without
looking at U, is the fewest bits at which quantized B still knows the forget set; the
other settings are scans with Bonferroni-widened CIs. Where CUDA and bitsandbytes are
present, bitsandbytes' own int8, NF4 and FP4 quantizers are run as well.

Memory stays at one model: the weights are quantized in place and read back from the
checkpoint's safetensors one tensor at a time after each setting (checked first to hold
exactly the loaded values; a model whose checkpoint does not is quantized on a copy, and a
note says so).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from audit.context import AuditContext
from audit.errors import LensError
from audit.lensdata import QuantizationConfig, QuantizationData
from audit.models import LoadedModel
from audit.registry import register_lens
from audit.schema import LensResult, Recovery
from audit.scoring import ScoreResult, encode_items, score_items

Quantizer = Callable[[Tensor], Tensor]


def _rtn_rows(x: Float[Tensor, "groups size"], bits: int, symmetric: bool) -> Float[Tensor, "groups size"]:  # noqa: F722
    """Fake-quantize each row of ``x`` as one group."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
        return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale
    qmax = 2**bits - 1
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(lo), (hi - lo) / qmax)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    deq = (torch.clamp(torch.round(x / scale) + zero, 0, qmax) - zero) * scale
    return torch.where(flat, x, deq)  # a constant group is represented exactly


def quantize_rtn(
    w: Float[Tensor, "out in"], bits: int, group_size: int = 128, symmetric: bool = True  # noqa: F722
) -> Float[Tensor, "out in"]:  # noqa: F722
    """Round-to-nearest weight quantization, returned dequantized (same shape and dtype).

    Each output row is cut into groups of ``group_size`` consecutive input weights (the
    last group of a row takes the remainder); each group gets its own scale.

    - symmetric: ``s = max|w| / (2^(b-1) - 1)``, ``q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)``,
      ``ŵ = q·s``.
    - asymmetric: ``s = (max w - min w) / (2^b - 1)``, ``z = round(-min w / s)``,
      ``q = clamp(round(w / s) + z, 0, 2^b - 1)``, ``ŵ = (q - z)·s``.

    Args:
        w: a 2-D weight matrix.
        bits: bits per weight (2..8).
        group_size: weights per group; ``<= 0`` means one group per row.
        symmetric: symmetric (zero at 0) or asymmetric (min-max with a zero point).
    """
    if w.ndim != 2:
        raise ValueError(f"quantize_rtn expects a 2-D weight, got shape {tuple(w.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    n_out, n_in = w.shape
    g = n_in if group_size <= 0 else min(group_size, n_in)
    full = (n_in // g) * g
    out = torch.empty_like(w, memory_format=torch.contiguous_format)
    # a block of rows at a time (every group lies within a row, so the result is the same):
    # the temporaries of a 128k-token unembedding stay a few MiB, not several copies of it
    step = _block_rows(n_in)
    for i in range(0, n_out, step):
        x = w[i : i + step].detach().float()
        out[i : i + len(x), :full] = _rtn_rows(x[:, :full].reshape(-1, g), bits, symmetric).reshape(len(x), full)
        if full < n_in:
            out[i : i + len(x), full:] = _rtn_rows(x[:, full:], bits, symmetric)
    return out


BLOCK_ELEMENTS = 1 << 22
"""Weights handled at once when a matrix is quantized and its error measured (16 MiB in fp32)."""


def _block_rows(n_in: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, n_in))


@torch.no_grad()
def quantize_linears(model: nn.Module, quantizer: Quantizer) -> dict[str, float]:
    """Replace the weight of every ``nn.Linear`` of ``model`` (in place) by ``quantizer(weight)``.

    Call it on a copy. A weight shared by several modules (tied embeddings) is quantized
    once. Returns the measured error: relative Frobenius error over all quantized
    weights, mean absolute error, the largest per-matrix relative error, and counts.
    """
    seen: set[int] = set()
    err2 = tot2 = abs_err = 0.0
    worst, n_mat, n_w = 0.0, 0, 0
    for mod in model.modules():
        if not isinstance(mod, nn.Linear) or id(mod.weight) in seen:
            continue
        seen.add(id(mod.weight))
        w = mod.weight
        q = quantizer(w).to(w.device, w.dtype)
        e2 = t2 = 0.0
        step = _block_rows(w.shape[-1])
        for i in range(0, len(w), step):  # in blocks of rows: no float64 copy of a whole matrix
            d = (q[i : i + step] - w[i : i + step]).double()
            e2 += float(d.pow(2).sum())
            t2 += float(w[i : i + step].double().pow(2).sum())
            abs_err += float(d.abs().sum())
        err2, tot2 = err2 + e2, tot2 + t2
        worst = max(worst, math.sqrt(e2 / t2) if t2 > 0 else 0.0)
        n_mat, n_w = n_mat + 1, n_w + w.numel()
        w.copy_(q)
    if n_mat == 0:
        raise LensError("the model has no nn.Linear layers to quantize")
    return {"rel_error": math.sqrt(err2 / tot2) if tot2 > 0 else 0.0, "mean_abs_error": abs_err / n_w,
            "max_layer_rel_error": worst, "n_matrices": n_mat, "n_weights": n_w}


def bnb_quantizers(blocksize: int = 64) -> tuple[dict[str, Quantizer], str | None]:
    """bitsandbytes' int8 (row-wise absmax), NF4 and FP4 quantizers, as weight round trips.

    Returns the quantizers and, when they cannot run, why (no CUDA, not installed).
    """
    if not torch.cuda.is_available():
        return {}, "bitsandbytes settings skipped: no CUDA device"
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        return {}, "bitsandbytes settings skipped: bitsandbytes is not installed"

    def four_bit(kind: str, w: Tensor) -> Tensor:
        x = w.detach().to("cuda", torch.float16)
        packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=kind)
        return bnbf.dequantize_4bit(packed, state).to(w.device, w.dtype)

    def int8(w: Tensor) -> Tensor:
        # LLM.int8 weights: per-row absmax to int8; its activation-outlier path is not a weight change
        x = w.detach().to("cuda", torch.float16)
        q, stats, _ = bnbf.int8_vectorwise_quant(x)
        return bnbf.int8_vectorwise_dequant(q, stats).to(w.device, w.dtype)

    return {"bnb int8": int8, "bnb nf4": partial(four_bit, "nf4"), "bnb fp4": partial(four_bit, "fp4")}, None


def _forward_of(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    return forward


def _summary(s: ScoreResult) -> dict[str, float]:
    return {"score": s.score, "greedy": s.greedy_score, "mean_margin": float(s.margins.mean())}


def weight_sources(model: LoadedModel) -> dict[str, tuple[Path, str]] | None:
    """For every ``nn.Linear`` weight of ``model`` (by parameter name): the safetensors file
    and key it was loaded from, checked to hold exactly the loaded values (cast to the
    model's dtype). ``None`` when any cannot be found or differs (then the lens quantizes a
    copy). Reads one tensor at a time."""
    from safetensors import safe_open

    if model.source is None:
        return None
    files = sorted(Path(model.source).glob("*.safetensors"))
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(f, "pt") as fh:
            where |= {k: f for k in fh.keys()}  # noqa: SIM118  (safe_open is no mapping)
    aliases: dict[int, list[str]] = {}
    for name, p in model.hf.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    prefix = getattr(model.hf, "base_model_prefix", "") or ""
    out: dict[str, tuple[Path, str]] = {}
    params = dict(model.hf.named_parameters())
    for mod in model.hf.modules():
        if not isinstance(mod, nn.Linear):
            continue
        names = aliases.get(id(mod.weight), [])
        found = None
        for n in names:
            n = n.replace("._original_component", "")  # transformer-lens' bridge wraps modules in place
            for key in (n, n.removeprefix(prefix + "."), f"{prefix}.{n}"):
                if key in where:
                    found = (where[key], key)
                    break
            if found:
                break
        own = next((n for n in names if n in params), None)
        if found is None or own is None:
            return None
        out[own] = found
    for own, (f, key) in out.items():
        with safe_open(f, "pt") as fh:
            t = fh.get_tensor(key)
        p = params[own]
        if t.shape != p.shape or not torch.equal(t.to(p.dtype), p.detach().cpu()):
            return None
    return out


@torch.no_grad()
def restore_weights(model: LoadedModel, sources: dict[str, tuple[Path, str]]) -> None:
    """Read every weight of ``sources`` back from its file into ``model``, one at a time."""
    from safetensors import safe_open

    params = dict(model.hf.named_parameters())
    for own, (f, key) in sources.items():
        with safe_open(f, "pt") as fh:
            params[own].copy_(fh.get_tensor(key).to(params[own].dtype))


@contextmanager
def quantized(model: LoadedModel, quantizer: Quantizer, sources: dict[str, tuple[Path, str]] | None,
              ) -> Iterator[tuple[nn.Module, dict[str, float]]]:
    """``model``'s HF module with every ``nn.Linear`` weight quantized, and the measured error.

    With ``sources`` (:func:`weight_sources`) the weights are quantized in place and read
    back from the checkpoint afterwards, so no second model is ever held; without, a copy
    is quantized."""
    if sources is None:
        q = copy.deepcopy(model.hf)
        try:
            yield q, quantize_linears(q, quantizer)
        finally:
            del q
        return
    try:
        yield model.hf, quantize_linears(model.hf, quantizer)
    finally:
        restore_weights(model, sources)


@register_lens("quantization", QuantizationConfig, QuantizationData, "knowledge score after weight-only quantization (RTN, bitsandbytes)")
def quantization(ctx: AuditContext, cfg: QuantizationConfig) -> LensResult:
    """Ranking recovery of U under each quantization setting, with quantized B and N as end points."""
    t0 = time.perf_counter()
    items = ctx.items["forget"]
    settings: list[tuple[str, str, int | None, Quantizer]] = [
        (f"rtn int{b} {s} g{cfg.group_size}", s, b, partial(quantize_rtn, bits=b, group_size=cfg.group_size,
                                                              symmetric=s == "sym"))
        for s in cfg.schemes for b in sorted(set(cfg.bits), reverse=True)
    ]
    notes = ["every nn.Linear (unembedding included) is quantized; embeddings and norms stay in full precision"]
    if getattr(ctx.models["base"].hf.config, "tie_word_embeddings", False):
        notes.append("the unembedding is tied to the token embeddings, so those are quantized with it")
    if cfg.bitsandbytes:
        qs, why = bnb_quantizers(cfg.bnb_blocksize)
        settings += [(name, "bnb", None, q) for name, q in qs.items()]
        if why:
            notes.append(why)
    notes += ctx.no_reference_notes("the end point is chance, not a quantized N")
    enc = {role: encode_items(ctx.models[role].tokenizer, items) for role in ctx.roles}
    # in place where the checkpoint holds every quantized weight as loaded: memory stays
    # at one model (issue 19); otherwise on a copy, as the note says
    sources = {role: weight_sources(ctx.models[role]) for role in ctx.roles}
    copied = [role for role, s in sources.items() if s is None]
    if copied:
        notes.append(f"quantized on a copy (the checkpoint's safetensors do not hold every weight as loaded): "
                     f"{', '.join(copied)}")
    rows: list[dict] = []
    per_setting: list[dict[str, np.ndarray]] = []
    for label, scheme, bits, quantizer in settings:
        t = time.perf_counter()
        scores: dict[str, ScoreResult] = {}
        errors: dict[str, dict[str, float]] = {}
        for role in ctx.roles:
            m = ctx.models[role]
            with quantized(m, quantizer, sources[role]) as (q, errors[role]):
                scores[role] = score_items(_forward_of(q), m.tokenizer, items, batch_size=ctx.config.batch_size,
                                           device=m.device, encoded=enc[role])
            # the name outlives the block: kept, it would hold this model's weights while
            # --low-memory loads the next model's (two models resident)
            del q
        per_role = {role: s.per_item(cfg.metric, ctx.temperature(role)) for role, s in scores.items()}
        per_setting.append(per_role)
        rec = ctx.recovery(per_role, reading=label, n_boot=cfg.n_boot)
        rows.append({
            "label": label, "scheme": scheme, "bits": bits,
            "group_size": cfg.group_size if scheme != "bnb" else cfg.bnb_blocksize,
            "scores": {role: _summary(s) for role, s in scores.items()},
            "margin_shift": {role: float(np.mean(np.abs(s.margins - ctx.score(role, "forget").margins)))
                             for role, s in scores.items()},
            "weight_error": errors, "recovery": rec.value, "ci_low": rec.ci_low, "ci_high": rec.ci_high,
            "informative": rec.informative, "power": rec.score_base - rec.score_reference,
            "seconds": round(time.perf_counter() - t, 3),
        })

    # primary, chosen without looking at U: the fewest RTN bits at which quantized B still
    # knows the forget set (the strongest attack with power), ties to the larger B - N gap
    rtn = [i for i, r in enumerate(rows) if r["scheme"] != "bnb"] or list(range(len(rows)))
    ok = [i for i in rtn if rows[i]["informative"]] or rtn
    primary = min(ok, key=lambda i: (rows[i]["bits"] or 99, -rows[i]["power"], i))
    recs: list[Recovery] = []
    for i, (label, *_rest) in enumerate(settings):
        # the other settings are scans: their CIs are widened for the number of settings
        rec = ctx.recovery(per_setting[i], reading=label, n_boot=cfg.n_boot,
                           n_compared=1 if i == primary else len(settings))
        rec.kind = "primary" if i == primary else "scan"
        rows[i]["kind"] = rec.kind
        if i == primary:
            recs.insert(0, rec)
        else:
            recs.append(rec)
    prim = per_setting[primary]
    data = {
        "full_precision": {role: _summary(ctx.score(role, "forget")) for role in ctx.roles},
        "settings": rows,
        "in_place": {role: s is not None for role, s in sources.items()},
        "primary": settings[primary][0],
        "per_item": {"ids": [it.id for it in items], "readings": {settings[primary][0]: {
            role: np.asarray(v, dtype=float).tolist() for role, v in prim.items()}}},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return LensResult(name="quantization", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
