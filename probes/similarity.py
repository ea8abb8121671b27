"""Similarity (support only): linear CKA per layer between models, forget vs retain prompts.

Mask-aware mean pooling over prompt tokens (the first token excluded). CKA only compares
activations, so it calls the subject-offset organism "erased" although a single vector
restores it (SPEC §6): it never decides a verdict and returns no recoveries.
"""

from __future__ import annotations

import torch

from audit.context import AuditContext
from audit.lensdata import SimilarityConfig, SimilarityData
from audit.registry import register_lens
from audit.schema import LensResult


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two [n, d] activation matrices."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    xy = (y.T @ x).norm() ** 2
    xx = (x.T @ x).norm()
    yy = (y.T @ y).norm()
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else float("nan")


@register_lens("similarity", SimilarityConfig, SimilarityData, "linear CKA per layer (support only, never decides)")
def similarity(ctx: AuditContext, cfg: SimilarityConfig) -> LensResult:
    """CKA(B, U) and CKA(B, N) per layer on forget and on retain prompts."""
    data: dict = {}
    for item_set in ("forget", "retain"):
        b = ctx.activations("base", item_set)
        src_b = b.mean if cfg.position == "mean" else b.last
        for other in [r for r in ctx.roles if r != "base"]:
            a = ctx.activations(other, item_set)
            src = a.mean if cfg.position == "mean" else a.last
            data[f"{item_set}_base_vs_{other}"] = [round(linear_cka(src_b[h], src[h]), 4) for h in b.hooks]
    return LensResult(name="similarity", config=cfg.model_dump(), data=data,
                      notes=["support only: CKA compares activations and never decides a verdict"])
