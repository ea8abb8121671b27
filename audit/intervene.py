"""The intervention engine: candidate log-probs of items under an edit of the residual stream.

An intervention lens (steering, SAE feature restoration, anything later) asks one question
many times: how does a model score these items when the residual at one site is edited?
:class:`PreparedItems` tokenizes the items once and answers it for ``k`` edits at once
(*replicas*: the settings swept and their random controls side by side in one batch):

- an additive vector and/or an ablated unit direction per replica, at every position of
  the site; or any ``edit(act, replica_of_row)`` (e.g. an SAE feature edit);
- at a ``blocks.{l}.hook_resid_post`` site of an architecture :func:`resumable` knows,
  the prompts are forwarded once and every replica resumes from the cached residual
  through the blocks after ``l`` only (*resumed forward*); otherwise each replica is a
  full forward pass with a hook at the site. Both give the same numbers to float
  tolerance (``tests/test_fastpaths.py``).

:func:`item_metrics` turns the log-probs into per-item accuracy and soft score, and
:func:`unedited` gives the scores every such lens compares against (the shared behavioural
scores, with no edit). Which edit to report, cross-fitted, is :mod:`audit.crossfit`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from audit.errors import LensError
from audit.items import KnowledgeItem
from audit.models import LoadedModel
from audit.scoring import encode_items, pad_batch, pad_id_of

if TYPE_CHECKING:
    from audit.context import AuditContext

__all__ = ["PreparedItems", "Unedited", "item_metrics", "per_fold_scores", "resumable", "site_layer", "unedited",
           "unedited_scores"]

K = TypeVar("K")

# ------------------------------------------------------------------ resumed forward

# Architectures whose logits are exactly ``head(norm(x))`` of the last decoder block's
# output, the blocks being called one after another on the residual stream: ``(blocks,
# final norm, unembedding)`` attribute paths on the HF model. Others (logit soft-capping
# or scaling, parallel streams) keep the full forward pass.
_RESUMABLE: dict[str, tuple[str, str, str]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3"), ("model.layers", "model.norm", "lm_head")),
    "gpt2": ("transformer.h", "transformer.ln_f", "lm_head"),
}
_LOGIT_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def site_layer(site: str | None) -> int | None:
    """``l`` of a ``blocks.{l}.hook_resid_post`` site, else None."""
    if site is None:
        return None
    parts = site.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_post" and parts[1].isdigit():
        return int(parts[1])
    return None


def resumable(m: LoadedModel) -> tuple[Sequence[torch.nn.Module], torch.nn.Module, torch.nn.Module] | None:
    """The blocks, final norm and unembedding a forward pass can be resumed through, or None."""
    cfg = m.hf.config
    paths = _RESUMABLE.get(getattr(cfg, "model_type", ""))
    if paths is None or any(getattr(cfg, a, None) not in (None, 1.0) for a in _LOGIT_EXTRAS):
        return None
    try:
        found = [m.hf.get_submodule(p) for p in paths]
    except AttributeError:
        return None
    blocks, norm, head = found
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != m.n_layers:
        return None
    return list(blocks), norm, head


def _take(v, src: Tensor, n: int):
    """``v`` (a block call's arguments) with every per-sequence tensor indexed by ``src``.

    A tensor whose first dimension is the batch of ``n`` sequences is per sequence (the
    attention mask, per-row positions); anything else (positions shared by the batch,
    ``(1, pos, d)`` rotary tables) broadcasts as it is.
    """
    if isinstance(v, Tensor):
        return v[src.to(v.device)] if v.ndim >= 2 and v.shape[0] == n else v
    if isinstance(v, tuple):
        return tuple(_take(x, src, n) for x in v)
    if isinstance(v, list):
        return [_take(x, src, n) for x in v]
    if isinstance(v, dict):
        return {key: _take(x, src, n) for key, x in v.items()}
    return v


def _prefix(
    m: LoadedModel, blocks: Sequence[torch.nn.Module], layer: int, ids: Tensor, mask: Tensor
) -> tuple[Float[Tensor, "batch pos d_model"], list[tuple[tuple, dict]]]:
    """One forward pass recording block ``layer``'s output and the later blocks' call arguments.

    The residual after block ``layer`` is what ``blocks.{layer}.hook_resid_post`` reads;
    the later blocks' arguments (mask, positions, rotary tables: whatever this
    architecture passes, per block) let them be re-run on an edited residual.
    """
    from transformers.cache_utils import Cache

    got: dict[str, Tensor] = {}
    calls: dict[int, tuple[tuple, dict]] = {}

    def out_hook(_mod, _args, out) -> None:
        got["h"] = out[0] if isinstance(out, tuple) else out

    def pre_hook(j: int):
        def fn(_mod, args, kwargs) -> None:
            # no key/value cache is wanted (nor may one be re-filled by the replicas)
            clean = lambda x: None if isinstance(x, Cache) else x  # noqa: E731
            calls[j] = (tuple(clean(a) for a in args[1:]), {key: clean(x) for key, x in kwargs.items()})
        return fn

    handles = [blocks[layer].register_forward_hook(out_hook)]
    handles += [blocks[j].register_forward_pre_hook(pre_hook(j), with_kwargs=True) for j in range(layer + 1, len(blocks))]
    try:
        m.bridge(ids, attention_mask=mask, return_type=None, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    if "h" not in got or len(calls) != len(blocks) - layer - 1:
        raise LensError(f"resumed forward: the blocks of {m.path} were not called one after another")
    return got["h"], [calls[j] for j in range(layer + 1, len(blocks))]


# ---------------------------------------------------------------------------- scoring


class PreparedItems:
    """Items tokenized once for scoring under many interventions.

    Where every candidate of an item is one token (closed-set answers), the prompt alone
    is forwarded and all candidates are read from its last position; otherwise each
    prompt + candidate sequence is forwarded (as :func:`audit.scoring.score_items` does).
    """

    def __init__(self, model: LoadedModel, items: Sequence[KnowledgeItem]) -> None:
        enc = encode_items(model.tokenizer, items)
        self.model = model
        self.n_items = len(items)
        self.n_cands = max(len(c) for c in enc.candidates) if items else 1
        seqs: list[list[int]] = []
        ents: list[tuple[int, int, int]] = []  # (position, target, slot) per scored token
        self.ent_of_seq: list[Tensor] = []
        for i, (p, cands) in enumerate(zip(enc.prompts, enc.candidates, strict=True)):
            shared = all(len(c) == 1 for c in cands)
            groups = [list(enumerate(cands))] if shared else [[(j, c)] for j, c in enumerate(cands)]
            for group in groups:
                start = len(ents)
                seq = list(p) if shared else p + group[0][1]
                for j, c in group:
                    for k, tok in enumerate(c):
                        ents.append((len(p) - 1 + k, tok, i * self.n_cands + j))
                seqs.append(seq)
                self.ent_of_seq.append(torch.arange(start, len(ents)))
        self.seqs = seqs
        t = torch.tensor(ents, dtype=torch.long).reshape(-1, 3)
        self.pos, self.tgt, self.slot = t[:, 0], t[:, 1], t[:, 2]
        valid = torch.zeros(self.n_items * self.n_cands, dtype=torch.bool)
        valid[self.slot] = True
        self.valid = valid.view(self.n_items, self.n_cands)

    @torch.no_grad()
    def logprobs(
        self,
        site: str | None,
        add: Float[Tensor, "k d_model"] | None,
        abl: Float[Tensor, "k d_model"] | None,
        tokens_per_pass: int,
        edit: Callable[[Tensor, Tensor], Tensor] | None = None,
        n_replicas: int | None = None,
        resume: bool = True,
    ) -> Float[Tensor, "k item cand"]:
        """Candidate log-probs under ``k`` interventions at once (one per replica).

        Replica ``r`` adds ``add[r]`` and removes the component along the unit vector
        ``abl[r]`` at every position of ``site`` (zero rows do nothing). ``edit(act,
        replica_of_row)``, when given, is applied instead (``n_replicas`` of them), e.g.
        an SAE feature edit.

        With ``resume`` (the default), at a ``blocks.{l}.hook_resid_post`` site of an
        architecture :func:`resumable` knows, the prompts are forwarded once per batch
        of sequences, and every replica runs only the blocks after ``l`` from that cached
        residual (plus the final norm and the unembedding at the scored positions).
        Otherwise each replica is a full forward pass with a hook at ``site``; both give
        the same numbers to float tolerance (``tests/test_fastpaths.py``).
        """
        m = self.model
        k = (n_replicas or 1) if edit is not None else (1 if add is None else int(add.shape[0]))
        n_seq = len(self.seqs)
        vocab = int(m.bridge.cfg.d_vocab)
        max_len = max(len(s) for s in self.seqs)
        budget = max(1, min(tokens_per_pass, (1 << 28) // max(vocab, 1)) // max_len)
        out = torch.zeros(k * self.n_items * self.n_cands)
        pad = pad_id_of(m.tokenizer)

        def intervene(act: Tensor, rep: Tensor) -> Tensor:
            dt = act.dtype
            x = act.float()
            if edit is not None:
                return edit(x, rep.to(x.device)).to(dt)
            if abl is not None:
                u = abl[rep].to(x.device)[:, None, :]
                x = x - (x * u).sum(-1, keepdim=True) * u
            if add is not None:
                x = x + add[rep].to(x.device)[:, None, :]
            return x.to(dt)

        def read(rep: Tensor, seqs: list[int], logits_at: Callable[[Tensor, Tensor], Tensor]) -> None:
            """Accumulate the scored tokens' log-probs of rows ``(rep[i], seqs[i])``."""
            ent = torch.cat([self.ent_of_seq[s] for s in seqs])
            counts = torch.tensor([len(self.ent_of_seq[s]) for s in seqs])
            row = torch.repeat_interleave(torch.arange(len(seqs)), counts)
            sel = logits_at(row, self.pos[ent]).float()
            lp = torch.log_softmax(sel, -1).gather(-1, self.tgt[ent].to(sel.device)[:, None])[:, 0].cpu()
            if not torch.isfinite(lp).all():
                raise LensError("non-finite log-probability under steering: the model's logits contain NaN or inf")
            where = torch.repeat_interleave(rep, counts) * (self.n_items * self.n_cands) + self.slot[ent]
            out.index_add_(0, where, lp)

        intervening = site is not None and (add is not None or abl is not None or edit is not None)
        layer = site_layer(site) if intervening and resume else None
        parts = resumable(m) if layer is not None else None
        if parts is not None and layer is not None:
            blocks, norm, head = parts
            per = min(n_seq, budget)
            for s0 in range(0, n_seq, per):
                seqs = list(range(s0, min(n_seq, s0 + per)))
                ids, mask = pad_batch([self.seqs[s] for s in seqs], pad, m.device)
                h, calls = _prefix(m, blocks, layer, ids, mask)
                group = max(1, budget // len(seqs))  # replicas sharing this prefix in one pass
                for r0 in range(0, k, group):
                    reps = torch.arange(r0, min(k, r0 + group))
                    rep = reps.repeat_interleave(len(seqs))
                    src = torch.arange(len(seqs)).repeat(len(reps))
                    x = intervene(h[src.to(h.device)], rep)
                    for block, (args, kwargs) in zip(blocks[layer + 1 :], calls, strict=True):
                        y = block(x, *_take(args, src, len(seqs)), **_take(kwargs, src, len(seqs)))
                        x = y[0] if isinstance(y, tuple) else y

                    def logits_at(row: Tensor, pos: Tensor, x=x) -> Tensor:
                        # the final norm acts per position: normalise and unembed only what is scored
                        return head(norm(x[row.to(x.device), pos.to(x.device)][None]))[0]

                    read(rep, [seqs[int(i)] for i in src], logits_at)
        else:
            rows = [(r, s) for r in range(k) for s in range(n_seq)]
            for start in range(0, len(rows), budget):
                chunk = rows[start : start + budget]
                rep = torch.tensor([r for r, _ in chunk])
                ids, mask = pad_batch([self.seqs[s] for _, s in chunk], pad, m.device)

                def hook(act: Tensor, hook=None, rep=rep) -> Tensor:
                    return intervene(act, rep)

                if intervening:
                    with m.bridge.hooks(fwd_hooks=[(site, hook)]):
                        logits = m.forward(ids, mask)
                else:
                    logits = m.forward(ids, mask)

                def at(row: Tensor, pos: Tensor, lg: Tensor = logits) -> Tensor:
                    return lg[row.to(lg.device), pos.to(lg.device)]

                read(rep, [s for _, s in chunk], at)
        out = out.view(k, self.n_items, self.n_cands)
        return out.masked_fill(~self.valid, float("-inf"))


def item_metrics(lp: Float[Tensor, "k item cand"], temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Per-item accuracy (answer ranked first) and soft score (its share among candidates,
    at the model's ``temperature``, ``ctx.temperature(role)``: sharpness is not knowledge).

    Returns:
        ``{"accuracy": [k, item], "soft": [k, item]}``; candidate 0 is the answer.
    """
    acc = (lp[..., 0] > lp[..., 1:].max(-1).values).double().numpy()
    soft = torch.softmax(lp.double() / temperature, -1)[..., 0].numpy()
    return {"accuracy": acc, "soft": soft}


def unedited_scores(ctx: AuditContext, role: str, item_set: str) -> dict[str, np.ndarray]:
    """The shared behavioural score of a model (``ctx.score``), in both metrics, per item."""
    s = ctx.score(role, item_set)
    width = max(len(r) for r in s.candidate_logprobs)
    lp = torch.full((1, len(s.candidate_logprobs), width), float("-inf"), dtype=torch.float64)
    for i, row in enumerate(s.candidate_logprobs):
        lp[0, i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return {k: v[0] for k, v in item_metrics(lp, ctx.temperature(role)).items()}


@dataclass(frozen=True)
class Unedited:
    """What an intervention lens compares its edits against: every model with no edit."""

    forget: dict[str, dict[str, np.ndarray]]
    """Per role, per metric (``accuracy``, ``soft``): the per-item forget scores."""
    retain_unlearned: np.ndarray
    """U's per-item retain accuracy (side effects are measured against it)."""
    base: np.ndarray
    """S(B) per forget item, in the lens's metric."""
    end: np.ndarray
    """The knowledge-free end point (``ctx.end_point``): ``[references, items]``, or the
    answer-prior estimate ``[items]`` without a reference."""

    @property
    def gap(self) -> float:
        """The unedited gap S(B) − S(N): the denominator of every recovery of the lens."""
        return float(self.base.mean() - self.end.mean())


def unedited(ctx: AuditContext, metric: str) -> Unedited:
    """The unedited scores of every model on the forget items (and U's on retain)."""
    plain = {role: unedited_scores(ctx, role, "forget") for role in ctx.roles}
    return Unedited(
        forget=plain,
        retain_unlearned=unedited_scores(ctx, "unlearned", "retain")["accuracy"],
        base=plain["base"][metric],
        end=ctx.end_point({r: plain[r][metric] for r in ctx.roles}),
    )


def per_fold_scores(
    ctx: AuditContext, roles: Sequence[str], items: Sequence[KnowledgeItem], fold: np.ndarray, chosen: Sequence[K],
    metric: str, plain: dict[str, dict[str, np.ndarray]],
    edit_of: Callable[[str, K, int], Callable[[PreparedItems], Tensor] | None],
) -> dict[str, np.ndarray]:
    """Each role's per-item score, the items of fold ``e`` under the edit chosen for it.

    This is how the end points (B, every N) go through a cross-fitted procedure: the
    setting chosen on U for fold ``e``, each model with its own edit.

    Args:
        ctx: the audit (models, temperatures).
        roles: the models to score.
        items: the item set, in the order of ``fold``.
        fold: the fold of each item.
        chosen: the setting chosen for each fold.
        metric: ``accuracy`` or ``soft``.
        plain: the unedited per-item scores by role and metric (:attr:`Unedited.forget`),
            kept where a model has no edit.
        edit_of: ``(role, setting, fold)`` to a function giving the candidate log-probs of
            prepared items under that model's edit (``k = 1``), or None when the edit is
            zero for that model (e.g. B's own B − U direction).
    """
    out = {role: np.zeros(len(items)) for role in roles}
    for e, k in enumerate(chosen):
        idx = np.flatnonzero(fold == e)
        for role in roles:
            run = edit_of(role, k, e)
            if run is None:
                out[role][idx] = plain[role][metric][idx]
                continue
            prep = PreparedItems(ctx.models[role], [items[int(i)] for i in idx])
            out[role][idx] = item_metrics(run(prep), ctx.temperature(role))[metric][0]
    return out
