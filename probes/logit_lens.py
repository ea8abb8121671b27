"""Logit lens: each layer's residual read through the model's own final norm and unembedding.

Patil et al.'s "head projection": if an intermediate layer still ranks the true answer's
first token above the distractors' while the output does not, the knowledge is present
and blocked later. Reads the cached last-prompt-token activations; no extra forward.
"""

from __future__ import annotations

import numpy as np
import torch

from audit.context import AuditContext
from audit.registry import LensConfig, register_lens
from audit.schema import LensResult, Recovery


class LogitLensConfig(LensConfig):
    top_k: int = 4
    """k of gold-in-top-k over the whole vocabulary."""
    metric: str = "soft"
    """Per-item score behind recovery: ``soft`` (answer's share among the candidates'
    first-token probabilities) or ``accuracy`` (answer's first token ranked first)."""


def _first_tokens(tokenizer, cands: list[str]) -> list[int]:
    return [int(tokenizer(" " + c, add_special_tokens=False)["input_ids"][0]) for c in cands]


@torch.no_grad()
def _read(model, acts, cand_ids: torch.Tensor, top_k: int) -> dict[str, np.ndarray]:
    """Per layer × item: accuracy, soft share and gold-in-top-k of the answer's first token."""
    out = {"accuracy": [], "soft": [], "topk": []}
    for hook in acts.hooks:
        h = acts.last[hook].to(model.device)
        logits = model.bridge.unembed(model.bridge.ln_final(h)).float().cpu()
        cl = logits.gather(1, cand_ids)
        out["accuracy"].append((cl[:, 0] > cl[:, 1:].max(1).values).float().numpy())
        out["soft"].append(torch.softmax(cl, 1)[:, 0].numpy())
        kth = logits.topk(top_k, dim=1).values[:, -1]
        out["topk"].append((cl[:, 0] >= kth).float().numpy())
    return {k: np.stack(v) for k, v in out.items()}


@register_lens("logit_lens", LogitLensConfig, "each layer's residual through the final norm and unembedding")
def logit_lens(ctx: AuditContext, cfg: LogitLensConfig) -> LensResult:
    """Per-layer first-token knowledge score and gold-in-top-k on B, U, N."""
    forget = ctx.items["forget"]
    tok = ctx.models["base"].tokenizer
    cand_ids = torch.tensor([_first_tokens(tok, it.candidates) for it in forget])
    notes = []
    if any(len(set(row.tolist())) < len(row) for row in cand_ids):
        notes.append("some candidates share their first token; those items cannot be separated by this lens")
    reads = {role: _read(ctx.models[role], ctx.activations(role, "forget"), cand_ids, cfg.top_k) for role in ctx.roles}
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
    data = {
        "per_layer": {m: {r: reads[r][m].mean(1).round(4).tolist() for r in reads} for m in ("accuracy", "soft", "topk")},
        "layer_recoveries": [r.model_dump() for r in rows],
        "chance": float(chance.mean()), "top_k": cfg.top_k, "metric": cfg.metric,
        "per_item": {"ids": [it.id for it in forget], "readings": {
            primary.reading: {r: reads[r][cfg.metric][p].round(4).tolist() for r in reads}}},
    }
    return LensResult(name="logit_lens", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
