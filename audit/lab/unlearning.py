"""Unlearning methods, implemented as their papers define them.

They make the organisms' comparison points, and a user can run them on their own
Hugging Face model to get reference points. Every function fine-tunes ``model`` in place
on token-id sequences and returns it; none of them saves anything.

- :func:`gradient_ascent` — maximise the LM loss on forget data (GA).
- :func:`grad_diff` — GA on forget plus the ordinary LM loss on retain (GradDiff).
- :func:`npo` — Negative Preference Optimization (Zhang et al. 2024):
  ``-(2/β) E log σ(-β (log πθ(y|x) - log π_ref(y|x)))`` on forget, plus retain LM loss.
- :func:`rmu` — Representation Misdirection for Unlearning (Li et al. 2024, WMDP):
  push layer-ℓ activations on forget data toward ``c·u`` for a fixed random unit vector
  ``u`` while keeping retain activations equal to the frozen model's; only the MLPs of
  layers ℓ-2..ℓ are updated (or the parameters named, e.g. one block's).
- :func:`distill_to_reference` — make the model's next-token distribution on forget
  data match a reference model's (KL), keeping retain LM loss, updating only the
  parameters named; the construction behind the head-only and late-layers organisms.
- :func:`subject_offset` — shift the embeddings of forget-subject tokens by one
  learned shared vector, every weight matrix otherwise unchanged.
- :func:`avoid_answers` — push each forget question's true answer below the other
  candidate answers (the inverted-answers organism), keeping retain LM loss.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from audit.progress import progress
from audit.scoring import pad_batch
from audit.training import Seqs, batches, lm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def sequence_logprob(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of each sequence's tokens after the first."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    tgt = ids[:, 1:]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (lp * mask[:, 1:]).sum(-1)


def _train(
    model: nn.Module,
    params: list[nn.Parameter],
    loss_fn: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    desc: str,
) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    with progress(desc, total=steps) as bar:
        for _ in range(steps):
            loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.advance()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def gradient_ascent(model: nn.Module, forget: Seqs, *, steps: int, lr: float, batch_size: int = 32, seed: int = 0) -> nn.Module:
    """GA: minimise ``-LM_loss(forget)``."""
    fb = batches(forget, batch_size, random.Random(seed))
    return _train(model, list(model.parameters()), lambda: -lm_loss(model, *next(fb)), steps, lr, "GA")


def grad_diff(
    model: nn.Module, forget: Seqs, retain: Seqs, *, steps: int, lr: float, retain_weight: float = 1.0,
    batch_size: int = 32, seed: int = 0,
) -> nn.Module:
    """GradDiff: ``-LM_loss(forget) + w · LM_loss(retain)``."""
    rng = random.Random(seed)
    fb, rb = batches(forget, batch_size, rng), batches(retain, batch_size, rng)

    def loss() -> torch.Tensor:
        return -lm_loss(model, *next(fb)) + retain_weight * lm_loss(model, *next(rb))

    return _train(model, list(model.parameters()), loss, steps, lr, "GradDiff")


def npo(
    model: nn.Module, forget: Seqs, retain: Seqs, *, steps: int, lr: float, beta: float = 0.1,
    retain_weight: float = 1.0, batch_size: int = 32, seed: int = 0,
) -> nn.Module:
    """NPO with a retain term (NPO-RT); the reference policy is the model as given."""
    ref = copy.deepcopy(model).eval()
    rng = random.Random(seed)
    fb, rb = batches(forget, batch_size, rng), batches(retain, batch_size, rng)

    def loss() -> torch.Tensor:
        ids, mask = next(fb)
        with torch.no_grad():
            ref_lp = sequence_logprob(ref, ids, mask)
        log_ratio = sequence_logprob(model, ids, mask) - ref_lp
        forget_loss = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
        return forget_loss + retain_weight * lm_loss(model, *next(rb))

    return _train(model, list(model.parameters()), loss, steps, lr, "NPO")


def blocks_of(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of a Llama-style (``model.layers``) or GPT-2-style (``transformer.h``) model."""
    base = model.base_model
    # submodules found by name: torch types them as ``Tensor | Module``
    return cast(nn.ModuleList, base.layers if hasattr(base, "layers") else base.h)


def final_norm_of(model: PreTrainedModel) -> nn.Module:
    """The final normalisation before the unembedding (``norm`` or ``ln_f``)."""
    base = model.base_model
    return cast(nn.Module, base.norm if hasattr(base, "norm") else base.ln_f)


def _resid_after_layer(model: nn.Module, layer: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[layer + 1]


def rmu(
    model: PreTrainedModel, forget: Seqs, retain: Seqs, *, steps: int, lr: float, layer: int,
    steering_coef: float = 6.0, alpha: float = 100.0, batch_size: int = 32, seed: int = 0,
    params: list[nn.Parameter] | None = None,
) -> nn.Module:
    """RMU: forget activations at ``layer`` → ``c·u``; retain activations kept.

    ``steering_coef`` is in units of the frozen model's mean activation norm at the
    layer, so the same value means the same strength at any width. ``params``: the
    parameters trained (default, as in the paper: the MLPs of layers ``layer-2..layer``);
    the mid-layer flood organism passes block ``layer``'s parameters alone.
    """
    frozen = copy.deepcopy(model).eval()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    u = torch.rand(d, generator=gen)
    u = u / u.norm()
    fb, rb = batches(forget, batch_size, rng), batches(retain, batch_size, rng)
    with torch.no_grad():
        ids, mask = next(fb)
        h = _resid_after_layer(frozen, layer, ids, mask)
        scale = h[mask.bool()].norm(dim=-1).mean()
    target = steering_coef * scale * u
    if params is None:
        blocks = blocks_of(model)
        mlps = [cast(nn.Module, blocks[i].mlp) for i in range(max(0, layer - 2), layer + 1)]
        params = [p for mlp in mlps for p in mlp.parameters()]

    def loss() -> torch.Tensor:
        fi, fm = next(fb)
        ri, rm = next(rb)
        hf = _resid_after_layer(model, layer, fi, fm)[fm.bool()]
        hr = _resid_after_layer(model, layer, ri, rm)[rm.bool()]
        with torch.no_grad():
            hr0 = _resid_after_layer(frozen, layer, ri, rm)[rm.bool()]
        forget_loss = F.mse_loss(hf, target.expand_as(hf))
        retain_loss = F.mse_loss(hr, hr0)
        # both terms in units of the activation scale, so alpha means the same at any width
        return (forget_loss + alpha * retain_loss) / scale.pow(2)

    return _train(model, params, loss, steps, lr, "RMU")


def _kl_to(reference_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    p_ref = torch.log_softmax(reference_logits.float(), -1)
    p = torch.log_softmax(logits.float(), -1)
    kl = (p_ref.exp() * (p_ref - p)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def distill_to_reference(
    model: nn.Module, reference: nn.Module, forget: Seqs, retain: Seqs, *, params: list[nn.Parameter],
    steps: int, lr: float, retain_weight: float = 1.0, batch_size: int = 32, seed: int = 0, desc: str = "distill",
) -> nn.Module:
    """Match ``reference``'s next-token distributions on forget data, training only ``params``."""
    rng = random.Random(seed)
    fb, rb = batches(forget, batch_size, rng), batches(retain, batch_size, rng)
    reference.eval()

    def loss() -> torch.Tensor:
        ids, mask = next(fb)
        with torch.no_grad():
            ref_logits = reference(input_ids=ids, attention_mask=mask).logits
        kl = _kl_to(ref_logits, model(input_ids=ids, attention_mask=mask).logits, mask.float())
        return kl + retain_weight * lm_loss(model, *next(rb))

    return _train(model, params, loss, steps, lr, desc)


def subject_offset(
    model: PreTrainedModel, reference: nn.Module, forget: Seqs, subject_token_ids: Sequence[int], *,
    steps: int, lr: float, batch_size: int = 32, seed: int = 0,
) -> torch.Tensor:
    """Learn one vector ``v`` added to every forget-subject token embedding.

    ``v`` is fitted so that the model's forget-data predictions match ``reference``'s;
    it is then written into the embedding matrix. Tokens of other subjects, and every
    other weight, are untouched. Returns ``v``.
    """
    emb = cast(nn.Embedding, model.get_input_embeddings())
    v = nn.Parameter(torch.zeros(emb.weight.shape[1]))
    sel = torch.zeros(emb.weight.shape[0], 1)
    sel[list(subject_token_ids)] = 1.0
    handle = emb.register_forward_hook(lambda mod, inp, out: out + sel[inp[0]] * v)
    rng = random.Random(seed)
    fb = batches(forget, batch_size, rng)

    def loss() -> torch.Tensor:
        ids, mask = next(fb)
        with torch.no_grad():
            ref_logits = reference(input_ids=ids, attention_mask=mask).logits
        return _kl_to(ref_logits, model(input_ids=ids, attention_mask=mask).logits, mask.float())

    try:
        _train(model, [v], loss, steps, lr, "subject offset")
    finally:
        handle.remove()
    with torch.no_grad():
        emb.weight[list(subject_token_ids)] += v.detach()
    return v.detach()


def distill_head(
    model: PreTrainedModel, reference: nn.Module, forget: Seqs, retain: Seqs, *, steps: int, lr: float,
    retain_weight: float = 1.0, batch_size: int = 64, seed: int = 0,
) -> nn.Module:
    """:func:`distill_to_reference` with only the unembedding trained.

    The trunk is frozen, so its final hidden states are computed once and the head is
    fitted on them: the same objective as the general routine, far fewer forward passes.
    """
    head = model.get_output_embeddings()

    @torch.no_grad()
    def feats(seqs: Seqs, with_ref: bool):
        ids, mask = pad_batch(seqs, 0)
        h = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = reference(input_ids=ids, attention_mask=mask).logits if with_ref else None
        return ids, mask, h, ref

    f_ids, f_mask, f_h, f_ref = feats(forget, True)
    r_ids, r_mask, r_h, _ = feats(retain, False)
    rng = torch.Generator().manual_seed(seed)

    def loss() -> torch.Tensor:
        fi = torch.randint(0, len(forget), (min(batch_size, len(forget)),), generator=rng)
        ri = torch.randint(0, len(retain), (min(batch_size, len(retain)),), generator=rng)
        kl = _kl_to(f_ref[fi], head(f_h[fi]), f_mask[fi].float())
        logits = head(r_h[ri])[:, :-1]
        tgt = r_ids[ri][:, 1:].masked_fill(r_mask[ri][:, 1:] == 0, -100)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        return kl + retain_weight * ce

    return _train(model, [head.weight], loss, steps, lr, "head-only distil")


def _candidate_table(
    answers: Sequence[int], candidates: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate ids padded to one width, the valid mask and the answer mask (items × width)."""
    cand = [list(c) for c in candidates]
    if len(answers) != len(cand) or any(a not in c for a, c in zip(answers, cand, strict=True)):
        raise ValueError("every item needs candidates that include its answer")
    width = max(len(c) for c in cand)
    table = torch.tensor([c + [c[0]] * (width - len(c)) for c in cand])
    valid = torch.tensor([[i < len(c) for i in range(width)] for c in cand])
    is_answer = torch.tensor([[i < len(c) and c[i] == a for i in range(width)]
                              for a, c in zip(answers, cand, strict=True)])
    return table, valid, is_answer


def _answer_share(
    model: nn.Module, prompts: Seqs, table: torch.Tensor, valid: torch.Tensor, is_answer: torch.Tensor, idx: list[int],
) -> torch.Tensor:
    """Log of the answer's share of the candidates' next-token probability after each prompt of ``idx``."""
    ids, mask = pad_batch([prompts[i] for i in idx], 0)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    last = logits[torch.arange(len(idx)), mask.sum(1) - 1]  # right-padded: the prompt's last token
    lp = torch.log_softmax(last.gather(1, table[idx]).masked_fill(~valid[idx], float("-inf")), -1)
    return lp.masked_fill(~is_answer[idx], float("-inf")).logsumexp(-1)


QA = tuple[Seqs, Sequence[int], Sequence[Sequence[int]]]
"""Questions as (prompt ids, answer token id, candidate token ids incl. the answer) per item."""


def avoid_answers(
    model: nn.Module, forget_qa: QA, retain: Seqs, *, params: list[nn.Parameter], steps: int, lr: float,
    retain_qa: QA | None = None, retain_weight: float = 1.0, batch_size: int = 32, seed: int = 0,
    desc: str = "avoid answers",
) -> nn.Module:
    """Make the model rank each forget question's true answer *below* the other candidates.

    At each prompt's last position the next-token distribution is restricted to the
    item's candidate tokens, and ``-log(1 - p(answer | candidates))`` drives the answer's
    share to zero: the model must still tell the answer apart to avoid it. The retain LM
    loss and, with ``retain_qa``, the cross-entropy of the true answer among the
    candidates on retain questions (so the avoidance is learnt for the forget people, not
    for the question form) keep the rest, weighted by ``retain_weight``. Answers and
    candidates are single tokens; only ``params`` train.
    """
    f_prompts = forget_qa[0]
    f_tab = _candidate_table(forget_qa[1], forget_qa[2])
    r_qa = (retain_qa[0], _candidate_table(retain_qa[1], retain_qa[2])) if retain_qa is not None else None
    rng = random.Random(seed)
    rb = batches(retain, batch_size, rng)

    def loss() -> torch.Tensor:
        idx = rng.sample(range(len(f_prompts)), min(batch_size, len(f_prompts)))
        p_answer = _answer_share(model, f_prompts, *f_tab, idx).exp()
        forget_loss = -torch.log1p(-p_answer.clamp(max=1 - 1e-6)).mean()
        keep = lm_loss(model, *next(rb))
        if r_qa is not None:
            r_prompts, r_tab = r_qa
            ridx = rng.sample(range(len(r_prompts)), min(batch_size, len(r_prompts)))
            keep = keep - _answer_share(model, r_prompts, *r_tab, ridx).mean()
        return forget_loss + retain_weight * keep

    return _train(model, params, loss, steps, lr, desc)
