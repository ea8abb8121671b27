"""``audit plan``: what an audit will cost, worked out before anything heavy runs.

For each lens of an ``audit run`` (the same :class:`~audit.config.AuditConfig`), the
forward and backward passes it will make, counted from its own config object (relearn
steps × seeds × runs × models, steering settings and controls × sites, quantization
settings, leak@k samples, ...) and the item sets as B's tokenizer reads them; the peak
memory per device (the models held together, plus what the hungriest lens adds: a
fine-tuning copy with its AdamW state, LoRA adapters, a key/value cache, captured
activations); and a time for each, scaled from a short measured forward of B.

Every number is an estimate. A forward pass is one sequence through the model (a
steering or SAE replica run through the blocks after its site counts as one; leak@k
counts every sampled token step); a backward pass is one training sequence. Counts
assume empty caches: scores, activations, relearning runs, SAEs and corpora that an
earlier audit cached are read back instead of recomputed.

This module imports no torch at import time: :func:`make_plan` loads B (and so torch)
for the tokenizer, the model's shape and the measured forward; :func:`plan_from` is the
counting itself, on plain numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from audit.config import AuditConfig
from audit.errors import InputError

if TYPE_CHECKING:
    from audit.items import KnowledgeItem
    from audit.models import LoadedModel

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per weight of each ``--dtype`` (the keys of :data:`audit.models.DTYPES`)."""
FP32 = 4
BACKWARD_COST = 2.0
"""A backward pass costs about two forward passes (6N vs 2N flops per token)."""
ACTIVATIONS_PER_LAYER = 16
"""Values kept per token and layer for a backward pass, in units of ``d_model`` (attention
and MLP inputs, norms, the MLP's wide hidden state; Korthikanti et al. 2022 count ~34
bytes × d_model in fp16)."""
ADAPTER_BYTES = 16
"""Bytes per LoRA adapter weight while training: fp32 weight, gradient and AdamW's two moments."""
STEERING_LOGIT_ELEMENTS = 1 << 28
"""The steering engine bounds one pass to this many logits (tokens × vocabulary)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ModelFacts:
    """The base model's shape, as the counts and the memory estimate read it. U and N share
    it (``audit run`` refuses models of different architectures)."""

    n_params: int
    n_layers: int
    d_model: int
    d_vocab: int
    kv_width: int
    """Width of one layer's keys (and of its values): ``d_model`` × key/value heads / heads."""
    model_type: str = "llama"
    resumable: bool = True
    """Whether steering and SAE edits resume from the cached residual
    (:func:`audit.intervene.resumable`); otherwise every replica runs the whole model."""
    embed_hook: bool = True
    """Whether the model exposes ``hook_embed`` (the steering lens's embedding site)."""
    lora_shapes: tuple[tuple[int, int], ...] = ()
    """``(out, in)`` of every linear layer LoRA adapts (all but the output head)."""
    largest_linear: int = 0
    """Weights of the largest linear layer (quantization edits one at a time)."""



@dataclass(frozen=True)
class SetStats:
    """An item set as B's tokenizer reads it (the one candidate encoding every lens uses)."""

    prompts: tuple[int, ...]
    """Prompt tokens per item."""
    candidates: tuple[tuple[tuple[int, ...], ...], ...]
    """Per item, each candidate's token ids (index 0: the answer)."""
    subjects: tuple[str | None, ...] = ()
    named: tuple[int, ...] = ()
    """Items whose prompt names their subject, in a set of three or more subjects: the items
    the behavior lens reads with the subject replaced (its prior calibration)."""

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def n_subjects(self) -> int:
        return len({s or f"item {i}" for i, s in enumerate(self.subjects)}) if self.subjects else self.n

    def score_lengths(self, idx: Sequence[int] | None = None) -> list[int]:
        """Lengths of the sequences scoring forwards: the prompt alone where every candidate is
        one token (all are read at its last position), else prompt + candidate, each."""
        out: list[int] = []
        for i in range(self.n) if idx is None else idx:
            cands = self.candidates[i]
            if all(len(c) == 1 for c in cands):
                out.append(self.prompts[i])
            else:
                out += [self.prompts[i] + len(c) for c in cands]
        return out

    def candidate_lengths(self, n: int | None = None) -> list[int]:
        """Prompt + candidate, one sequence per candidate (of the first ``n`` items)."""
        return [self.prompts[i] + len(c) for i in range(min(self.n, n or self.n)) for c in self.candidates[i]]

    def multi_token_lengths(self) -> list[int]:
        """Prompt + candidate[:-1] of every multi-token candidate, in items that have one
        (the logit lens reads a long candidate's later tokens teacher-forced)."""
        return [self.prompts[i] + len(c) - 1 for i, cands in enumerate(self.candidates)
                if any(len(c) > 1 for c in cands) for c in cands if len(c) > 1]

    def training_lengths(self) -> list[int]:
        """Prompt followed by its answer (relearning trains on these)."""
        return [p + len(c[0]) for p, c in zip(self.prompts, self.candidates, strict=True)]

    @property
    def max_candidate(self) -> int:
        return max((len(c) for cands in self.candidates for c in cands), default=1)


@dataclass(frozen=True)
class PlanInputs:
    """Everything the counting reads besides the lens configs."""

    facts: ModelFacts
    forget: SetStats
    retain: SetStats
    n_references: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 32
    drop_unknown: bool = False
    bitsandbytes: bool = False
    """Whether bitsandbytes' quantizers can run here (CUDA and the package present)."""
    placeholders: int = 4
    """Names no model saw, per item, in the behavior lens's prior calibration."""
    runtime_bytes: int = 0
    """Host memory of the process before any model loads (Python, torch and the libraries), measured."""
    low_memory: bool = False
    """``--low-memory``: one model's weights resident at a time (each read back when next used)."""

    @property
    def n_models(self) -> int:
        """B, U and every reference."""
        return 2 + self.n_references

    @property
    def n_resident(self) -> int:
        """Models whose weights are held at once: all of them, or one with ``low_memory``."""
        return 1 if self.low_memory else self.n_models

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def model_bytes(self) -> int:
        """One model's weights."""
        return self.facts.n_params * self.weight_bytes


# ----------------------------------------------------------------------------- work


@dataclass
class Work:
    """Passes of one step, and their cost in the units the time estimate scales."""

    forward: int = 0
    """Sequences forwarded."""
    backward: int = 0
    """Sequences back-propagated (training)."""
    steps: int = 0
    """Optimizer steps."""
    tokens: float = 0.0
    """Token positions through the whole model, for time: a partial pass counts its share of
    the blocks, a training step its backward too."""
    calls: float = 0.0
    """Batched model calls, each paying a fixed overhead (reading the weights; a partial pass
    counts its share of the blocks)."""

    def forwards(self, lengths: Sequence[int], batch: int, *, times: int = 1, share: float = 1.0) -> Work:
        """Add ``times`` passes over sequences of ``lengths``, ``batch`` at a time, each
        through ``share`` of the model."""
        n = len(lengths)
        self.forward += times * n
        self.tokens += times * share * sum(lengths)
        self.calls += times * share * math.ceil(n / max(1, batch))
        return self

    def training(self, steps: int, batch: int, length: float) -> Work:
        """Add ``steps`` optimizer steps on ``batch`` sequences of mean ``length``."""
        self.steps += steps
        self.forward += steps * batch
        self.backward += steps * batch
        self.tokens += steps * batch * length * (1 + BACKWARD_COST)
        self.calls += steps * (1 + BACKWARD_COST)
        return self

    def __add__(self, other: Work) -> Work:
        return Work(self.forward + other.forward, self.backward + other.backward, self.steps + other.steps,
                    self.tokens + other.tokens, self.calls + other.calls)


@dataclass
class LensPlan:
    """One row of the plan: a lens (or a step the lenses share) and what it will cost."""

    name: str
    parts: dict[str, Work] = field(default_factory=dict)
    """Its passes by step (e.g. ``sweep`` and ``chosen settings on B and N`` for steering)."""
    counted: str = ""
    """How the passes are counted, in one line."""
    device_bytes: int = 0
    """Held on the models' device at the lens's peak, beyond the loaded models."""
    host_bytes: int = 0
    """Held in host memory at its peak (on a CPU run, the same memory as ``device_bytes``)."""
    persistent_host_bytes: int = 0
    """Host memory it keeps for the rest of the run (shared activations)."""
    uses_scores: bool = False
    """Reads the shared behavioural scores of every model on both sets."""
    uses_activations: bool = False
    """Reads the shared activation capture of every model on both sets."""
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None
    """Estimated wall time (``None`` without a measured forward)."""

    @property
    def work(self) -> Work:
        out = Work()
        for w in self.parts.values():
            out = out + w
        return out


@dataclass(frozen=True)
class Calibration:
    """A short measured forward of B that every time is scaled from."""

    per_call_s: float
    per_token_s: float
    load_s: float
    """Seconds to load B (imports excluded)."""
    measured: str
    """What was timed, in words."""

    def seconds(self, w: Work) -> float:
        return w.calls * self.per_call_s + w.tokens * self.per_token_s


@dataclass
class Plan:
    """What ``audit run`` with one config will do, and cost (estimates)."""

    rows: list[LensPlan]
    """``load``, the shared steps the lenses read (``scores``, ``activations``), then each lens in run order."""
    inputs: PlanInputs
    peak_bytes: dict[str, int]
    """Predicted peak memory per device (``cpu`` holds host memory)."""
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> LensPlan:
        return next(r for r in self.rows if r.name == name)

    @property
    def seconds(self) -> float | None:
        if any(r.seconds is None for r in self.rows):
            return None
        return float(sum(r.seconds or 0.0 for r in self.rows))

    @property
    def work(self) -> Work:
        out = Work()
        for r in self.rows:
            out = out + r.work
        return out

    def summary(self) -> list[str]:
        """The lines printed under the table: models, peak memory, time, and how they were estimated."""
        inp = self.inputs
        f = inp.facts
        held = "B and U" if not inp.n_references else f"B, U and {inp.n_references} reference(s)"
        together = (f"one resident at a time (--low-memory; {held} each read back when next used)" if inp.low_memory
                    else f"loaded together ({held})")
        lines = [f"models: {inp.n_models} {together}, "
                 f"{fmt_count(f.n_params)} parameters each in {inp.dtype}: {fmt_bytes(inp.model_bytes)} each"]
        runtime = (f"the process's own {fmt_bytes(inp.runtime_bytes)} (Python, torch, libraries) included"
                   if inp.runtime_bytes else "the Python/torch runtime not included")
        lines.append("peak memory (estimate): " + ", ".join(f"{d} {fmt_bytes(b)}" for d, b in self.peak_bytes.items())
                     + f" ({runtime})")
        c = self.calibration
        if c is not None and self.seconds is not None:
            lines.append(f"time (estimate): {fmt_seconds(self.seconds)}, scaled from {c.measured}: "
                         f"{fmt_duration(c.per_call_s)} per call + {fmt_duration(c.per_token_s)} per token; "
                         f"loading B took {fmt_duration(c.load_s)}")
        return lines + self.notes


# ---------------------------------------------------------------------- counting


Counter = Callable[[PlanInputs, Any], LensPlan]
COUNTERS: dict[str, Counter] = {}
"""Lens name -> the function counting its passes from its config (``(inputs, config) -> LensPlan``)."""


def counts(name: str) -> Callable[[Counter], Counter]:
    """Register the pass counter of lens ``name``."""

    def deco(fn: Counter) -> Counter:
        COUNTERS[name] = fn
        return fn

    return deco


def _logits_bytes(inp: PlanInputs, tokens: int) -> int:
    """Logits of ``tokens`` positions in the weights' dtype, then in fp32 with their log-softmax."""
    return tokens * inp.facts.d_vocab * (inp.weight_bytes + 2 * FP32)


def _scoring_bytes(inp: PlanInputs, lengths: Sequence[int], batch: int) -> int:
    return _logits_bytes(inp, min(batch, len(lengths)) * max(lengths, default=0))


def _training_bytes(inp: PlanInputs, batch: int, length: int) -> int:
    """Activations a backward pass needs for one batch, and the fp32 logits and their gradient."""
    f = inp.facts
    tokens = batch * length
    return tokens * f.n_layers * ACTIVATIONS_PER_LAYER * f.d_model * inp.weight_bytes + tokens * f.d_vocab * FP32 * 2


def _both(inp: PlanInputs) -> list[int]:
    return inp.forget.score_lengths() + inp.retain.score_lengths()


def scores_row(inp: PlanInputs) -> LensPlan:
    """The behavioural scores of every model on both sets, computed once and shared."""
    w = Work().forwards(_both(inp), inp.batch_size, times=inp.n_models)
    row = LensPlan("scores (shared)", {"score": w},
                   f"{inp.n_models} models × ({inp.forget.n} forget + {inp.retain.n} retain items)",
                   device_bytes=_scoring_bytes(inp, _both(inp), inp.batch_size))
    if inp.drop_unknown:
        row.parts["drop unknown"] = Work().forwards(_both(inp), inp.batch_size)
        row.notes.append("--drop-unknown: B scores both sets once more first; counts assume every item is kept")
    return row


def activations_row(inp: PlanInputs) -> LensPlan:
    """Every layer's residual of every model on both sets' prompts, captured once and shared."""
    f = inp.facts
    prompts = list(inp.forget.prompts + inp.retain.prompts)
    w = Work().forwards(prompts, inp.batch_size, times=inp.n_models)
    held = inp.n_models * len(prompts) * f.n_layers * f.d_model * FP32 * 2  # last token and mean, per layer
    batch = min(inp.batch_size, len(prompts)) * max(prompts, default=0)
    return LensPlan("activations (shared)", {"capture": w},
                    f"{inp.n_models} models × ({inp.forget.n} + {inp.retain.n} prompts), every layer",
                    device_bytes=batch * f.n_layers * f.d_model * inp.weight_bytes, persistent_host_bytes=held)


@counts("behavior")
def _behavior(inp: PlanInputs, cfg: Any) -> LensPlan:
    row = LensPlan("behavior", uses_scores=True)
    named = inp.forget.named if cfg.prior_calibration else ()
    if named:
        lengths = inp.forget.score_lengths(named) * inp.placeholders
        row.parts["prior calibration"] = Work().forwards(lengths, inp.batch_size, times=inp.n_models)
        row.device_bytes = _scoring_bytes(inp, lengths, inp.batch_size)
        row.counted = (f"{inp.n_models} models × {len(named)} items × {inp.placeholders} subjects no model saw; "
                       "the shared scores besides")
    else:
        row.counted = "reads the shared scores"
    return row


def _closed_set(inp: PlanInputs, min_share: float) -> bool:
    """Whether the answers repeat enough for the linear probe's classifier (its ``auto``
    choice): the retain answers cover the forget answers, or other subjects' forget answers do."""
    ans = [c[0] for c in inp.forget.candidates]
    if not ans:
        return False
    retain = {c[0] for c in inp.retain.candidates}
    if len(retain) >= 2 and sum(a in retain for a in ans) / len(ans) >= min_share:
        return True
    subj = [s or f"item {i}" for i, s in enumerate(inp.forget.subjects or (None,) * len(ans))]
    by: dict[tuple[int, ...], set[Any]] = {}
    for a, s in zip(ans, subj, strict=True):
        by.setdefault(a, set()).add(s)
    return inp.forget.n_subjects >= 2 and sum(len(by[a]) > 1 for a in ans) / len(ans) >= min_share


@counts("linear_probe")
def _linear_probe(inp: PlanInputs, cfg: Any) -> LensPlan:
    read_out = cfg.read_out
    if read_out == "auto":
        read_out = "classifier" if _closed_set(inp, cfg.min_closed_share) else "truth_probe"
    if read_out == "classifier":
        return LensPlan("linear_probe", counted="classifier: logistic probes per layer on the shared activations "
                        f"({cfg.n_shuffles} shuffled controls per scheme; CPU fitting time not estimated)",
                        uses_activations=True)
    f = inp.facts
    w = Work()
    rows = 0
    for s in (inp.forget, inp.retain):
        lengths = s.candidate_lengths(cfg.max_items)
        rows += len(lengths)
        if cfg.truth_features in ("both", "candidate"):
            w.forwards(lengths, inp.batch_size, times=inp.n_models)
        if cfg.truth_features in ("both", "interaction"):
            w.forwards(s.prompts[: cfg.max_items], inp.batch_size, times=inp.n_models)
    n_f, n_r = min(inp.forget.n, cfg.max_items), min(inp.retain.n, cfg.max_items)
    return LensPlan("linear_probe", {"truth probe": w},
                    f"truth probe: {inp.n_models} models × ({n_f} forget + {n_r} retain items) × each candidate",
                    host_bytes=inp.n_models * rows * f.n_layers * f.d_model * FP32)


@counts("logit_lens")
def _logit_lens(inp: PlanInputs, cfg: Any) -> LensPlan:
    f = inp.facts
    fl, rl = inp.forget.multi_token_lengths(), inp.retain.multi_token_lengths()
    w = Work()
    # each model's own head, and every model but B through B's head; the retain check of B's basis
    w.forwards(fl, inp.batch_size, times=2 * inp.n_models - 1)
    w.forwards(rl, inp.batch_size, times=inp.n_models)
    counted = "the shared activations through each layer's unembedding"
    if fl or rl:
        counted += (f"; multi-token candidates teacher-forced: {len(fl)} forget and {len(rl)} retain sequences "
                    f"× {inp.n_models} models (forget twice but for B: its own head and B's)")
    longest = max(fl + rl, default=0)
    return LensPlan("logit_lens", {"multi-token candidates": w} if fl or rl else {}, counted,
                    device_bytes=min(inp.batch_size, len(fl + rl)) * longest * f.n_layers * f.d_model
                    * inp.weight_bytes, uses_scores=True, uses_activations=True)


@counts("similarity")
def _similarity(inp: PlanInputs, cfg: Any) -> LensPlan:
    return LensPlan("similarity", counted="linear CKA on the shared activations (CPU)", uses_activations=True)


@counts("parametric")
def _parametric(inp: PlanInputs, cfg: Any) -> LensPlan:
    f = inp.facts
    prompts = list(inp.forget.prompts) + list(inp.retain.prompts)
    w = Work().forwards(prompts, inp.batch_size, times=inp.n_models)
    d_mlp = 4 * f.d_model  # not in ModelFacts: the usual MLP width
    # every value vector's activation per item, and its logit on each candidate of an item chunk (fp32)
    held = max(inp.forget.n, inp.retain.n) * f.n_layers * d_mlp * FP32 + (1 << 24) * FP32 * 3
    return LensPlan("parametric", {"MLP activations": w},
                    f"one forward of every prompt per model (MLP activations at the last token), {inp.n_models} "
                    "models; the rest from the weights", device_bytes=0, host_bytes=held)


def _per_pass(inp: PlanInputs, budget_tokens: int) -> int:
    """Sequences of one edit pass: the engine fits ``budget_tokens`` into a pass, at the longest sequence."""
    longest = max(inp.forget.score_lengths() + inp.retain.score_lengths(), default=1)
    return max(1, budget_tokens // longest)


def _share_after(facts: ModelFacts, layer: int | None) -> float:
    """Share of the model a replica edited after block ``layer`` runs through: the blocks after
    it when the forward resumes from the cached residual, else all (``None``: the embedding)."""
    if layer is None or not facts.resumable:
        return 1.0
    return (facts.n_layers - layer - 1) / facts.n_layers


def _sweep(inp: PlanInputs, layer: int | None, replicas_f: int, replicas_r: int, folds: int,
           per_pass: int) -> Work:
    """Passes of an intervention sweep at one site: every forget sequence under ``replicas_f``
    edits (the settings and their controls) and every retain sequence under ``replicas_r``
    (the settings), each fold's items under the directions fitted on the other folds, the
    replicas of a sequence side by side in one pass; ``layer``: the block the site follows
    (``None``: the embedding)."""
    w = Work()
    resumed = layer is not None and inp.facts.resumable
    for lengths, k in ((inp.forget.score_lengths(), replicas_f), (inp.retain.score_lengths(), replicas_r)):
        if not k or not lengths:
            continue
        if resumed:  # the prompts forwarded once, every replica resumed from the residual after the site
            w.forwards(lengths, per_pass)
        share = _share_after(inp.facts, layer)
        w.forward += k * len(lengths)
        w.tokens += k * share * sum(lengths)
        w.calls += share * (math.ceil(k * len(lengths) / per_pass) + folds - 1)  # each fold is its own batch
    return w


def _chosen(inp: PlanInputs, layers: Sequence[int | None], per_pass: int) -> Work:
    """The chosen edit of each fold applied to B and every reference, once per forget sequence,
    at the costliest of the sites it may be chosen at (an upper bound)."""
    ends = 1 + inp.n_references
    fs = inp.forget.score_lengths()
    share = max((_share_after(inp.facts, x) for x in layers), default=1.0)
    w = Work()
    if inp.facts.resumable and None not in layers:
        w.forwards(fs, per_pass, times=ends)
    w.forward += ends * len(fs)
    w.tokens += ends * share * sum(fs)
    w.calls += ends * share * math.ceil(len(fs) / per_pass)
    return w


def _edit_bytes(inp: PlanInputs, per_pass: int, full: bool) -> int:
    """One edit pass: the replicas' residual stream (a few copies in fp32), and with ``full``
    forwards the logits of every position."""
    longest = max(inp.forget.score_lengths() + inp.retain.score_lengths(), default=1)
    tokens = per_pass * longest
    return tokens * inp.facts.d_model * FP32 * 6 + (tokens * inp.facts.d_vocab * inp.weight_bytes if full else 0)


def steering_sites(cfg: Any, facts: ModelFacts) -> list[int | None]:
    """The steering lens's sites: the blocks it steers after (``None``: the embedding output)."""
    layers = [x for x in cfg.blocks(facts.n_layers) if 0 <= x < facts.n_layers]
    return ([None] if cfg.embed and facts.embed_hook else []) + layers


def steering_settings(cfg: Any) -> tuple[int, int]:
    """(settings, control sets) of one steering site: each direction × pooling in its ablation
    form and at every additive scale (both signs for the base-free direction); one set of
    ``n_controls`` random directions per additive scale, and one for ablation."""
    recipes = cfg.recipes()
    return len(recipes), len({(form, abs(scale)) for _, _, form, scale in recipes})


@counts("steering")
def _steering(inp: PlanInputs, cfg: Any) -> LensPlan:
    f = inp.facts
    sites = steering_sites(cfg, f)
    settings, keys = steering_settings(cfg)
    replicas = settings + keys * cfg.n_controls
    per_pass = _per_pass(inp, max(1, min(cfg.tokens_per_pass, STEERING_LOGIT_ELEMENTS // max(1, f.d_vocab))))
    sweep = Work()
    for layer in sites:
        sweep = sweep + _sweep(inp, layer, replicas, settings, cfg.folds, per_pass)
    chosen = _chosen(inp, sites, per_pass)
    names = ["embed" if x is None else f"L{x}" for x in sites]
    full_site = None in sites or not f.resumable
    return LensPlan(
        "steering", {"sweep": sweep, "chosen on B and N": chosen},
        f"{len(sites)} sites ({', '.join(names)}) × ({settings} settings + {keys} × {cfg.n_controls} controls) "
        f"× {len(inp.forget.score_lengths())} forget sequences; {settings} settings × "
        f"{len(inp.retain.score_lengths())} retain",
        device_bytes=_edit_bytes(inp, per_pass, full_site),
        uses_scores=True, uses_activations=any(x is not None for x in sites),
        notes=["steering: the chosen settings' passes on B are an upper bound (B's own base-minus-unlearned "
               "direction is no edit)"])


@counts("sae")
def _sae(inp: PlanInputs, cfg: Any) -> LensPlan:
    f = inp.facts
    layer = cfg.layer if cfg.layer is not None and 0 <= cfg.layer < f.n_layers else f.n_layers // 2
    to_site = (layer + 1) / f.n_layers  # activations are read with the forward stopped after the site
    d_sae = cfg.expansion * f.d_model
    prompts = list(inp.forget.prompts + inp.retain.prompts)
    parts: dict[str, Work] = {}
    host = 0
    notes = []
    if cfg.sae_path is None:
        train = Work()
        seqs = list(prompts)
        if not cfg.text and cfg.corpus_tokens:
            n_seq = -(-cfg.corpus_tokens // cfg.corpus_length)
            # one token per step, every sequence of a batch in lock step, from a key/value cache
            train.forward += n_seq * cfg.corpus_length
            train.tokens += n_seq * cfg.corpus_length
            train.calls += -(-n_seq // cfg.corpus_batch) * cfg.corpus_length
            seqs += [cfg.corpus_length + 4] * n_seq
        elif cfg.text:
            notes.append("sae: the training text files are not counted")
        train.forwards(seqs, inp.batch_size, share=to_site)
        n_tokens = sum(s - 1 for s in seqs)
        samples = max(cfg.train_batch, min(cfg.train_samples, int(cfg.max_epochs * n_tokens)))
        # SAE steps are not model passes: their time in model-token equivalents (12 d·d_sae flops per
        # sample for encoder and decoder, forward and backward, against 2 flops per parameter per token)
        train.tokens += samples * 6 * f.d_model * d_sae / max(1, f.n_params)
        parts["corpus and SAE training"] = train
        host = n_tokens * f.d_model * FP32
        notes.append("sae: an SAE (and corpus) cached by an earlier run for the same model, layer and settings is "
                     "not trained (sampled) again")
    else:
        parts["SAE quality"] = Work().forwards(prompts, inp.batch_size, share=to_site)
    codes = Work().forwards(inp.forget.prompts, inp.batch_size, times=inp.n_models, share=to_site)
    codes.forwards(inp.retain.prompts, inp.batch_size, share=to_site)
    parts["codes"] = codes
    scales = len({float(s) for s in cfg.scales if s > 0})
    per_pass = _per_pass(inp, cfg.tokens_per_pass)
    parts["restoration sweep"] = _sweep(inp, layer, scales * (1 + cfg.n_controls), scales, cfg.folds, per_pass)
    parts["chosen on B and N"] = _chosen(inp, [layer], per_pass)
    code_tokens = (inp.n_models * sum(inp.forget.prompts) + sum(inp.retain.prompts)) * d_sae * FP32
    return LensPlan(
        "sae", parts,
        f"SAE at L{layer} ({'loaded' if cfg.sae_path else 'trained, unless cached'}); {scales} scales × "
        f"(1 + {cfg.n_controls} controls) × {len(inp.forget.score_lengths())} forget sequences",
        device_bytes=2 * f.d_model * d_sae * FP32 * (1 if cfg.sae_path else 4) + _edit_bytes(inp, per_pass, False),
        host_bytes=max(host, code_tokens), uses_scores=True, notes=notes)


@counts("quantization")
def _quantization(inp: PlanInputs, cfg: Any) -> LensPlan:
    rtn = len(set(cfg.schemes)) * len(set(cfg.bits))
    bnb = 3 if cfg.bitsandbytes and inp.bitsandbytes else 0
    fs = inp.forget.score_lengths()
    w = Work().forwards(fs, inp.batch_size, times=(rtn + bnb) * inp.n_models)
    return LensPlan(
        "quantization", {"score quantized": w},
        f"{rtn + bnb} settings ({rtn} RTN{f' + {bnb} bitsandbytes' if bnb else ''}) × {inp.n_models} models × "
        f"{inp.forget.n} forget items",
        # in place, one weight at a time: its fp32 copy, the quantized one and their fp64 difference
        device_bytes=inp.facts.largest_linear * (2 * FP32 + 8) + _scoring_bytes(inp, fs, inp.batch_size),
        uses_scores=True,
        notes=["quantization: weights are quantized in place and read back from the checkpoint (one more model "
               "in memory where its safetensors do not hold them as loaded)"])


def relearn_method(cfg: Any, n_params: int) -> str:
    """``full`` or ``lora``, as the relearn lens resolves ``method: auto`` (by model size)."""
    if cfg.method != "auto":
        return str(cfg.method)
    return "lora" if n_params > cfg.lora_above else "full"


@counts("relearn")
def _relearn(inp: PlanInputs, cfg: Any) -> LensPlan:
    f = inp.facts
    steps = sorted({s for s in cfg.steps if s > 0})
    budget = steps[-1] if steps else 0
    fg, rt = inp.forget, inp.retain
    # halves A and B by subject (the lens shuffles subjects with the seed and halves them)
    n_a = round(fg.n * (fg.n_subjects // 2) / max(1, fg.n_subjects))
    n_b = fg.n - n_a
    n_train_r = min(cfg.retain_examples, max(1, rt.n // 2))
    side = min(cfg.side_effect_items, max(0, rt.n - n_train_r))
    runs: list[tuple[str, int, int, list[int]]] = [("A→B", n_a, n_b, fg.training_lengths())]
    if cfg.folds == 2:
        runs.append(("B→A", n_b, n_a, fg.training_lengths()))
    if cfg.retain_variant:
        runs.append(("retain", n_train_r, fg.n, rt.training_lengths()))
    per_item = len(fg.score_lengths()) / max(1, fg.n)
    score_len = sum(fg.score_lengths()) / max(1, len(fg.score_lengths()))
    side_len = sum(rt.score_lengths()) / max(1, len(rt.score_lengths()))
    train, evals = Work(), Work()
    longest = max(fg.training_lengths() + rt.training_lengths(), default=1)
    batch_max = 0
    for _, n_train, n_scored, lengths in runs:
        batch = min(cfg.batch_size, n_train)
        batch_max = max(batch_max, batch)
        mean = sum(lengths) / max(1, len(lengths))
        for role in range(inp.n_models):
            train.training(budget * cfg.seeds, batch, mean)
            n_eval = round(n_scored * per_item) + (side if role == 1 else 0)  # only U is scored on retain
            length = (n_scored * per_item * score_len + (side * side_len if role == 1 else 0)) / max(1, n_eval)
            evals.forwards([round(length)] * n_eval, inp.batch_size, times=len(steps) * cfg.seeds)
    method = relearn_method(cfg, f.n_params)
    if method == "full":
        state = 4 * inp.model_bytes  # a copy of the model, its gradient and AdamW's two moments
    else:
        state = sum(cfg.lora.rank * (o + i) for o, i in f.lora_shapes) * ADAPTER_BYTES
    return LensPlan(
        "relearn", {"fine-tune": train, "score": evals},
        f"{len(runs)} runs ({', '.join(r[0] for r in runs)}) × {cfg.seeds} seeds × {inp.n_models} models × "
        f"{budget} steps of ≤ {cfg.batch_size} ({method}), scored at {len(steps)} step counts",
        device_bytes=state + _training_bytes(inp, batch_max, longest), uses_scores=True)


@counts("prompt_attacks")
def _prompt_attacks(inp: PlanInputs, cfg: Any) -> LensPlan:
    fg, rt = inp.forget, inp.retain

    def text(s: str) -> int:  # template text, about four characters a token
        return max(1, math.ceil(len(s) / 4))

    shots = round(cfg.shots * (sum(fg.training_lengths()) / max(1, fg.n) + 1))
    extra = {"answer_forcing": text(cfg.forcing_prefix), "question_form": text(cfg.question_template),
             "multiple_choice": text(cfg.options_template) + round(sum(len(c) for cs in fg.candidates for c in cs)
                                                                   / max(1, fg.n)),
             "in_context": shots}
    conditions = [("no attack", 0, False)] + [(a, extra[a], True) for a in dict.fromkeys(cfg.attacks)]
    if "in_context" in cfg.attacks and rt.n:
        conditions.append(("retain shots", round(cfg.shots * (sum(rt.training_lengths()) / max(1, rt.n) + 1)), False))
    named = fg.named if cfg.prior_calibration else ()
    w, longest = Work(), []
    for name, more, side in conditions:
        own = [] if name == "no attack" else fg.score_lengths()  # the plain prompts are the shared scores
        lengths = [x + more for x in own + fg.score_lengths(named) * min(cfg.placeholders, inp.placeholders)]
        if side:
            lengths += [x + more for x in rt.score_lengths()]
        w.forwards(lengths, inp.batch_size, times=inp.n_models)
        longest.append(max(lengths, default=0))
    return LensPlan(
        "prompt_attacks", {"score attacked prompts": w},
        f"{len(conditions)} conditions × {inp.n_models} models × ({fg.n} forget items + {len(named)} × "
        f"{min(cfg.placeholders, inp.placeholders)} with the subject replaced + {rt.n} retain items)",
        device_bytes=_logits_bytes(inp, min(inp.batch_size, w.forward) * max(longest, default=0)), uses_scores=True,
        notes=["prompt_attacks: the question form is counted as run; it is skipped where the items carry no question"])


@counts("leak_at_k")
def _leak_at_k(inp: PlanInputs, cfg: Any) -> LensPlan:
    f = inp.facts
    fg = inp.forget
    new = cfg.max_new_tokens or fg.max_candidate + 2
    per_batch = max(1, cfg.max_batch_sequences // cfg.n)
    w = Work().forwards(fg.prompts, per_batch, times=inp.n_models)  # each prompt once; its cache repeated n times
    decode = fg.n * cfg.n * (new - 1)  # then one token per step, every sample in lock step
    w.forward += inp.n_models * decode
    w.tokens += inp.n_models * decode
    w.calls += inp.n_models * -(-fg.n // per_batch) * (new - 1)
    rows = min(fg.n, per_batch) * cfg.n
    longest = max(fg.prompts, default=0)
    kv = rows * (longest + new) * f.n_layers * 2 * f.kv_width * inp.weight_bytes
    return LensPlan(
        "leak_at_k", {"sample": w},
        f"{inp.n_models} models × {fg.n} prompts × {cfg.n} samples × {new} tokens",
        device_bytes=kv + rows * f.d_vocab * FP32 * 3 + min(fg.n, per_batch) * longest * f.d_vocab * inp.weight_bytes,
        uses_scores=True)


@counts("mia")
def _mia(inp: PlanInputs, cfg: Any) -> LensPlan:
    # one text per (item, value): the answer and up to 2 × rounds other items' answers; a set
    # whose answers are all one token forwards each prompt once and reads every value at its end
    lengths: list[int] = []
    for s in (inp.forget, inp.retain):
        answers = [len(c[0]) for c in s.candidates]
        if all(a == 1 for a in answers):
            lengths += list(s.prompts)
            continue
        texts = 1 + min(2 * cfg.rounds, max(0, s.n - 1))
        mean_answer = round(sum(answers) / max(1, len(answers)))
        lengths += [p + mean_answer for p in s.prompts for _ in range(texts)]
    w = Work().forwards(lengths, inp.batch_size, times=inp.n_models)
    tokens = min(inp.batch_size, len(lengths)) * max(lengths, default=0)
    return LensPlan("mia", {"texts": w}, f"{inp.n_models} models × {len(lengths)} texts (true and answer-swapped)",
                    device_bytes=_logits_bytes(inp, tokens) + tokens * inp.facts.d_vocab * FP32)


def plan_from(inputs: PlanInputs, lens_configs: dict[str, Any], calibration: Calibration | None = None) -> Plan:
    """The plan of an audit running ``lens_configs`` (lens name -> its config, in run order) on
    ``inputs``, timed by ``calibration`` when given. Pure counting: no model, no torch.

    A lens without a registered counter gets a row that says it was not estimated.
    """
    lenses: list[LensPlan] = []
    for name, cfg in lens_configs.items():
        counter = COUNTERS.get(name)
        if counter is None:
            lenses.append(LensPlan(name, counted="not estimated: no pass counter for this lens"))
        else:
            lenses.append(counter(inputs, cfg))
    rows = [LensPlan("load models", counted=f"{inputs.n_models} checkpoints")]
    if any(r.uses_scores for r in lenses):
        rows.append(scores_row(inputs))
    if any(r.uses_activations for r in lenses):
        rows.append(activations_row(inputs))
    rows += lenses
    notes = [n for r in rows for n in r.notes]
    notes.append("counts assume empty caches: scores, activations, relearning runs and SAEs cached by an earlier "
                 "audit are read back, not recomputed; times leave out CPU-only fitting (probes, CKA)")
    if inputs.low_memory:
        notes.append("--low-memory: each switch from one model's passes to another's reads the weights again; "
                     "the load time counts the first read of each model only")
    if calibration is not None:
        for r in rows:
            r.seconds = calibration.seconds(r.work)
        rows[0].seconds = calibration.load_s * inputs.n_models
    return Plan(rows, inputs, peak_memory(inputs, rows), calibration, notes)


def peak_memory(inp: PlanInputs, rows: Sequence[LensPlan]) -> dict[str, int]:
    """Predicted peak bytes per device: the loaded models plus the hungriest step on the
    models' device; the shared activations and the hungriest step's host arrays on the host."""
    resident = inp.n_resident * inp.model_bytes
    kept = inp.runtime_bytes + sum(r.persistent_host_bytes for r in rows)
    dev = inp.device.split(":")[0]
    if dev == "cpu":
        return {"cpu": resident + kept + max((r.device_bytes + r.host_bytes for r in rows), default=0)}
    return {inp.device: resident + max((r.device_bytes for r in rows), default=0),
            "cpu": kept + max((r.host_bytes for r in rows), default=0)}


# ------------------------------------------------------------------- measuring


def set_stats(tokenizer: Any, items: Sequence[KnowledgeItem]) -> SetStats:
    """An item set's token counts through the one candidate encoding (:func:`audit.scoring.encode_items`)."""
    from audit.scoring import encode_items

    enc = encode_items(tokenizer, items)
    subjects = tuple(it.subject for it in items)
    pool = {s.strip() for s in subjects if s and s.strip()}
    named = tuple(i for i, it in enumerate(items) if len(pool) >= 3 and it.subject and it.subject.strip()
                  and it.subject.strip() in it.prompt)
    return SetStats(tuple(len(p) for p in enc.prompts), tuple(tuple(tuple(c) for c in row) for row in enc.candidates),
                    subjects, named)


def model_facts(model: LoadedModel) -> ModelFacts:
    """The shape of a loaded model."""
    from torch import nn

    from audit.intervene import resumable

    hf = model.hf
    cfg = hf.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    linears = [m for m in hf.modules() if isinstance(m, nn.Linear)]
    return ModelFacts(
        n_params=model.n_params, n_layers=model.n_layers, d_model=model.d_model,
        d_vocab=int(model.bridge.cfg.d_vocab),
        kv_width=model.d_model * int(kv_heads) // int(heads) if heads and kv_heads else model.d_model,
        model_type=str(getattr(cfg, "model_type", "")), resumable=resumable(model) is not None,
        embed_hook="hook_embed" in model.bridge.hook_dict,
        lora_shapes=tuple((m.out_features, m.in_features) for m in linears if m is not head),
        largest_linear=max((m.weight.numel() for m in linears), default=0))


def measure_forward(model: LoadedModel, seqs: Sequence[Sequence[int]], batch_size: int, load_s: float) -> Calibration:
    """Time B's forward on one sequence and on a batch of a few (after a warm-up), and split
    the time into a cost per call and a cost per token."""
    import torch

    from audit.scoring import pad_batch, pad_id_of

    if not seqs:
        raise InputError("the forget set has no items to time a forward pass on")
    pad = pad_id_of(model.tokenizer)
    cuda = str(model.device).startswith("cuda")

    def timed(batch: Sequence[Sequence[int]], reps: int) -> tuple[float, int]:
        ids, mask = pad_batch(batch, pad, model.device)
        best = math.inf
        for _ in range(reps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                model.forward(ids, mask)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best, int(ids.numel())

    k = max(1, min(batch_size, len(seqs), 8))
    timed(seqs[:1], 1)  # warm-up: first calls pay for lazy initialisation
    t1, n1 = timed(seqs[:1], 3)
    tk, nk = timed(seqs[:k], 2)
    per_token = max(0.0, (tk - t1) / (nk - n1)) if nk > n1 else 0.0
    per_call = max(0.0, t1 - per_token * n1)
    if per_token == 0.0 and per_call == 0.0:
        per_call = t1
    return Calibration(per_call, per_token, load_s,
                       f"a measured forward of B on 1 and {k} sequences ({nk} tokens) on {model.device}")


def _bitsandbytes() -> bool:
    import importlib.util

    import torch

    return bool(torch.cuda.is_available()) and importlib.util.find_spec("bitsandbytes") is not None


def make_plan(config: AuditConfig, *, measure: bool = True) -> Plan:
    """The plan of ``audit run`` with ``config``: loads the item sets and B (nothing else),
    counts every lens's passes, predicts peak memory and, with ``measure``, times a short
    forward of B to estimate the time. Call it on a config from :func:`audit.config.load_config`.

    Library warnings raised meanwhile are not printed (:func:`audit.quiet.quiet_warnings`;
    the run records the same ones when it loads the models).

    Raises:
        InputError: what ``audit run`` would refuse before its first lens: unknown lenses or
            options, unreadable items, too few forget items for the policy, a checkpoint that
            does not load.
    """
    from audit.quiet import quiet_warnings

    with quiet_warnings():
        return _make_plan(config, measure)


def _make_plan(config: AuditConfig, measure: bool) -> Plan:
    import gc

    from audit.context import PRIOR_PLACEHOLDERS
    from audit.models import load_model
    from audit.policy import load_policy
    from audit.prepare import prepare_for_model
    from audit.registry import expand_lenses, get_lens
    from audit.run import load_items
    from audit.scoring import encode_items

    policy = load_policy(config.policy)
    lens_cfgs = {}
    for name in expand_lenses(config.lenses):
        spec = get_lens(name)
        lens_cfgs[name] = spec.make_config(config.lens_options.get(name) or {})
    sets, items = load_items(config)
    if len(items["forget"]) < policy.min_items:
        raise InputError(f"the forget set has {len(items['forget'])} items; the policy requires at least "
                         f"{policy.min_items} (set min_items in a policy file to change it)")
    import transformer_lens.model_bridge  # noqa: F401  (imports are not part of the load time measured)

    runtime = _rss_bytes()
    t = time.perf_counter()
    base = load_model(config.base, "base", device=config.device, dtype=config.dtype,
                      allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    load_s = time.perf_counter() - t
    try:
        items = prepare_for_model(sets, items, base, chat_template=config.chat_template, drop_unknown=False,
                                  batch_size=config.batch_size)
        stats = {k: set_stats(base.tokenizer, v) for k, v in items.items()}
        inputs = PlanInputs(model_facts(base), stats["forget"], stats["retain"], n_references=len(config.references),
                            dtype=config.dtype, device=config.device, batch_size=config.batch_size,
                            drop_unknown=config.drop_unknown, bitsandbytes=_bitsandbytes(),
                            placeholders=PRIOR_PLACEHOLDERS, runtime_bytes=runtime, low_memory=config.low_memory)
        calibration = None
        if measure:
            enc = encode_items(base.tokenizer, items["forget"])
            seqs = [p if all(len(c) == 1 for c in cs) else p + cs[0] for p, cs in zip(enc.prompts, enc.candidates,
                                                                                     strict=True)]
            calibration = measure_forward(base, seqs, config.batch_size, load_s)
    finally:
        del base
        gc.collect()
        _free_device_cache(config.device)
    plan = plan_from(inputs, lens_cfgs, calibration)
    if config.resume:
        plan.notes.append("--resume: lenses completed by the interrupted run are read back, not run again")
    return plan


def _rss_bytes() -> int:
    """The process's resident memory so far (its peak: nothing large has been freed yet); 0 where unknown."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return int(peak) * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


def _free_device_cache(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# ------------------------------------------------------------------ formatting


def fmt_count(n: float) -> str:
    """A count for a table: ``12,345`` up to a million, then ``1.2M`` / ``3.4G``."""
    if n < 1e6:
        return f"{int(round(n)):,}"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def fmt_bytes(n: float) -> str:
    """Bytes in binary units: ``512 B``, ``3.2 MiB``, ``1.5 GiB``."""
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def fmt_duration(s: float) -> str:
    """A measured duration: ``390 ms``, ``3.6 ms``, ``12 µs``, ``1.4 s``."""
    for unit, div in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= div:
            v = s / div
            return f"{v:.0f} {unit}" if v >= 10 else f"{v:.2g} {unit}"
    return f"{s * 1e9:.0f} ns"


def fmt_seconds(s: float) -> str:
    """A duration as an estimate: ``~0.4 s``, ``~35 s``, ``~4.2 min``, ``~1.3 h``."""
    if s < 10:
        return f"~{s:.1f} s"
    if s < 120:
        return f"~{s:.0f} s"
    if s < 7200:
        return f"~{s / 60:.1f} min"
    return f"~{s / 3600:.1f} h"
