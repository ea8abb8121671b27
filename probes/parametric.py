"""Parametric traces (support only): which MLP value vectors write the answer, and are they still there.

After ConceptVectors (Hong et al., "Intrinsic Evaluation of Unlearning Using Parametric
Knowledge Traces"): a fact's answer is written into the residual stream by MLP *value
vectors* (the rows of each block's output projection, GPT-2's ``mlp.c_proj``, Llama's
``mlp.down_proj``), and a vector's direct effect on the logits is its projection through
the final norm's gain and the unembedding. Unlearning that only suppresses leaves those
vectors in place.

Readings, per forget item, over the candidates' first tokens (every candidate read alike):

- **weighted** (the recovery reading): each value vector ``i`` of every layer contributes
  ``a_i(x) · (γ ⊙ v_i) · W_U[c]`` to candidate ``c`` (``a_i(x)``: its activation at the
  prompt's last token, one forward per model and item set, no other pass), centred over the
  item's candidates. A candidate's strength is the sum of its ``top_k`` largest
  contributions (the model's own selection of the vectors that write it above the others);
  the item reads 1 when the answer is strongest. A never-trained model's vectors write no
  subject's answer, so it reads the answer prior (chance among balanced candidates); scaling
  the unembedding scales every strength alike, so the reading is temperature-free.
- **best of L layers** (a scan): the weighted contest with one layer's value vectors alone,
  at the layer whose recovery is largest (CI widened for the L layers compared).
- **weights_only**: the same without activations (``a_i = 1``), i.e. the value vectors
  alone. It cannot tell one subject from another, so where answers repeat across subjects
  (closed sets) it reads only which answer values the MLPs write at all: measured at chance
  for B on the organisms (docs/lenses.md), kept to show it.
- **survival** (data only): B's answer-writing indices (each forget item's answer's top-k
  in B) read in another model's weights: the mean cosine of its value vectors to B's there,
  against matched random indices (same layers, similar norm in B), and the candidate
  contest of those vectors weighted by B's activations through the model's own head. A
  model derived from B keeps most of its weights whether or not they stored anything, so
  only the excess over the random indices says unlearning touched the facts' vectors; an
  independent model reads about 0 at both.

Controls: each selected vector replaced by a random vector of the same norm (``n_controls``
draws); their recoveries, scaled by the real reading's B−N gap, give the control threshold.
Retain items are read the same way (what unlearning should leave alone). Every recovery is
``kind="support"``: shown, never read by the verdict, until calibration earns it a say.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from audit.batching import run_batched
from audit.context import AuditContext
from audit.errors import LensError
from audit.items import KnowledgeItem
from audit.lensdata import ParametricConfig, ParametricData
from audit.models import LoadedModel
from audit.progress import progress
from audit.registry import register_lens
from audit.schema import LensResult
from audit.scoring import candidate_token_ids, encode_prompt, pad_batch, pad_id_of

# model_type -> (blocks, MLP output projection inside a block, final norm, whether the norm centres)
_ARCH: dict[str, tuple[str, str, str, bool]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3"), ("model.layers", "mlp.down_proj", "model.norm", False)),
    "gpt2": ("transformer.h", "mlp.c_proj", "transformer.ln_f", True),
}
ROW_BUDGET = 1 << 24
"""Contributions (items × value vectors × candidates) computed at once."""


@dataclass
class _Parts:
    outs: list[nn.Module]
    """Each block's MLP output projection (its rows, as value vectors, are what we read)."""
    gain: Float[Tensor, " d_model"]
    centred: bool
    head: Float[Tensor, "vocab d_model"]


def _parts(m: LoadedModel) -> _Parts:
    mt = getattr(m.config, "model_type", "")
    if mt not in _ARCH:
        raise LensError(f"{m.role} model ({m.path}): the parametric lens reads MLP value vectors of "
                        f"{', '.join(sorted(_ARCH))} models, not '{mt}'")
    blocks_path, out_path, norm_path, centred = _ARCH[mt]
    hf = m.hf
    try:
        blocks = hf.get_submodule(blocks_path)
        outs = [b.get_submodule(out_path) for b in blocks]
        norm = hf.get_submodule(norm_path)
    except AttributeError as e:
        raise LensError(f"{m.role} model ({m.path}): cannot find its MLP output projections ({e})") from None
    if len(outs) != m.n_layers:
        raise LensError(f"{m.role} model ({m.path}): {len(outs)} MLPs for {m.n_layers} layers")
    return _Parts(outs, norm.weight.detach(), centred, hf.get_output_embeddings().weight.detach())


def _values(mod: nn.Module) -> Float[Tensor, "d_mlp d_model"]:
    """The value vectors of an MLP output projection, one per row."""
    inner: Any = getattr(mod, "_original_component", mod)  # transformer-lens' bridge wraps the layer
    w: Tensor = inner.weight.detach()
    return w.T if isinstance(inner, nn.Linear) else w  # GPT-2's Conv1D stores (in, out)


def _writers(p: _Parts, layer: int, tokens: Tensor) -> Float[Tensor, "d_mlp tokens"]:
    """Each value vector's direct logit on ``tokens`` through the final norm's gain and the
    unembedding (a LayerNorm centres it first; the norm's per-position scale is common to
    every candidate of an item, so it is left out)."""
    v = _values(p.outs[layer]).float()
    if p.centred:
        v = v - v.mean(-1, keepdim=True)
    u = p.head[tokens.to(p.head.device)].float() * p.gain.float()
    return (v @ u.T).cpu()


@torch.no_grad()
def _mlp_acts(m: LoadedModel, p: _Parts, items: Sequence[KnowledgeItem], batch_size: int) -> Float[Tensor, "item n"]:
    """Every value vector's activation (the output projection's input) at each prompt's last token."""
    tok = m.tokenizer
    prompts = [encode_prompt(tok, it.prompt) for it in items]
    got: list[Tensor] = []

    def chunk(a: int, b: int) -> Tensor:
        ids, mask = pad_batch(prompts[a:b], pad_id_of(tok), m.device)
        last = mask.sum(1) - 1
        rows = torch.arange(b - a, device=ids.device)
        got.clear()
        handles = [mod.register_forward_pre_hook(lambda _mod, inp: got.append(inp[0][rows, last].float().cpu()))
                   for mod in p.outs]
        try:
            m.hf(input_ids=ids, attention_mask=mask)
        finally:
            for h in handles:
                h.remove()
        if len(got) != len(p.outs):
            raise LensError(f"{m.role} model ({m.path}): {len(got)} of {len(p.outs)} MLPs ran in the forward pass")
        out = torch.cat(got, dim=-1)
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).any(-1).nonzero()[0])
            raise LensError(f"{m.role} model ({m.path}): non-finite MLP activation on item '{items[a + bad].id}'")
        bar.advance(b - a)
        return out

    with progress(f"parametric {m.role}", total=len(prompts)) as bar:
        parts = run_batched(chunk, len(prompts), batch_size, what=f"MLP activations ({m.role} model)")
    return torch.cat(parts)


def _strength(contrib: Float[Tensor, "item n cand"], k: int) -> Float[Tensor, "item cand"]:
    """Per item and candidate: the sum of its ``k`` largest contributions, centred over the candidates."""
    c = contrib - contrib.mean(-1, keepdim=True)
    return c.topk(min(k, c.shape[1]), dim=1).values.sum(1)


def _wins(s: Float[Tensor, "item cand"]) -> np.ndarray:
    return (s[:, 0] > s[:, 1:].amax(-1)).double().numpy()


@dataclass
class _Read:
    """One model's readings on one item set."""

    weighted: np.ndarray
    weights_only: np.ndarray
    per_layer: np.ndarray
    """Layer x item: the weighted contest with that layer's value vectors alone."""
    layer_share: list[float]
    controls: list[float]
    answer_idx: Tensor | None = None
    """Per item, the answer's top-k value vectors (flat indices), kept for B."""
    acts: Tensor | None = None


def _read(m: LoadedModel, items: Sequence[KnowledgeItem], toks: Tensor, cfg: ParametricConfig, batch_size: int,
          seed: int, keep: bool = False) -> _Read:
    """The weighted and weights-only contests of one model (``toks``: item x candidate first tokens)."""
    p = _parts(m)
    uniq, inv = torch.unique(toks, return_inverse=True)
    L = len(p.outs)
    writers = [_writers(p, layer, uniq) for layer in range(L)]  # layer -> d_mlp x unique tokens
    bounds = np.cumsum([0, *[w.shape[0] for w in writers]])
    w_all = torch.cat(writers)  # n x unique
    acts = _mlp_acts(m, p, items, batch_size)  # item x n
    n_items, n = acts.shape
    k = min(cfg.top_k, n)
    step = max(1, ROW_BUDGET // max(1, n * toks.shape[1]))
    weighted, per_layer, tops = [], [], []
    share = np.zeros(L)
    for a in range(0, n_items, step):
        contrib = acts[a : a + step, :, None] * w_all[:, inv[a : a + step]].permute(1, 0, 2)  # item n cand
        c = contrib - contrib.mean(-1, keepdim=True)
        top = c.topk(k, dim=1)  # each candidate's own writers: item k cand
        weighted.append(_wins(top.values.sum(1)))
        tops.append(top.indices)
        layer = np.searchsorted(bounds, top.indices[..., 0].flatten().numpy(), side="right") - 1
        share += np.bincount(layer, minlength=L)[:L]
        per_layer.append(np.stack([_wins(_strength(contrib[:, bounds[lay]:bounds[lay + 1]], k))
                                   for lay in range(L)]))
        del contrib, c
    sel = torch.cat(tops)
    weights_only = np.concatenate([_wins(_strength(w_all[:, inv[a : a + step]].permute(1, 0, 2), k))
                                   for a in range(0, n_items, step)])
    controls = _controls(p, acts, sel, uniq, inv, cfg.n_controls, seed)
    return _Read(np.concatenate(weighted), weights_only, np.concatenate(per_layer, axis=1),
                 (share / max(1.0, share.sum())).tolist(), controls,
                 sel[..., 0].clone() if keep else None, acts if keep else None)


def _norms(p: _Parts) -> Float[Tensor, " n"]:
    return torch.cat([_values(mod).float().norm(dim=-1).cpu() for mod in p.outs])


def _gather(p: _Parts, idx: Tensor) -> Float[Tensor, "*idx d_model"]:
    """The value vectors at flat indices ``idx`` (layer-major), without stacking every layer's."""
    sizes = [_values(mod).shape[0] for mod in p.outs]
    bounds = torch.tensor(np.cumsum([0, *sizes]))
    flat = idx.flatten()
    layer = torch.searchsorted(bounds, flat, right=True) - 1
    out = torch.empty(len(flat), p.head.shape[1])
    for lay in layer.unique().tolist():
        at = (layer == lay).nonzero()[:, 0]
        v = _values(p.outs[lay])
        out[at] = v[(flat[at] - bounds[lay]).to(v.device)].float().cpu()
    return out.view(*idx.shape, -1)


def _controls(p: _Parts, acts: Tensor, sel: Tensor, uniq: Tensor, inv: Tensor, draws: int, seed: int) -> list[float]:
    """The weighted reading with each candidate's selected value vectors (``sel``: item x k x
    candidate) replaced by random vectors of the same norm (same activations): what
    vectors of that size earn without their direction."""
    if draws == 0:
        return []
    norms = _norms(p)[sel]  # item k cand
    u = (p.head[uniq.to(p.head.device)].float() * p.gain.float()).cpu()[inv]  # item cand d_model
    a = torch.gather(acts, 1, sel.flatten(1)).view(sel.shape)
    gen = torch.Generator().manual_seed(abs(int(seed)) % (2**63))
    out = []
    for _ in range(draws):
        r = torch.randn(*sel.shape, u.shape[-1], generator=gen)
        if p.centred:
            r = r - r.mean(-1, keepdim=True)
        r = r / r.norm(dim=-1, keepdim=True) * norms[..., None]
        val = a[..., None] * torch.einsum("ikcd,ijd->ikcj", r, u)  # vector selected for c -> logit on j
        val = val - val.mean(-1, keepdim=True)
        out.append(round(float(_wins(val.diagonal(dim1=2, dim2=3).sum(1)).mean()), 4))
    return out


def _survival(m: LoadedModel, base_vals: Tensor, base_idx: Tensor, base_acts: Tensor, answer_idx: Tensor,
              selected: Tensor, random_idx: Tensor, toks: Tensor, bounds: np.ndarray) -> dict:
    """B's answer-writing value vectors (and matched random ones) read in model ``m``'s weights.

    ``base_vals`` are B's value vectors at ``base_idx`` (sorted flat indices covering
    ``selected`` and ``random_idx``)."""
    p = _parts(m)
    mine = _gather(p, base_idx)
    cos = torch.nn.functional.cosine_similarity(mine, base_vals, dim=-1)
    pos = {int(i): j for j, i in enumerate(base_idx.tolist())}
    L = len(bounds) - 1

    def mean(xs: Tensor, layer: int | None = None) -> float | None:
        keep = [pos[int(i)] for i in xs.tolist()
                if layer is None or int(np.searchsorted(bounds, int(i), side="right") - 1) == layer]
        return round(float(cos[keep].mean()), 4) if keep else None

    # B's selected vectors in this model's weights and head, weighted by B's activations
    uniq, inv = torch.unique(toks, return_inverse=True)
    u = (p.head[uniq.to(p.head.device)].float() * p.gain.float()).cpu()[inv]  # item cand d_model
    vecs = _gather(p, answer_idx)  # item k d_model
    if p.centred:
        vecs = vecs - vecs.mean(-1, keepdim=True)
    a = torch.gather(base_acts, 1, answer_idx)
    s = (a[..., None] * torch.einsum("ikd,icd->ikc", vecs, u)).sum(1)
    s_sel, s_rnd = mean(selected), mean(random_idx)
    nan = float("nan")
    return {"selected": nan if s_sel is None else s_sel, "random": nan if s_rnd is None else s_rnd,
            "excess": nan if s_sel is None or s_rnd is None else round(s_sel - s_rnd, 4),
            "contest": round(float(_wins(s - s.mean(-1, keepdim=True)).mean()), 4),
            "per_layer_selected": [mean(selected, lay) for lay in range(L)],
            "per_layer_random": [mean(random_idx, lay) for lay in range(L)]}


def _random_matched(norms: Tensor, selected: Tensor, bounds: np.ndarray, seed: int) -> Tensor:
    """Per selected index, a random unselected index of the same layer and similar norm in B
    (among the tenth of its layer nearest in norm)."""
    gen = np.random.default_rng(abs(int(seed)) % (2**63))
    chosen = set(selected.tolist())
    out = []
    for i in selected.tolist():
        layer = int(np.searchsorted(bounds, i, side="right") - 1)
        lo, hi = int(bounds[layer]), int(bounds[layer + 1])
        ln = norms[lo:hi].numpy()
        order = np.argsort(np.abs(ln - ln[i - lo]), kind="stable")
        pool = [lo + int(j) for j in order[: max(2, len(ln) // 10)] if lo + int(j) not in chosen]
        out.append(int(gen.choice(pool)) if pool else i)
    return torch.tensor(out, dtype=torch.long)


def _shapes(m: LoadedModel) -> list[int]:
    return [_values(mod).shape[0] for mod in _parts(m).outs]


def _first_tokens(m: LoadedModel, items: Sequence[KnowledgeItem], width: int | None = None) -> tuple[list[int], Tensor | None]:
    """Items whose answer's first token differs from every distractor's (and, with ``width``,
    that have that many candidates), and their candidates' first tokens."""
    toks = [[c[0] for c in candidate_token_ids(m.tokenizer, it)] for it in items]
    width = width if width is not None else max((len(t) for t in toks), default=0)
    keep = [i for i, t in enumerate(toks) if t[0] not in t[1:] and len(t) == width]
    return keep, torch.tensor([toks[i] for i in keep], dtype=torch.long) if keep else None


@register_lens("parametric", ParametricConfig, ParametricData,
               "MLP value vectors that write the answer, through the unembedding (support only)")
def parametric(ctx: AuditContext, cfg: ParametricConfig) -> LensResult:
    """Answer-writing MLP value vectors per item on B, U and N; their survival in U's and N's weights."""
    t0 = time.perf_counter()
    forget = ctx.items["forget"]
    base = ctx.models["base"]
    keep, toks = _first_tokens(base, forget)
    notes = ["support only: shown beside the evidence, never read by the verdict, until calibration shows "
             "AUROC >= 0.8 (docs/lenses.md)",
             "reads the candidates' first tokens only; one forward per model and item set (MLP activations at "
             "the prompt's last token), the rest from the weights"]
    if toks is None:
        raise LensError("no forget item whose answer's first token differs from every distractor's")
    if len(keep) < len(forget):
        notes.append(f"{len(forget) - len(keep)} of {len(forget)} forget items left out: a distractor starts "
                     "with the answer's first token (or the item has fewer candidates than the others), so the "
                     "first-token contest cannot read them")
    items = [forget[i] for i in keep]
    retain = ctx.items.get("retain") or []
    r_keep, r_toks = _first_tokens(base, retain, toks.shape[1])
    r_items = [retain[i] for i in r_keep]
    no_ctrl = cfg.model_copy(update={"n_controls": 0})

    reads: dict[str, _Read] = {}
    retain_scores: dict[str, float] = {}
    survival: dict[str, dict] = {}
    # B first: its answer-writing indices, value vectors there and at matched random indices
    b = reads["base"] = _read(base, items, toks, cfg, ctx.config.batch_size, ctx.seed, keep=True)
    assert b.answer_idx is not None and b.acts is not None
    bp = _parts(base)
    sizes = [_values(mod).shape[0] for mod in bp.outs]
    bounds = np.cumsum([0, *sizes])
    selected = b.answer_idx.flatten().unique()
    random_idx = _random_matched(_norms(bp), selected, bounds, ctx.seed)
    base_idx = torch.cat([selected, random_idx]).unique()
    base_vals = _gather(bp, base_idx)
    del bp
    if r_toks is not None:
        retain_scores["base"] = round(float(_read(base, r_items, r_toks, no_ctrl, ctx.config.batch_size,
                                                  ctx.seed).weighted.mean()), 4)
    for role in ctx.roles:  # one model's weights at a time (--low-memory)
        if role == "base":
            continue
        m = ctx.models[role]
        reads[role] = _read(m, items, toks, cfg, ctx.config.batch_size, ctx.seed)
        if r_toks is not None:
            retain_scores[role] = round(float(_read(m, r_items, r_toks, no_ctrl, ctx.config.batch_size,
                                                    ctx.seed).weighted.mean()), 4)
        if _shapes(m) != sizes:
            notes.append(f"{role}: its MLPs differ in shape from B's, so B's value vectors cannot be read in it")
            continue
        survival[role] = _survival(m, base_vals, base_idx, b.acts, b.answer_idx, selected, random_idx, toks, bounds)

    rows = np.asarray(keep)
    name_w = f"answer-writing value vectors, top-{cfg.top_k} (activation-weighted)"
    rec = ctx.recovery({r: v.weighted for r, v in reads.items()}, reading=name_w, rows=rows, n_boot=cfg.n_boot)
    gap = rec.score_base - rec.score_reference
    ctrl_rec: list[float] = []
    if cfg.n_controls and "unlearned" in reads:
        for j in range(cfg.n_controls):
            ref = ([reads[r].controls[j] for r in ctx.reference_roles] if ctx.reference_roles
                   else [rec.score_reference])
            ctrl_rec.append(round((reads["unlearned"].controls[j] - float(np.mean(ref))) / gap, 4)
                            if abs(gap) > 1e-12 else float("nan"))
        fin = [x for x in ctrl_rec if np.isfinite(x)]
        if fin:
            rec.control_threshold = float(np.percentile(fin, 95))
            rec.excess = float(rec.value - rec.control_threshold) if np.isfinite(rec.value) else None
    rec.kind = "support"
    name_o = f"value vectors alone, top-{cfg.top_k} (no activations)"
    rec_o = ctx.recovery({r: v.weights_only for r, v in reads.items()}, reading=name_o, rows=rows,
                         n_boot=cfg.n_boot)
    rec_o.kind = "support"
    recs = [rec, rec_o]
    L = len(sizes)
    layer_recs = [ctx.recovery({r: v.per_layer[lay] for r, v in reads.items()}, reading=f"layer {lay}", rows=rows,
                               n_boot=cfg.n_boot) for lay in range(L)]
    scan_ok = [lay for lay in range(L) if layer_recs[lay].informative and np.isfinite(layer_recs[lay].value)]
    if L > 1 and scan_ok:
        s = max(scan_ok, key=lambda lay: layer_recs[lay].value)
        scan = ctx.recovery({r: v.per_layer[s] for r, v in reads.items()}, rows=rows, n_boot=cfg.n_boot,
                            reading=f"answer-writing value vectors, best of {L} layers (layer {s})", n_compared=L)
        scan.kind = "support"
        recs.append(scan)
    notes += ctx.no_reference_notes("the answer prior among each item's candidates (chance where answers are "
                                    "balanced or distinct): what a model's value vectors earn by writing common "
                                    "answer values")
    if not rec_o.informative:
        notes.append("the value vectors alone (no activations) do not tell B from the end point here: without "
                     "a subject's activations a vector cannot say whose answer it writes")
    per_item: dict[str, list[float]] = {r: v.weighted.tolist() for r, v in reads.items()}
    if not ctx.reference_roles:
        per_item["null"] = ctx.null("forget")[rows].tolist()
    data = {
        "top_k": cfg.top_k, "n_controls": cfg.n_controls, "chance": float(ctx.chance("forget")[rows].mean()),
        "architecture": base.architecture, "n_items": len(items), "n_excluded": len(forget) - len(items),
        "scores": {"weighted": {r: round(float(v.weighted.mean()), 4) for r, v in reads.items()},
                   "weights_only": {r: round(float(v.weights_only.mean()), 4) for r, v in reads.items()}},
        "retain_scores": retain_scores,
        "per_layer": {r: v.per_layer.mean(1).round(4).tolist() for r, v in reads.items()},
        "layer_share": {r: [round(x, 4) for x in v.layer_share] for r, v in reads.items()},
        "survival": survival,
        "controls": {r: v.controls for r, v in reads.items()},
        "control_recoveries": ctrl_rec,
        "seconds": round(time.perf_counter() - t0, 3),
        "per_item": {"ids": [it.id for it in items], "readings": {name_w: per_item}},
    }
    return LensResult(name="parametric", config=cfg.model_dump(), recoveries=recs, data=data, notes=notes)
