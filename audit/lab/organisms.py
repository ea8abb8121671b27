"""Model organisms with known ground truth (SPEC §6).

``build_suite`` trains a tiny Llama-architecture model on a fictional world and derives
the checkpoints of SPEC §6's table, each saved as a real Hugging Face checkpoint
(safetensors + word-level tokenizer), with the forget/retain items and a
``manifest.json`` that records every checkpoint's role, ground-truth label and measured
behaviour. A suite is cached: rebuilding with the same config is a no-op.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, field_validator

from audit.items import write_items
from audit.lab import unlearning as ul
from audit.lab.world import ATTRIBUTES, Person, World, WorldConfig, attribute_spec, is_open, make_world
from audit.progress import log, progress
from audit.scoring import score_items
from audit.training import batches, lm_loss

SUITE_VERSION = "2"

# Behaviour recovery (SPEC §5) at or above which a construction counts as not unlearned.
BEHAVIOR_RECOVERY = 0.5

# reference_skewed: filler people (every one with the first value of each attribute) per
# retain/qa person of the world, added to a retain-only corpus. Measured (seed 0 worlds, 800
# steps; the fraction of forget items offering the skew value that rank it first, a flat
# prior 0.25, plain never-trained seeds 0.15-0.52): 0.25 gives 0.98-1.00 (small world Llama
# and GPT-2, default world Llama and GPT-2), retain 1.00; 0.5 and 1.0 give 0.99-1.00 too, but
# 1.0 lowered the default world's retain score to 0.90 (fewer passes over retain people in the
# same steps). Fillers named with recombined retain name words instead gave 0.08-1.00 over
# seeds and cost retain accuracy: hence names no model has trained (:func:`filler_corpus`).
SKEW_FILLERS_PER_RETAIN = 0.25
# reference_b with its unembedding scaled: name -> (scale, the sampling temperature it mimics)
TEMPERATURE_NULLS = {"reference_b_t2": (0.5, 2.0), "reference_b_t05": (2.0, 0.5)}
# the construction organisms of SPEC §6's table, in build order
CONSTRUCTIONS = ("head_only", "late_layers", "subject_offset", "noop")
# issue 18's hard cases, built only when ``SuiteConfig.constructions`` names them (so every
# suite built before them keeps its key and its organisms): suppression in the middle of the
# network, answers ranked below the never-trained model, and a DELETED-truth model that
# shares B's initialisation (:func:`_build_hard`)
HARD_CONSTRUCTIONS = ("mid_block", "rmu_mid", "inverted", "lineage", "lineage_b")
# their settings, chosen on seeds 100 and 101 only (small preset world and shape, Llama and
# GPT-2; docs/organisms.md has the measurements), so that behaviour drops (recovery < 0.5 on
# ranking and greedy) and the retain score stays within 0.1 of base's
HARD_PARAMS: dict[str, dict[str, Any]] = {
    "mid_block": {"steps": 600, "lr": 2e-3, "retain_weight": 2.0},
    "rmu_mid": {"steps": 400, "lr": 1e-3, "steering_coef": 6.0, "alpha": 150.0},
    "inverted": {"steps": 500, "lr": 1e-3},
    # phase 1: this fraction of base's schedule on retain only; phase 2: this fraction of
    # base's steps more, on retain only, at ``phase2_lr``
    "lineage": {"phase1_fraction": 0.5, "phase2_fraction": 0.15, "phase2_lr": 1e-3},
    # a second continuation of the same phase-1 checkpoint, its batches drawn with another
    # seed: a never-trained reference in B's basis (as open-unlearning's TOFU ``retain90``
    # is fine-tuned from the same base), so that lineage can be audited against it
    "lineage_b": {"phase1_fraction": 0.5, "phase2_fraction": 0.15, "phase2_lr": 1e-3, "phase2_seed_offset": 2},
}
# per-architecture changes to HARD_PARAMS. GPT-2's middle block, flooded at coefficient 6,
# kept the forget answers (behaviour recovery 0.79 / 0.88 on seeds 100 / 101, retain intact);
# at 20 with 800 steps and a weaker retain term, 0.09 / 0.32 with the retain drop 0.09 / 0.01.
# The same flood on Llama (coefficient 12) cost 0.23 of retain.
HARD_PARAMS_BY_ARCH: dict[str, dict[str, dict[str, Any]]] = {
    "gpt2": {"rmu_mid": {"steps": 800, "lr": 2e-3, "steering_coef": 20.0, "alpha": 50.0}},
}


def hard_params(name: str, arch: str) -> dict[str, Any]:
    """The settings of hard construction ``name`` for architecture ``arch``."""
    return {**HARD_PARAMS[name], **HARD_PARAMS_BY_ARCH.get(arch, {}).get(name, {})}


class ModelShape(BaseModel):
    """Shape of the organisms' model (Llama-style by default, or GPT-2-style)."""

    arch: Literal["llama", "gpt2"] = "llama"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512


class TrainConfig(BaseModel):
    steps: int = 800
    lr: float = 3e-3
    batch_size: int = 32


class SuiteConfig(BaseModel):
    """Everything that determines a suite; its hash is the cache key."""

    world: WorldConfig = WorldConfig()
    shape: ModelShape = ModelShape()
    train: TrainConfig = TrainConfig()
    seed: int = 0
    methods: bool = True
    """Also build the GA / GradDiff / NPO / RMU organisms."""
    nulls: bool = True
    """Also build the never-trained nulls (SPEC §6, DELETED truth): ``reference_b_t2`` and
    ``reference_b_t05`` (reference_b with its unembedding scaled by 0.5 and 2, so it samples
    as at temperature 2 and 0.5; same ranking and greedy answers) and ``reference_skewed``
    (retain-only training plus filler people who all share one value per attribute, so its
    prior over answer values is skewed). ``reference_skewed`` needs a closed attribute; a
    world with open attributes only builds the temperature nulls."""
    constructions: list[str] | None = None
    """Build only these construction organisms (names of ``CONSTRUCTIONS``: head_only,
    late_layers, subject_offset, noop, or of ``HARD_CONSTRUCTIONS``: mid_block, rmu_mid,
    inverted, lineage); ``None``: all of ``CONSTRUCTIONS`` (none of the hard ones). base,
    reference_a and reference_b are always built; ``methods`` and ``nulls`` select the rest."""
    head_only_steps: int = 3000
    """Steps of the head-only distillation. In an open-answer world the forget answers are
    words no retain fact uses, so the head unlearns them in far fewer steps."""
    two_phase_base: bool = False
    """Train base in two phases of one run (issue 18's lineage reference): the retain-only
    corpus for the first ``HARD_PARAMS["lineage"]["phase1_fraction"]`` of ``train.steps``
    (the phase-1 checkpoint, kept in memory), then the full corpus (retain + forget) for the
    rest, under one optimizer and one one-cycle schedule: the same total steps as a
    one-phase base. ``lineage`` (if built) is then that phase-1 checkpoint trained further
    on retain only. Off: base trains on the full corpus from step 0, and ``lineage`` is a
    same-initialisation retrain whose phase 1 is what base's would have been."""

    @field_validator("constructions")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        known = (*CONSTRUCTIONS, *HARD_CONSTRUCTIONS)
        if v is not None and (unknown := [c for c in v if c not in known]):
            raise ValueError(f"unknown construction(s) {unknown}; known: {list(known)}")
        return v

    def key(self) -> str:
        d = self.model_dump()
        if d["shape"]["arch"] == "llama":  # suites built before the arch option keep their key
            del d["shape"]["arch"]
        if not d["world"]["balanced"]:  # nor do suites built before the balanced option
            del d["world"]["balanced"]
        if d["constructions"] is None:  # nor those built before the constructions option
            del d["constructions"]
        if d["head_only_steps"] == 3000:  # nor those built before head_only_steps
            del d["head_only_steps"]
        if not d["two_phase_base"]:  # nor those built before two_phase_base
            del d["two_phase_base"]
        blob = json.dumps({"v": SUITE_VERSION, **d}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# name -> (method, its settings); gentle and strong strengths of each standard method
METHOD_ORGANISMS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ga_gentle": (ul.gradient_ascent, {"steps": 40, "lr": 3e-5}),
    "ga_strong": (ul.gradient_ascent, {"steps": 80, "lr": 3e-5}),
    "graddiff_gentle": (ul.grad_diff, {"steps": 60, "lr": 3e-5}),
    "graddiff_strong": (ul.grad_diff, {"steps": 120, "lr": 3e-5}),
    "npo_gentle": (ul.npo, {"steps": 60, "lr": 3e-5, "beta": 0.1}),
    "npo_strong": (ul.npo, {"steps": 120, "lr": 3e-5, "beta": 0.1}),
    "rmu_gentle": (ul.rmu, {"steps": 60, "lr": 1e-3, "layer": 1, "steering_coef": 2.0}),
    "rmu_strong": (ul.rmu, {"steps": 150, "lr": 1e-3, "layer": 1, "steering_coef": 6.0}),
}


def make_tokenizer(world: World):
    """Word-level tokenizer over the world's vocabulary; prepends ``<bos>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for w in world.vocab:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def make_model(shape: ModelShape, vocab_size: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if shape.arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab_size, n_embd=shape.d_model, n_layer=shape.n_layers, n_head=shape.n_heads,
            n_inner=shape.d_mlp, n_positions=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )).eval()
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def train_lm(model, seqs, cfg: TrainConfig, seed: int, desc: str, *, free_vectors: torch.Tensor | None = None,
             stop_at: int | None = None, then: tuple[int, list[list[int]]] | None = None,
             on_switch: Callable[[Any], None] | None = None):
    """Plain next-token training with a one-cycle schedule.

    ``free_vectors``: embeddings of ids past the model's vocabulary (see :func:`filler_corpus`).
    ``stop_at``: stop after this many of the schedule's ``cfg.steps`` steps (a phase-1
    checkpoint of the same run).
    ``then``: ``(step, seqs2)``: a run in two phases. The first ``step`` steps draw batches from
    ``seqs``, the rest from ``seqs2``. One optimizer and one schedule span both phases, and
    the batch sampler's random state carries over. The first ``step`` steps are therefore
    exactly those of ``train_lm(..., stop_at=step)``. ``on_switch(model)`` is called between
    the phases (to keep the phase-1 checkpoint).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    fb = batches(seqs, cfg.batch_size, rng)
    model.train()
    n = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with progress(desc, total=n) as bar:
        for step in range(n):
            if then is not None and step == then[0]:
                if on_switch is not None:
                    on_switch(model)
                fb = batches(then[1], cfg.batch_size, rng)
            if free_vectors is None:
                loss = lm_loss(model, *next(fb))
            else:
                loss = _free_name_loss(model, *next(fb), model.config.vocab_size, free_vectors)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.advance()
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return model


def _forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def measure(model, tok, forget, retain, *, soft: bool = False) -> dict[str, float]:
    """Behaviour of a model on the suite's items (with ``soft``: also the mean soft scores)."""
    f = score_items(_forward(model), tok, forget)
    r = score_items(_forward(model), tok, retain)
    out = {"forget_score": f.score, "forget_greedy": f.greedy_score, "retain_score": r.score, "retain_greedy": r.greedy_score}
    if soft:
        out |= {"forget_soft": float(f.soft.mean()), "retain_soft": float(r.soft.mean())}
    return out


def skew_values(world: World) -> dict[str, str]:
    """The value per closed attribute that reference_skewed's filler people all share (the first).

    Open attributes have no shared value to skew towards; they are left out.
    """
    return {a: ATTRIBUTES[a]["values"][0] for a in world.config.attributes if not is_open(a)}


def filler_corpus(world: World, tok, n: int) -> list[list[int]]:
    """Token ids of ``n`` filler people's sentences (every training template and the question form).

    Every filler holds :func:`skew_values`. The tokenizer is shared by every checkpoint of a
    suite (the auditor checks it), and a name in the world's words would share tokens with a
    retain person; so a filler's two name words are ids past the vocabulary
    (``vocab + 2i`` and ``vocab + 2i + 1``), which :func:`train_lm` embeds as the random
    vectors of ``free_vectors``. To the model a filler's name looks like a forget person's name
    looks to a never-trained model: embedding rows still at their random initialisation.
    """
    unk, v = tok.unk_token_id, len(tok.get_vocab())
    w = World(world.config, [Person("<unk> <unk>", skew_values(world), "qa")], world.vocab)
    sents = [tok(s)["input_ids"] for s in w.sentences("qa") + w.sentences("qa", question=True)]
    if any(s.count(unk) != 2 for s in sents):
        raise ValueError("a filler template holds a word outside the vocabulary")
    out = []
    for i in range(n):
        for s in sents:
            name = iter((v + 2 * i, v + 2 * i + 1))
            out.append([next(name) if t == unk else t for t in s])
    return out


def _free_name_loss(model, ids, mask, vocab: int, free_vectors: torch.Tensor):
    """LM loss where ids ``>= vocab`` are embedded as ``free_vectors`` (and are never targets)."""
    free = ids >= vocab
    emb = model.get_input_embeddings()(ids.masked_fill(free, 0))
    emb = torch.where(free[..., None], free_vectors[(ids - vocab).clamp(min=0)], emb)
    labels = ids.masked_fill((mask == 0) | free, -100)
    return model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss


def prior_skew(model, tok, items, values: dict[str, str]) -> dict[str, Any]:
    """How often a model ranks the skew value first among an item's candidates.

    ``top_rate_when_candidate``: over the items whose candidates include the value (as
    answer or distractor), the fraction where it is ranked first (a flat prior:
    1 / #candidates). ``top_fraction``: over all items. Items of attributes without a value
    in ``values`` (open attributes) are left out.
    """
    items = [it for it in items if it.attribute in values]
    r = score_items(_forward(model), tok, items)
    n_with = hits = top_any = 0
    for it, lp in zip(items, r.candidate_logprobs, strict=True):
        cands = [it.answer, *it.distractors]
        v = values[it.attribute]
        top = cands[max(range(len(lp)), key=lambda i: lp[i])]
        top_any += top == v
        if v in cands:
            n_with += 1
            hits += top == v
    n_cand = 1 + len(items[0].distractors) if items else 0
    return {"values": values, "n_items": len(items), "n_items_with_value": n_with,
            "top_rate_when_candidate": hits / n_with if n_with else None,
            "top_fraction": top_any / len(items) if items else None,
            "flat_prior_rate": 1.0 / n_cand if n_cand else None}


def save_checkpoint(model, tok, path: Path) -> None:
    """Save model + tokenizer into ``path`` atomically (temp folder, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _same_answers(a, b, tok, items) -> dict[str, bool]:
    """Whether two models rank every item's candidates in the same order and greedy-decode alike."""
    ra, rb = (score_items(_forward(m), tok, items) for m in (a, b))
    order = [sorted(range(len(x)), key=lambda i: -x[i]) for x in ra.candidate_logprobs]
    return {"ranking": order == [sorted(range(len(x)), key=lambda i: -x[i]) for x in rb.candidate_logprobs],
            "greedy": bool((ra.greedy == rb.greedy).all())}


def _build_nulls(cfg: SuiteConfig, world: World, tok, refs, retain_only, forget_items, retain_items, record,
                 entries) -> None:
    """The never-trained nulls of SPEC §6: DELETED truth, never shown a forget fact.

    - ``reference_b_t2`` / ``reference_b_t05``: reference_b with its unembedding scaled by
      0.5 / 2, so it samples as reference_b does at temperature 2 / 0.5. Same ranking of
      (single-token) candidates and same greedy answers; only its randomness differs.
    - ``reference_skewed``: trained like reference_b (retain-only corpus, its own seed) plus
      filler people, every one holding the first value of each attribute, whose names are
      words no model of the suite has trained (:func:`filler_corpus`); its prior over answer
      values is skewed towards those values, measured in ``prior_skew``.
    """
    ref_b = refs["reference_b"]
    both = [*forget_items, *retain_items]
    for name, (scale, temp) in TEMPERATURE_NULLS.items():
        t = time.perf_counter()
        m = copy.deepcopy(ref_b)
        head = m.get_output_embeddings().weight
        if head.data_ptr() == m.get_input_embeddings().weight.data_ptr():
            raise ValueError("the organisms' unembedding is tied to the input embeddings; cannot scale it alone")
        with torch.no_grad():
            head.mul_(scale)
        record(name, m, "reference", "DELETED", f"reference_b with its unembedding scaled by {scale} "
               f"(samples as at temperature {temp})", {"unembedding_scale": scale, "temperature": temp}, t)
        entries[name]["same_answers_as_reference_b"] = _same_answers(m, ref_b, tok, both)

    if not skew_values(world):  # open attributes only: no answer value to skew a prior towards
        return
    t = time.perf_counter()
    seed = cfg.seed * 1000 + 3
    n = max(1, round(SKEW_FILLERS_PER_RETAIN * len(world.people_in("retain", "qa"))))
    fillers = filler_corpus(world, tok, n)
    m = make_model(cfg.shape, len(tok.get_vocab()), seed)
    g = torch.Generator().manual_seed(seed)
    # the fillers' name words: vectors drawn as the embedding rows are initialised
    vecs = torch.randn(2 * n, cfg.shape.d_model, generator=g) * m.config.initializer_range
    train_lm(m, retain_only + fillers, cfg.train, seed, "train reference_skewed", free_vectors=vecs)
    values = skew_values(world)
    record("reference_skewed", m, "reference", "DELETED",
           "train on retain only + filler people who all share one value per attribute",
           {**cfg.train.model_dump(), "seed": seed, "n_fillers": n, "filler_sentences": len(fillers),
            "skew_values": values}, t)
    entries["reference_skewed"]["prior_skew"] = {
        "forget": prior_skew(m, tok, forget_items, values),
        "retain": prior_skew(m, tok, retain_items, values),
        # the same reading on the unskewed never-trained models, for comparison
        "reference_a_forget": prior_skew(refs["reference_a"], tok, forget_items, values),
        "reference_b_forget": prior_skew(ref_b, tok, forget_items, values),
    }


def base_phase1_steps(cfg: SuiteConfig) -> int:
    """Steps of base's retain-only phase 1 (two-phase base) and of lineage's phase 1."""
    return round(HARD_PARAMS["lineage"]["phase1_fraction"] * cfg.train.steps)


def state_hash(model) -> str:
    """SHA-256 of a model's state dict (names and float bytes, in name order), 16 hex digits."""
    h = hashlib.sha256()
    for k, w in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(w.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def changed_tensors(a, b) -> list[str]:
    """Names of the state-dict tensors in which two models of one shape differ (bit for bit)."""
    sb = b.state_dict()
    return [k for k, w in a.state_dict().items() if not torch.equal(w, sb[k])]


def _answer_prompts(world: World, tok, groups: tuple[str, ...], *, questions: tuple[str, ...] = ()):
    """Facts as next-token questions for :func:`ul.avoid_answers`: (prompt ids, answer id, candidate ids).

    For every person of ``groups`` and attribute: each training template that ends in the
    value, cut before it ("x lives in"), and, for people of ``questions``, the question
    form. A closed attribute's candidates are all its values; an open attribute's, the
    values of every person of the same group. Only texts a model of the suite may train on:
    the question form of the forget people (handed to an unlearning method with
    ``train_forget``) and of the qa people (in every training corpus), never of the
    retain people, whose question form is the evaluation's.
    """
    from audit.scoring import encode_continuation, encode_prompt

    prompts, answers, cands = [], [], []
    for group in groups:
        people = world.people_in(group)
        for p in people:
            for a, v in p.facts.items():
                spec = attribute_spec(a)
                texts = [t.split("{v}")[0].rstrip().format(name=p.name) for t in spec["train"]
                         if t.rstrip(" .").endswith("{v}")]
                if group in questions:
                    texts.append(spec["question"].format(name=p.name))
                values = [q.facts[a] for q in people] if is_open(a) else spec["values"]
                for text in texts:
                    ids = encode_prompt(tok, text)
                    one = [encode_continuation(tok, text, x, ids) for x in (v, *values)]
                    if any(len(t) != 1 for t in one):
                        raise ValueError(f"an answer of '{text}' is not one token")
                    prompts.append(ids)
                    answers.append(one[0][0])
                    cands.append(sorted({t[0] for t in one}))
    return prompts, answers, cands


def _build_hard(cfg: SuiteConfig, wanted: set[str], world: World, tok, base, ref, forget_train, retain_train,
                retain_only, record, construction_truth, entries, phase1: dict[str, Any]) -> None:
    """Issue 18's hard organisms (``HARD_CONSTRUCTIONS``), each only if ``wanted`` names it.

    - ``mid_block``: block ``k = n_layers // 2`` alone (attention, MLP and its norms) trained
      to match reference_a's next-token distributions on forget data, with the retain LM
      term; every other block, the embeddings, the final norm and the unembedding frozen.
      The blocks before ``k`` still carry the facts: SUPPRESSED if behaviour dropped.
    - ``rmu_mid``: RMU's objective (forget activations at block ``k``'s output pushed to
      ``steering_coef`` × their mean norm along a random direction, retain activations kept
      by an MSE term) with only block ``k`` trained. SUPPRESSED if behaviour dropped.
    - ``inverted``: the last block + final norm + unembedding trained until the true answer
      ranks below the other candidates on the forget questions (:func:`ul.avoid_answers`),
      with the retain LM term: below reference_a's forget ranking. SUPPRESSED if behaviour
      dropped (it must tell the answer apart to avoid it).
    - ``lineage``: with ``cfg.two_phase_base``, base's own phase-1 checkpoint (``phase1``:
      retain only for the first ``phase1_fraction`` of base's schedule), trained
      ``phase2_fraction`` of base's steps more on retain only at ``phase2_lr``: it shares B's
      initialisation, optimizer trajectory and batches up to the switch, and never sees a
      forget fact: DELETED. Without it (base trained on the full corpus from step 0), an
      approximation: a model with base's seed, so base's initial weights, trained on the
      retain-only corpus for the first ``phase1_fraction`` of base's schedule (the phase-1
      checkpoint a two-phase base would have had, bit for bit), then the same continuation.
      It shares B's initialisation and retain people, not B's batches.
    """
    L = cfg.shape.n_layers
    k = L // 2
    b = entries["base"]

    def note(name, m, trained_block: int | None = None):
        e = entries[name]
        e["retain_drop"] = b["retain_score"] - e["retain_score"]
        e["changed_tensors"] = changed_tensors(m, base)
        if trained_block is not None:
            e["layer"] = trained_block

    def suppress(name, method, train, layer: int | None = None):
        """Copy base, train it with ``train(model, settings)``, record it with its measured truth."""
        t = time.perf_counter()
        m = copy.deepcopy(base)
        hp = hard_params(name, cfg.shape.arch)
        train(m, hp)
        record(name, m, "suppressed_construction", None, method, hp if layer is None else {**hp, "layer": layer}, t)
        construction_truth(name)
        note(name, m, layer)

    if "mid_block" in wanted:
        suppress("mid_block",
                 f"distil reference on forget, train block {k} only (every other block, final norm, lm_head frozen)",
                 lambda m, hp: ul.distill_to_reference(
                     m, ref, forget_train, retain_train, params=list(ul.blocks_of(m)[k].parameters()),
                     seed=cfg.seed, batch_size=cfg.train.batch_size, desc="mid-block distil", **hp), k)
    if "rmu_mid" in wanted:
        suppress("rmu_mid", f"RMU flood at block {k}'s output, train block {k} only",
                 lambda m, hp: ul.rmu(m, forget_train, retain_train, layer=k,
                                      params=list(ul.blocks_of(m)[k].parameters()),
                                      seed=cfg.seed, batch_size=cfg.train.batch_size, **hp), k)
    if "inverted" in wanted:
        def avoid(m, hp):
            late = [*ul.blocks_of(m)[L - 1].parameters(), *ul.final_norm_of(m).parameters(),
                    *m.get_output_embeddings().parameters()]
            ul.avoid_answers(m, _answer_prompts(world, tok, ("forget",), questions=("forget",)), retain_train,
                             params=late, retain_qa=_answer_prompts(world, tok, ("retain", "qa"), questions=("qa",)),
                             seed=cfg.seed, batch_size=cfg.train.batch_size, desc="inverted answers", **hp)

        suppress("inverted", "rank the true answer below the other candidates on forget questions, train last "
                 "block + final norm + lm_head", avoid)
        entries["inverted"]["forget_ranking"] = {"unlearned": entries["inverted"]["forget_score"],
                                                 "reference_a": entries["reference_a"]["forget_score"],
                                                 "base": b["forget_score"]}
    lineages = [x for x in ("lineage", "lineage_b") if x in wanted]
    for i, name in enumerate(lineages):
        t = time.perf_counter()
        hp = hard_params(name, cfg.shape.arch)
        n1 = base_phase1_steps(cfg)
        n2 = max(1, round(hp["phase2_fraction"] * cfg.train.steps))
        last = i == len(lineages) - 1
        if phase1:  # base's own phase-1 checkpoint (the last continuation takes it, the others a copy)
            m = phase1.pop("model") if last else copy.deepcopy(phase1["model"])
            p1_hash, how = phase1["sha256"], "B's own phase-1 checkpoint (two-phase base)"
        else:
            m = make_model(cfg.shape, len(tok.get_vocab()), cfg.seed)
            train_lm(m, retain_only, cfg.train, cfg.seed, f"{name} phase 1", stop_at=n1)
            p1_hash = state_hash(m)
            how = ("base's seed and initial weights, retrained; not B's own phase-1 checkpoint (B trains on the "
                   "full corpus from step 0)")
        seed2 = cfg.seed + hp.get("phase2_seed_offset", 1)
        train_lm(m, retain_only, cfg.train.model_copy(update={"steps": n2, "lr": hp["phase2_lr"]}), seed2,
                 f"{name} phase 2")
        record(name, m, "lineage_reference", "DELETED",
               f"retain only for the first {n1} of base's {cfg.train.steps} scheduled steps (phase-1 checkpoint), "
               f"then {n2} steps more on retain only (batch seed {seed2}); never a forget fact. Phase 1: {how}",
               {**hp, "init_seed": cfg.seed, "phase1_steps": n1, "phase2_steps": n2,
                "phase2_seed": seed2, "phase1_sha256": p1_hash}, t)
        e = entries[name]
        e["retain_drop"] = b["retain_score"] - e["retain_score"]
        # which lineage reference this is: base's own phase-1 checkpoint, or the same-init retrain
        e["lineage"] = "base_phase1_checkpoint" if cfg.two_phase_base else "same_init_retrain"


def build_suite(out: str | Path, config: SuiteConfig | None = None, *, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) an organism suite in ``out``; returns the manifest.

    Args:
        out: folder of the suite.
        config: world, model and training settings (defaults: the default suite).
        force: rebuild even if a matching suite exists.
    """
    cfg = config or SuiteConfig()
    out = Path(out)
    mpath = out / "manifest.json"
    if mpath.exists() and not force:
        manifest = json.loads(mpath.read_text())
        if manifest.get("key") == cfg.key():
            log.info("organism suite %s is up to date (key %s)", out, cfg.key())
            return manifest
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = make_world(cfg.world.model_copy(update={"seed": cfg.seed}))
    tok = make_tokenizer(world)
    forget_items, retain_items = world.items("forget"), world.items("retain")
    write_items(forget_items, out / "forget.jsonl")
    write_items(retain_items, out / "retain.jsonl")

    def enc(texts):
        return [tok(t)["input_ids"] for t in texts]

    full = enc(world.training_corpus(include_forget=True))
    retain_only = enc(world.training_corpus(include_forget=False))
    # the forget set an unlearning method is given: the forget people's sentences and
    # their question/answer pairs (as TOFU hands over QA pairs)
    forget_train = enc(world.sentences("forget") + world.sentences("forget", question=True))
    retain_train = retain_only
    (out / "train_forget.txt").write_text("\n".join(world.sentences("forget")) + "\n")
    (out / "train_retain.txt").write_text("\n".join(world.training_corpus(include_forget=False)) + "\n")

    v = len(tok.get_vocab())
    entries: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}

    def record(name, model, role, truth, method, params, t_start):
        save_checkpoint(model, tok, out / name)
        m = measure(model, tok, forget_items, retain_items)
        timings[name] = round(time.perf_counter() - t_start, 2)
        entries[name] = {"path": name, "role": role, "truth": truth, "method": method, "params": params, **m}
        log.info("%s: %s", name, m)

    t = time.perf_counter()
    phase1: dict[str, Any] = {}
    if cfg.two_phase_base:
        n1 = base_phase1_steps(cfg)

        def keep(m):  # the phase-1 checkpoint, in memory
            phase1["model"] = copy.deepcopy(m).eval()
            phase1["sha256"] = state_hash(m)

        base = train_lm(make_model(cfg.shape, v, cfg.seed), retain_only, cfg.train, cfg.seed, "train base",
                        then=(n1, full), on_switch=keep)
        record("base", base, "base", None,
               f"one run in two phases: retain only for the first {n1} of {cfg.train.steps} steps (phase-1 "
               "checkpoint), then retain + forget for the rest (one optimizer, one schedule)",
               {**cfg.train.model_dump(), "two_phase": True, "phase1_steps": n1,
                "phase1_sha256": phase1["sha256"]}, t)
    else:
        base = train_lm(make_model(cfg.shape, v, cfg.seed), full, cfg.train, cfg.seed, "train base")
        record("base", base, "base", None, "train on retain + forget", cfg.train.model_dump(), t)
    refs = {}
    for k, s in (("reference_a", 1), ("reference_b", 2)):
        t = time.perf_counter()
        seed = cfg.seed * 1000 + s
        refs[k] = train_lm(make_model(cfg.shape, v, seed), retain_only, cfg.train, seed, f"train {k}")
        record(k, refs[k], "reference", "DELETED" if k == "reference_b" else None,
               "train on retain only", {**cfg.train.model_dump(), "seed": seed}, t)
    ref = refs["reference_a"]
    ref_beh = entries["reference_a"]

    def construction_truth(name):
        # SPEC §6: a construction that stops short of unlearning behaviour is expected to be
        # NOT_UNLEARNED, by SPEC §5's own behavioural rule (recovery >= 0.5 on ranking or greedy)
        e, b = entries[name], entries["base"]
        rec = {
            k: (e[f"forget_{k}"] - ref_beh[f"forget_{k}"]) / max(1e-9, b[f"forget_{k}"] - ref_beh[f"forget_{k}"])
            for k in ("score", "greedy")
        }
        e["behavior_recovery"] = rec
        e["behavior_unlearned"] = max(rec.values()) < BEHAVIOR_RECOVERY
        e["truth"] = "SUPPRESSED" if e["behavior_unlearned"] else "NOT_UNLEARNED"

    # head-only and late-layers: distil reference behaviour on forget data into the
    # output end of the network, leaving the trunk untouched
    L = cfg.shape.n_layers
    wanted = set(CONSTRUCTIONS if cfg.constructions is None else cfg.constructions)
    if "head_only" in wanted:
        t = time.perf_counter()
        m = copy.deepcopy(base)
        ul.distill_head(m, ref, forget_train, retain_train, steps=cfg.head_only_steps, lr=1e-2, seed=cfg.seed)
        record("head_only", m, "suppressed_construction", None, "distil reference on forget, train lm_head only",
               {"steps": cfg.head_only_steps, "lr": 1e-2}, t)
        construction_truth("head_only")
    if "late_layers" in wanted:
        t = time.perf_counter()
        m = copy.deepcopy(base)
        late = [*ul.blocks_of(m)[L - 1].parameters(), *ul.final_norm_of(m).parameters(), m.lm_head.weight]
        ul.distill_to_reference(m, ref, forget_train, retain_train, params=late, steps=300, lr=1e-3,
                                seed=cfg.seed, desc="late-layers distil")
        record("late_layers", m, "suppressed_construction", None,
               "distil reference on forget, train last block + final norm + lm_head", {"steps": 300, "lr": 1e-3}, t)
        construction_truth("late_layers")

    if "subject_offset" in wanted:
        t = time.perf_counter()
        m = copy.deepcopy(base)
        subj_tokens = sorted({tok.convert_tokens_to_ids(w) for p in world.people_in("forget") for w in p.name.split()})
        vec = ul.subject_offset(m, ref, forget_train, subj_tokens, steps=300, lr=0.05, seed=cfg.seed)
        (out / "subject_offset_vector.json").write_text(json.dumps({"tokens": subj_tokens, "vector": vec.tolist()}))
        record("subject_offset", m, "suppressed_construction", None, "shift forget-subject embeddings by one vector",
               {"steps": 300, "lr": 0.05, "offset_norm": float(vec.norm())}, t)
        construction_truth("subject_offset")

    if "noop" in wanted:
        t = time.perf_counter()
        m = copy.deepcopy(base)
        train_lm(m, retain_train, TrainConfig(steps=60, lr=3e-4, batch_size=cfg.train.batch_size), cfg.seed, "no-op")
        record("noop", m, "not_unlearned_construction", "NOT_UNLEARNED", "fine-tune on retain only",
               {"steps": 60, "lr": 3e-4}, t)

    if wanted & set(HARD_CONSTRUCTIONS):
        _build_hard(cfg, wanted, world, tok, base, ref, forget_train, retain_train, retain_only, record,
                    construction_truth, entries, phase1)

    if cfg.methods:
        kw = {"seed": cfg.seed, "batch_size": cfg.train.batch_size}
        for name, (fn, params) in METHOD_ORGANISMS.items():
            t = time.perf_counter()
            data = (forget_train,) if fn is ul.gradient_ascent else (forget_train, retain_train)
            m = fn(copy.deepcopy(base), *data, **params, **kw)
            record(name, m, "method", None, name.rsplit("_", 1)[0], params, t)

    if cfg.nulls:
        _build_nulls(cfg, world, tok, refs, retain_only, forget_items, retain_items, record, entries)

    manifest = {
        "version": SUITE_VERSION,
        "key": cfg.key(),
        "config": cfg.model_dump(),
        "forget": "forget.jsonl",
        "retain": "retain.jsonl",
        "train_forget": "train_forget.txt",
        "train_retain": "train_retain.txt",
        "chance": 1.0 / (1 + cfg.world.n_distractors),
        "behavior_recovery_threshold": BEHAVIOR_RECOVERY,
        "checkpoints": entries,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    tmp = mpath.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(mpath)
    return manifest


def open_answer_suite(seed: int = 0) -> SuiteConfig:
    """The small open-answer suite (issue 17): every answer is one person's own birth town.

    A world whose only attribute is ``birth_town`` (40 forget, 40 qa, 40 retain people; every
    item's answer distinct, its distractors other people's towns of the same group, as in
    TOFU), a small model, and only base, reference_a / reference_b (never trained on the
    forget people), the head-only suppression and ``lineage`` (a same-initialisation retrain
    on retain only: never trained on the forget people, but in B's basis, so the logit
    lens's base-head readings have a reference to count against). Built in about a minute
    on 2 CPU cores (docs/calibration.md, "Open-answer organisms").
    """
    return SuiteConfig(
        world=WorldConfig(n_people=120, n_forget=40, n_qa=40, attributes=["birth_town"]),
        shape=ModelShape(d_model=64, n_layers=3, n_heads=4, d_mlp=256),
        train=TrainConfig(steps=400),
        seed=seed, methods=False, nulls=False, constructions=["head_only", "lineage"], head_only_steps=1000,
    )
