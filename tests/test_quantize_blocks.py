"""Quantization in blocks of rows (issue 19: a 1B model's 128k-token head quantized without
several float64 copies of it) gives the same weights and error as the whole matrix at once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import probes.quantization as Q


def _whole(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """quantize_rtn as it was before blocks: the whole matrix in one pass."""
    x = w.detach().float()
    n_out, n_in = x.shape
    g = n_in if group_size <= 0 else min(group_size, n_in)
    full = (n_in // g) * g
    parts = [Q._rtn_rows(x[:, :full].reshape(-1, g), bits, symmetric).reshape(n_out, full)]
    if full < n_in:
        parts.append(Q._rtn_rows(x[:, full:], bits, symmetric))
    return torch.cat(parts, 1).to(w.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 200), (17, 130), (1, 5)])
def test_blocks_give_the_whole_matrix_result(monkeypatch, shape, dtype):
    monkeypatch.setattr(Q, "BLOCK_ELEMENTS", 1000)  # many blocks, one of them partial
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    for bits in (3, 4, 8):
        for group_size in (128, 7, 0):
            for sym in (True, False):
                got = Q.quantize_rtn(w, bits, group_size, sym)
                assert got.dtype == w.dtype and torch.equal(got, _whole(w, bits, group_size, sym))


def test_quantize_linears_error_is_measured_over_every_block(monkeypatch):
    monkeypatch.setattr(Q, "BLOCK_ELEMENTS", 64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 50))
    before = [m.weight.detach().clone() for m in model]
    stats = Q.quantize_linears(model, lambda w: Q.quantize_rtn(w, 3, 8))
    err2 = sum(float((m.weight.double() - b.double()).pow(2).sum()) for m, b in zip(model, before, strict=True))
    tot2 = sum(float(b.double().pow(2).sum()) for b in before)
    assert stats["n_matrices"] == 2 and stats["n_weights"] == 40 * 30 + 30 * 50
    assert stats["rel_error"] == pytest.approx(math.sqrt(err2 / tot2), rel=1e-12) and stats["rel_error"] > 0.01
