"""Training helpers shared by the relearn lens and the organism lab (:mod:`audit.lab`).

One home for the batch stream and the language-modelling loss, so that relearning an
audited model and training or unlearning an organism draw batches and weigh tokens the
same way.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from audit.scoring import pad_batch

Seqs = Sequence[Sequence[int]]
"""Token-id sequences (one per training text)."""


def batches(seqs: Seqs, batch_size: int, rng: random.Random) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless stream of random right-padded batches."""
    while True:
        yield pad_batch(rng.sample(list(seqs), min(batch_size, len(seqs))), 0)


def lm_loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real (non-pad) tokens."""
    labels = ids.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss
