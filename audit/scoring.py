"""The knowledge score (SPEC §3), the scoring primitive every lens reuses.

An item is *known* when its true answer's summed token log-probability beats every
distractor's. The per-item margin ``log p(answer) - logsumexp(log p(distractors))`` is
kept for plots and confidence intervals. Greedy exact match is read from the same
forward pass: the answer is what greedy decoding emits iff every answer token is the
arg-max given the prompt and the answer tokens before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from audit.errors import InputError, LensError
from audit.items import KnowledgeItem

ForwardFn = Callable[[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]], Float[Tensor, "batch pos vocab"]]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens."""
    return list(tokenizer(prompt)["input_ids"])


def encode_continuation(tokenizer, prompt: str, answer: str, prompt_ids: list[int]) -> list[int]:
    """Token ids that extend ``prompt`` by ``answer`` (one space between them, whether or
    not ``answer`` is written with its leading space).

    Tokenizes the joined text and keeps the suffix after the prompt's ids when the
    prompt's tokens are a prefix (so BPE merges across the boundary are respected);
    otherwise falls back to tokenizing the answer alone.
    """
    if prompt.endswith((" ", "\n")):
        answer = answer.lstrip(" ")
    sep = "" if prompt.endswith((" ", "\n")) or answer.startswith((" ", "\n")) else " "
    full = list(tokenizer(prompt + sep + answer)["input_ids"])
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids) :]
    return list(tokenizer(sep + answer, add_special_tokens=False)["input_ids"])


def candidate_token_ids(tokenizer, item: KnowledgeItem) -> list[list[int]]:
    """Each candidate's token ids (index 0 = answer) exactly as scoring reads them.

    The one candidate encoding every lens uses: the continuation of the item's prompt
    (:func:`encode_continuation`), so an answer written with or without a leading space
    gives the same tokens, and no lens reads a whitespace token every candidate shares.
    """
    p = encode_prompt(tokenizer, item.prompt)
    return [encode_continuation(tokenizer, item.prompt, c, p) for c in item.candidates]


@dataclass
class EncodedItems:
    """Items tokenized once: prompt ids and each candidate's continuation ids."""

    prompts: list[list[int]]
    candidates: list[list[list[int]]]  # item -> candidate (0 = answer) -> ids


def encode_items(tokenizer, items: Sequence[KnowledgeItem]) -> EncodedItems:
    """Tokenize prompts and candidate answers.

    Raises:
        InputError: if a prompt or a candidate answer tokenizes to nothing.
    """
    prompts, cands = [], []
    for it in items:
        p = encode_prompt(tokenizer, it.prompt)
        if not p:
            raise InputError(f"item '{it.id}': the prompt tokenizes to nothing")
        row = []
        for c in it.candidates:
            ids = encode_continuation(tokenizer, it.prompt, c, p)
            if not ids:
                raise InputError(f"item '{it.id}': the candidate answer '{c}' tokenizes to nothing")
            row.append(ids)
        prompts.append(p)
        cands.append(row)
    return EncodedItems(prompts, cands)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device: str | torch.device = "cpu"):
    """Right-pad sequences; returns (input_ids, attention_mask)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return int(pid)


@dataclass
class ScoreResult:
    """Per-item outcome of the knowledge score."""

    candidate_logprobs: list[list[float]]
    """Summed log-prob of each candidate (index 0 = true answer)."""
    margins: np.ndarray
    """``log p(answer) - logsumexp(log p(distractors))`` per item."""
    correct: np.ndarray
    """Whether the answer ranks above every distractor."""
    greedy: np.ndarray
    """Whether greedy decoding emits the answer's tokens."""
    greedy_distractors: np.ndarray | None = None
    """Per item, the fraction of its distractors that greedy decoding emits (0 or 1/#distractors:
    greedy emits at most one candidate). Without a reference it is the knowledge-free end point
    of greedy exact match: a model that names a candidate from its prior alone names the answer
    as often as any one distractor."""

    def to_dict(self) -> dict:
        """A JSON-able copy (for the on-disk score caches)."""
        gd = self.greedy_distractors
        return {"candidate_logprobs": self.candidate_logprobs, "margins": np.asarray(self.margins).tolist(),
                "correct": np.asarray(self.correct).tolist(), "greedy": np.asarray(self.greedy).tolist(),
                "greedy_distractors": None if gd is None else np.asarray(gd).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ScoreResult:
        gd = d["greedy_distractors"]
        return cls(candidate_logprobs=d["candidate_logprobs"], margins=np.asarray(d["margins"], dtype=float),
                   correct=np.asarray(d["correct"], dtype=bool), greedy=np.asarray(d["greedy"], dtype=bool),
                   greedy_distractors=None if gd is None else np.asarray(gd, dtype=float))

    @property
    def score(self) -> float:
        """The knowledge score S: fraction of items ranked correctly."""
        return float(self.correct.mean())

    @property
    def greedy_score(self) -> float:
        return float(self.greedy.mean())

    def per_item(self, metric: str = "soft", temperature: float = 1.0) -> np.ndarray:
        """Per-item scores behind a recovery: ``soft`` (at ``temperature``: pass the model's
        ``ctx.temperature(role)``) or ``accuracy`` (0/1 ranking)."""
        return self.soft_at(temperature) if metric == "soft" else self.correct.astype(float)

    @property
    def soft(self) -> np.ndarray:
        """Per item, the answer's share of probability among its candidates.

        A continuous reading of the ranking: 1/#candidates for a model that cannot tell
        them apart, near 1 for one that knows. Far less noisy than 0/1 correctness near
        chance, which is what makes tight recovery bounds possible on small item sets.
        """
        return soft_share(self.candidate_logprobs)

    def soft_at(self, temperature: float) -> np.ndarray:
        """:attr:`soft` with the candidates' log-probs divided by ``temperature``."""
        return soft_share(self.candidate_logprobs, temperature)


def soft_share(candidate_logprobs: Sequence[Sequence[float]], temperature: float = 1.0) -> np.ndarray:
    """Per item, the answer's (index 0) softmax share among its candidates at ``temperature``."""
    out = np.empty(len(candidate_logprobs))
    for i, row in enumerate(candidate_logprobs):
        z = np.asarray(row, dtype=float) / temperature
        p = np.exp(z - z.max())
        out[i] = p[0] / p.sum()
    return out


def logit_scale(candidate_logprobs: Sequence[Sequence[float]]) -> float:
    """How spread a model's candidate log-probs are: the mean absolute deviation of each
    item's candidate log-probs from their mean, averaged over items.

    It scales with the model's output sharpness (an unembedding scaled by 2 doubles it), so
    dividing by it puts two models on one sharpness. Read on retain items, which every model
    audited still knows. A temperature fitted by likelihood (Guo et al., 2017) does not do:
    a model that ranks every retain item right fits T → 0 and turns soft readings into 0/1.
    """
    devs = [np.abs(r - r.mean()).mean() for r in (np.asarray(x, dtype=float) for x in candidate_logprobs)
            if len(r) > 1 and np.isfinite(r).all()]
    return float(np.mean(devs)) if devs else float("nan")


def candidate_logprobs_to_result(
    cand_lp: list[list[float]], greedy: np.ndarray, greedy_distractors: np.ndarray | None = None
) -> ScoreResult:
    margins, correct = [], []
    for row in cand_lp:
        a = row[0]
        d = np.array(row[1:])
        margins.append(a - float(np.logaddexp.reduce(d)))
        correct.append(bool(a > d.max()))
    return ScoreResult(cand_lp, np.array(margins), np.array(correct), greedy, greedy_distractors)


def check_finite(
    values: Tensor, mask: Tensor, item_ids: Sequence[str], what: str, where: str
) -> None:
    """Raise a :class:`LensError` naming the first item whose ``values`` hold NaN or inf.

    Args:
        values: ``(batch, pos, ...)`` logits or activations.
        mask: ``(batch, pos)`` attention mask; padded positions are not checked.
        item_ids: the item behind each row.
        what: the model, e.g. ``unlearned model (path)``.
        where: what was read, e.g. ``logits`` or ``activations at blocks.0.hook_resid_post``.
    """
    ok = torch.isfinite(values).flatten(2).all(-1) | ~mask.bool()
    if bool(ok.all()):
        return
    row = int((~ok).any(-1).nonzero()[0])
    pos = int((~ok[row]).nonzero()[0])
    kind = "NaN" if bool(torch.isnan(values[row, pos]).any()) else "inf"
    raise LensError(
        f"{what}: non-finite {where} ({kind}) on item '{item_ids[row]}' at token {pos}; the model's numbers "
        "are broken (e.g. over-unlearned or overflowed weights), so no score can be read from it"
    )


def candidate_sequences(
    prompts: Sequence[list[int]], candidates: Sequence[Sequence[list[int]]],
) -> tuple[list[list[int]], list[list[tuple[int, int, int, list[int]]]]]:
    """The sequences to forward to read every candidate after its prompt, and per sequence
    what to read from it: ``(item, candidate, prompt length, candidate ids)``. An item whose
    candidates are all one token forwards its prompt alone (each read at the last position);
    the others forward each prompt + candidate."""
    seqs: list[list[int]] = []
    reads: list[list[tuple[int, int, int, list[int]]]] = []
    for i, (p, cands) in enumerate(zip(prompts, candidates, strict=True)):
        if all(len(c) == 1 for c in cands):
            seqs.append(list(p))
            reads.append([(i, j, len(p), c) for j, c in enumerate(cands)])
        else:
            for j, c in enumerate(cands):
                seqs.append(p + c)
                reads.append([(i, j, len(p), c)])
    return seqs, reads


@torch.no_grad()
def score_items(
    forward: ForwardFn,
    tokenizer,
    items: Sequence[KnowledgeItem],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    encoded: EncodedItems | None = None,
    model_name: str = "model",
) -> ScoreResult:
    """Knowledge score of a model on items, batched.

    Logits are cast to float32 before the log-softmax, so fp16/bf16 models are scored
    in fp32. A batch that runs out of memory is retried at half the size
    (:func:`audit.batching.run_batched`).

    Args:
        forward: maps right-padded ``(input_ids, attention_mask)`` to logits.
        tokenizer: the model's tokenizer.
        items: the items to score.
        batch_size: sequences per forward pass.
        device: where the input tensors go.
        encoded: pre-tokenized items (from :func:`encode_items`), to skip tokenizing.
        model_name: how errors name the model (role and path).

    Raises:
        LensError: if the model's logits hold NaN or inf (naming the item), or if it
            runs out of memory even at batch size 1.
    """
    from audit.batching import run_batched

    enc = encoded or encode_items(tokenizer, items)
    pad = pad_id_of(tokenizer)
    # An item whose candidates are all one token (closed answer sets) needs only its
    # prompt forwarded: every candidate is read at the prompt's last position, the same
    # numbers as forwarding prompt + candidate (the model is causal). Others forward
    # each prompt + candidate sequence.
    seqs, reads = candidate_sequences(enc.prompts, enc.candidates)
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    lp_out = [[0.0] * len(c) for c in enc.candidates]
    greedy = np.zeros(len(enc.prompts), dtype=bool)
    greedy_d = np.zeros(len(enc.prompts))

    def chunk(a: int, b: int) -> list[tuple[int, int, float, bool]]:
        idx = order[a:b]
        ids, mask = pad_batch([seqs[k] for k in idx], pad, device)
        logits = forward(ids, mask).float()  # fp16/bf16 weights: the softmax runs in fp32
        check_finite(logits, mask, [items[reads[k][0][0]].id for k in idx], model_name, "logits")
        logp = torch.log_softmax(logits, dim=-1)
        rows = []
        for row, k in enumerate(idx):
            for i, j, lp_len, c in reads[k]:
                pos = torch.arange(lp_len - 1, lp_len - 1 + len(c), device=logp.device)
                tgt = torch.tensor(c, device=logp.device)
                total = float(logp[row, pos, tgt].sum())
                if not np.isfinite(total):
                    raise LensError(
                        f"{model_name}: non-finite log-probability of candidate {j} on item '{items[i].id}'"
                    )
                rows.append((i, j, total, bool((logp[row, pos].argmax(-1) == tgt).all())))
        return rows

    for rows in run_batched(chunk, len(order), batch_size, what=f"scoring ({model_name})"):
        for i, j, total, g in rows:
            lp_out[i][j] = total
            if j == 0:
                greedy[i] = g
            elif g:
                greedy_d[i] += 1.0 / (len(lp_out[i]) - 1)
    return candidate_logprobs_to_result(lp_out, greedy, greedy_d)
