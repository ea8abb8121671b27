"""Relearn lens: fine-tuning on some facts brings back others (SPEC §3).

(a) Deeb & Roger (2024), "Do unlearning methods remove information from language model
weights?": forget items are split by subject into halves A and B; a copy of the model
is fine-tuned on half A's prompts + answers, and half B is scored. Half B's facts are
arbitrary (about other people), so fine-tuning on A can only bring them back if they
are still in the weights. The same fine-tune is run from B and from N: N learns A but
knows nothing of B, which makes it the end point.

(b) Łucki et al. (2025): fine-tuning on a few *unrelated* examples (retain items here)
often undoes unlearning too; the forget set is scored afterwards.

Both report a curve over fine-tuning steps; the verdict reads each variant at the full
step budget (the largest step count). Full fine-tuning runs on a copy; LoRA relearning
(``method: lora``, the default above 300M parameters) injects peft adapters into the
loaded model and removes them afterwards, so memory stays near one model. Either way the
loaded models' weights are hashed before and after to prove they were not touched.

Each fine-tuning run's scores are cached on disk (``$AUDIT_CACHE/relearn``), keyed by
everything the run reads: the checkpoint's content hash, the training and scored items,
the step grid, learning rate, batch sizes, seed, device, dtype and torch version. Audits
that share B or N (a calibration, a sweep, an audit re-run with and without a reference)
fine-tune each of them once.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.context import AuditContext
from audit.errors import LensError
from audit.items import KnowledgeItem, items_hash
from audit.lensdata import LoraSettings, RelearnConfig, RelearnData
from audit.models import LoadedModel, cached_json
from audit.progress import progress
from audit.registry import register_lens
from audit.schema import LensResult, Recovery
from audit.scoring import ScoreResult, encode_items, encode_prompt, score_items
from audit.training import batches, lm_loss

RELEARN_CACHE_VERSION = "1"
"""Part of every relearn cache key: bump it when :func:`relearn_curve` changes what it computes."""


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names and bytes) of a model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=False).items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def split_by_subject(items: Sequence[KnowledgeItem], seed: int) -> tuple[list[int], list[int]]:
    """Indices of halves A and B: subjects shuffled with ``seed``, then halved.

    All items of one subject fall in the same half; an item without a subject is its own.
    """
    subjects = sorted({it.subject or f"id:{it.id}" for it in items})
    random.Random(seed).shuffle(subjects)
    in_a = set(subjects[: len(subjects) // 2])
    a = [i for i, it in enumerate(items) if (it.subject or f"id:{it.id}") in in_a]
    b = [i for i, it in enumerate(items) if (it.subject or f"id:{it.id}") not in in_a]
    return a, b


def training_text(item: KnowledgeItem) -> str:
    """The prompt followed by its answer (a space between them unless the prompt ends in one)."""
    sep = "" if item.prompt.endswith((" ", "\n")) else " "
    return item.prompt + sep + item.answer


_BRIDGE = "._original_component"


def lora_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """The full names of the ``nn.Linear`` modules LoRA adapts: every one but the output
    head for ``all-linear``, else those whose name ends in one of ``targets``.

    Full names, because transformer-lens' bridge wraps each HF module in place (the layer
    itself sits at ``<name>._original_component``): peft must replace the linear layer
    inside the wrapper, not the wrapper, so that removing the adapters restores the model
    exactly.

    Raises:
        LensError: when no linear layer matches.
    """
    head = getattr(model, "get_output_embeddings", lambda: None)()  # a transformers model's output head
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or mod is head:
            continue
        clean = name.replace(_BRIDGE, "")
        if targets == "all-linear" or any(clean == t or clean.endswith("." + t) for t in targets):
            out.append(name)
    if not out:
        raise LensError(f"LoRA relearning: no linear layer of the model matches target_modules {targets!r}")
    return out


@contextmanager
def _trainable(model: nn.Module, lora: LoraSettings | None, seed: int) -> Iterator[tuple[nn.Module, list]]:
    """The model to fine-tune and its trainable parameters: a full copy of ``model``, or
    ``model`` itself with LoRA adapters injected by peft (removed again afterwards, leaving
    ``model``'s weights as they were)."""
    if lora is None:
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        yield m, params
        return
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapters' random initialisation
    names = lora_targets(model, lora.target_modules)
    originals = {n: model.get_submodule(n) for n in names}
    had_config = hasattr(model, "peft_config")
    # peft annotates lora_alpha as int but only divides by it (scaling = alpha / r): a float is used as given
    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=names)  # type: ignore[arg-type]
    try:
        pm = get_peft_model(model, cfg)
    except ValueError as e:
        raise LensError(f"LoRA relearning cannot target {lora.target_modules!r} in this model: {e}") from None
    try:
        yield pm, [p for p in pm.parameters() if p.requires_grad]
    finally:
        # the original linear layers back where they were. Not peft's unload(): the bridge's
        # wrappers pass attribute lookups on to the layer inside, so unload() takes a
        # wrapper for a LoRA layer and replaces the wrapper itself
        for n, mod in originals.items():
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, mod)
        if not had_config and "peft_config" in vars(model):
            del model.peft_config
        for p in model.parameters():
            p.requires_grad_(False)


def relearn_curve(
    model: nn.Module, tokenizer, train: Sequence[KnowledgeItem], evals: Mapping[str, Sequence[KnowledgeItem]],
    steps: Sequence[int], *, lr: float, batch_size: int, seed: int, eval_batch_size: int = 32,
    device: str | torch.device = "cpu", desc: str = "relearn", lora: LoraSettings | None = None,
) -> dict[int, dict[str, ScoreResult]]:
    """Fine-tune ``model`` on ``train`` items; score ``evals`` after each step count.

    AdamW on the LM loss of prompt + answer texts, one run for the whole grid (the scores
    at a step count are those of a model trained that long): full fine-tuning of a copy,
    or with ``lora`` LoRA adapters on ``model`` itself, removed afterwards.

    Raises:
        LensError: if the loss becomes non-finite.
    """
    with _trainable(model, lora, seed) as (m, params):
        return _fit_and_score(m, params, tokenizer, train, evals, steps, lr=lr, batch_size=batch_size, seed=seed,
                              eval_batch_size=eval_batch_size, device=device, desc=desc)


def _fit_and_score(
    m: nn.Module, params: list, tokenizer, train: Sequence[KnowledgeItem], evals: Mapping[str, Sequence[KnowledgeItem]],
    steps: Sequence[int], *, lr: float, batch_size: int, seed: int, eval_batch_size: int,
    device: str | torch.device, desc: str,
) -> dict[int, dict[str, ScoreResult]]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    stream = batches([encode_prompt(tokenizer, training_text(it)) for it in train], batch_size, random.Random(seed))
    enc = {k: encode_items(tokenizer, v) for k, v in evals.items()}
    grid = sorted(set(steps))
    out: dict[int, dict[str, ScoreResult]] = {}
    done = 0

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return m(input_ids=ids, attention_mask=mask).logits

    with progress(desc, total=grid[-1] if grid else 0) as bar:
        for target in grid:
            m.train()
            while done < target:
                ids, mask = next(stream)
                loss = lm_loss(m, ids.to(device), mask.to(device))
                if not torch.isfinite(loss):
                    raise LensError(f"{desc}: the fine-tuning loss became non-finite at step {done}")
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                done += 1
                bar.advance()
            m.eval()
            with torch.no_grad():
                out[target] = {k: score_items(forward, tokenizer, evals[k], batch_size=eval_batch_size, device=device,
                                              encoded=enc[k]) for k in evals}
    return out


def cached_relearn_curve(
    model: LoadedModel, train: Sequence[KnowledgeItem], evals: Mapping[str, Sequence[KnowledgeItem]],
    steps: Sequence[int], *, lr: float, batch_size: int, seed: int, eval_batch_size: int = 32, desc: str = "relearn",
    lora: LoraSettings | None = None,
) -> dict[int, dict[str, ScoreResult]]:
    """:func:`relearn_curve` of a loaded model, read from the on-disk cache when the same run
    was made before (same checkpoint content, items, grid, settings, device, dtype, torch;
    :func:`audit.models.cached_json`)."""
    parts = [RELEARN_CACHE_VERSION, items_hash(train), *(f"{k}:{items_hash(v)}" for k, v in sorted(evals.items())),
             repr(sorted(set(steps))), repr(lr), str(batch_size), str(seed), str(eval_batch_size)]
    if lora is not None:
        parts.append("lora:" + lora.model_dump_json())
    return cached_json(
        model, "relearn", parts,
        lambda: relearn_curve(model.hf, model.tokenizer, train, evals, steps, lr=lr, batch_size=batch_size,
                              seed=seed, eval_batch_size=eval_batch_size, device=model.device, desc=desc, lora=lora),
        lambda out: {str(s): {k: v.to_dict() for k, v in per.items()} for s, per in out.items()},
        lambda d: {int(s): {k: ScoreResult.from_dict(v) for k, v in per.items()} for s, per in d.items()})


def resolve_method(cfg: RelearnConfig, n_params: int) -> str:
    """``full`` or ``lora``: ``cfg.method``, with ``auto`` resolved by the largest model's size."""
    if cfg.method != "auto":
        return cfg.method
    return "lora" if n_params > cfg.lora_above else "full"


def _sub(items: Sequence[KnowledgeItem], idx: Sequence[int]) -> list[KnowledgeItem]:
    return [items[i] for i in idx]


@register_lens("relearn", RelearnConfig, RelearnData, "held-out forget score after fine-tuning on other forget (or retain) items")
def relearn(ctx: AuditContext, cfg: RelearnConfig) -> LensResult:
    """Recovery of held-out forget subjects after fine-tuning on the others (and after retain fine-tuning)."""
    t0 = time.perf_counter()
    before = {r: weights_hash(ctx.models[r].hf) for r in ctx.roles} if cfg.verify_untouched else {}
    forget, retain = ctx.items["forget"], ctx.items["retain"]
    a_idx, b_idx = split_by_subject(forget, ctx.seed)
    if not a_idx or not b_idx:
        raise LensError("relearn needs at least two forget subjects to split into halves")
    steps = sorted({s for s in cfg.steps if s > 0})
    if not steps:
        raise LensError("relearn needs at least one positive step count")
    r_order = list(range(len(retain)))
    random.Random(ctx.seed).shuffle(r_order)
    n_train = min(cfg.retain_examples, max(1, len(retain) // 2))
    # side effects are read on retain items that no run trains on
    r_train, r_side = r_order[:n_train], r_order[n_train:][: cfg.side_effect_items]
    side = _sub(retain, r_side)

    # run -> (variant, training items, scored forget indices)
    runs: dict[str, tuple[str, list[KnowledgeItem], list[int]]] = {"A→B": ("split", _sub(forget, a_idx), b_idx)}
    if cfg.folds == 2:
        runs["B→A"] = ("split", _sub(forget, b_idx), a_idx)
    if cfg.retain_variant:
        runs["retain"] = ("retain", _sub(retain, r_train), list(range(len(forget))))
    seeds = [ctx.seed + j for j in range(cfg.seeds)]
    n_params = max(ctx.models[r].n_params for r in ctx.roles)  # counted at load: no model is read back for it
    method = resolve_method(cfg, n_params)
    lora, lr = (cfg.lora, cfg.lora_lr) if method == "lora" else (None, cfg.lr)
    # seed -> run -> role -> steps -> scores
    by_seed: dict[int, dict[str, dict[str, dict[int, dict[str, ScoreResult]]]]] = {
        sd: {k: {} for k in runs} for sd in seeds}
    seconds: dict[str, float] = {}
    for sd in seeds:
        for run, (_, train, target_idx) in runs.items():
            for role in ctx.roles:
                m = ctx.models[role]
                t = time.perf_counter()
                # only U's side effects decide anything, so only U is scored on retain items
                evals = {"target": _sub(forget, target_idx)}
                if role == "unlearned":
                    evals["retain"] = side
                by_seed[sd][run][role] = cached_relearn_curve(
                    m, train, evals, steps, lr=lr, batch_size=cfg.batch_size, seed=sd,
                    eval_batch_size=ctx.config.batch_size, desc=f"relearn {run} {role} seed {sd}", lora=lora)
                seconds[f"{run}:{role}:seed{sd}"] = round(time.perf_counter() - t, 3)
    curves = by_seed[seeds[0]]

    recs: list[Recovery] = []
    data_curves: dict[str, list[dict]] = {}
    per_item: dict[str, dict[str, list[float]]] = {}
    u_retain0 = float(ctx.score("unlearned", "retain").correct[r_side].mean())
    chance = ctx.chance("forget")
    for variant in dict.fromkeys(v for v, _, _ in runs.values()):
        mine = [k for k, (v, _, _) in runs.items() if v == variant]
        scored = sorted(i for k in mine for i in runs[k][2])
        rows: list[dict[str, Any]] = [{"steps": 0, **{r: float(ctx.score(r, "forget").per_item(cfg.metric, ctx.temperature(r))[scored].mean()) for r in ctx.roles},
                 "recovery": None, "ci_low": None, "ci_high": None, "unlearned_retain": u_retain0}]
        for s in steps:
            name = "relearn A→B" if variant == "split" and len(mine) == 1 else (
                "relearn split (A→B, B→A)" if variant == "split" else "retain fine-tune")
            per_seed = {}
            for sd in seeds:
                per_seed[sd] = {r: np.full(len(forget), np.nan) for r in ctx.roles}
                for k in mine:
                    for r in ctx.roles:
                        per_seed[sd][r][runs[k][2]] = by_seed[sd][k][r][s]["target"].per_item(cfg.metric, ctx.temperature(r))
            # each item's mean over the seeds: the seeds' spread is shown beside it
            full = {r: np.mean([per_seed[sd][r] for sd in seeds], axis=0) for r in ctx.roles}
            got = {r: full[r][scored] for r in ctx.roles}
            u_retain = min(by_seed[sd][k]["unlearned"][s]["retain"].score for k in mine for sd in seeds)
            rec = ctx.recovery(got, reading=f"{name} {s} steps", rows=np.asarray(scored), n_boot=cfg.n_boot,
                               null=ctx.null("forget")[scored])
            seed_recs = {sd: ctx.recovery({r: per_seed[sd][r][scored] for r in ctx.roles}, reading=f"seed {sd}",
                                          rows=np.asarray(scored), n_boot=200, null=ctx.null("forget")[scored])
                         for sd in seeds} if len(seeds) > 1 else {}
            rec.side_effect_ok = bool(u_retain0 - u_retain <= cfg.side_effect_tolerance)
            if s == steps[-1]:
                # the verdict reads the full budget only, fixed before looking at U: the best
                # point of the curve would be a multiple comparison; the curve goes to the report
                recs.append(rec)
                if len(scored) == len(forget):  # group verdicts need every forget item scored
                    per_item[rec.reading] = {r: full[r].tolist() for r in ctx.roles}
            rows.append({"steps": s, **{r: float(got[r].mean()) for r in ctx.roles}, "recovery": rec.value,
                         "ci_low": rec.ci_low, "ci_high": rec.ci_high, "unlearned_retain": u_retain,
                         "side_effect_ok": rec.side_effect_ok,
                         "seed_recoveries": {str(sd): r.value for sd, r in seed_recs.items()},
                         "runs": {k: {r: curves[k][r][s]["target"].score for r in ctx.roles} for k in mine}})
        data_curves[variant] = rows

    notes = ctx.no_reference_notes("the end point is the answer-prior estimate, not a relearned N")
    if any(it.subject is None for it in forget):
        notes.append("some forget items have no subject; each was split as its own subject")
    after = {r: weights_hash(ctx.models[r].hf) for r in ctx.roles} if cfg.verify_untouched else {}
    changed = [r for r in before if before[r] != after[r]]
    if changed:
        raise LensError(f"relearn modified the loaded {', '.join(changed)} model(s); results are invalid")
    split_scored = sorted(i for k, (v, _, idx) in runs.items() if v == "split" for i in idx)
    data = {
        "split": {"a": [forget[i].id for i in a_idx], "b": [forget[i].id for i in b_idx], "folds": cfg.folds,
                  "n_subjects_a": len({forget[i].subject or forget[i].id for i in a_idx}),
                  "n_subjects_b": len({forget[i].subject or forget[i].id for i in b_idx})},
        "retain_train": [retain[i].id for i in r_train],
        "side_effect_items": [retain[i].id for i in r_side],
        "curves": data_curves,
        "seeds": seeds,
        "method": method, "lr": lr, **({"lora": cfg.lora.model_dump()} if lora is not None else {}),
        "chance": {"split": float(chance[split_scored].mean()), "retain": float(chance.mean()),
                   "A→B": float(chance[b_idx].mean())},
        "per_item": {"ids": [it.id for it in forget], "readings": per_item},
        "weights_hash": {r: {"before": before[r], "after": after[r]} for r in before},
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 3)},
    }
    return LensResult(name="relearn", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
