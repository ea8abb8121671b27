"""Every lens's config model and data model, in one torch-free module (issue 20).

A lens (``probes/<name>.py``, which may import torch) is registered with three things:
its function, its **config model** (the options it takes, validated before a run) and its
**data model** (what it writes to ``LensResult.data``). The two models live here, one
section per lens, so that ``reports/``, ``audit report`` and the verdict can validate and
read a saved result without torch. :data:`LENS_MODELS` pairs each built-in lens's name
with its two models; ``register_lens`` checks a lens against it.

On disk ``LensResult.data`` stays a plain JSON object (old logs still read); readers turn
it into the lens's data model with :func:`lens_data`. Models read leniently: every field
the report or the verdict does not need has a default, and unknown keys are kept, so a
log written before a field existed, or after one was added, still reads. Lenses are held
to the model strictly: :func:`check_lens_data` (run on every result an audit produces)
also refuses keys the model does not declare.

``per_item`` is the one field every data model shares: per-item scores of each reading,
by role, from which the verdict re-scores concept groups (``audit/verdict.py``). A lens
that cannot have them says why in its model's ``no_per_item``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from audit.errors import validation_message
from audit.schema import Recovery

if TYPE_CHECKING:
    from pathlib import Path

    from audit.items import KnowledgeItem
    from audit.schema import AuditLog, LensResult

ROLE_KEY = r"base|unlearned|reference(?:_\d+)?"
"""A model's role as a key: ``base``, ``unlearned``, ``reference``, ``reference_2`` ..."""


# ======================================================================= shared pieces


class LensConfig(BaseModel):
    """Base of every lens's config: unknown options are errors."""

    model_config = ConfigDict(extra="forbid")


class Record(BaseModel):
    """A part of a lens's data. Unknown keys are kept when read (older or newer logs);
    :func:`check_lens_data` refuses the ones a lens writes that its model does not declare.

    A record whose keys include models' roles (``base``, ``reference_2`` ...) declares them
    with ``extra_keys`` (a regular expression a key must match in full) and ``extra_type``
    (what each such value must be); those keys are validated and read with :meth:`extras`.
    """

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    extra_keys: ClassVar[str | None] = None
    extra_type: ClassVar[Any] = Any

    @model_validator(mode="after")
    def _validate_extras(self) -> Record:
        pattern, extra = type(self).extra_keys, self.__pydantic_extra__
        if pattern is not None and extra:
            adapter = _adapter(type(self).extra_type)
            for k, v in extra.items():
                if re.fullmatch(pattern, k):
                    extra[k] = adapter.validate_python(v)
        return self

    def extras(self) -> dict[str, Any]:
        """The declared extra keys (those matching ``extra_keys``) and their values, in order."""
        pattern = type(self).extra_keys
        return {k: v for k, v in (self.__pydantic_extra__ or {}).items()
                if pattern is not None and re.fullmatch(pattern, k)}


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    key = repr(tp)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(tp)
    return _ADAPTERS[key]


class PerItem(Record):
    """Per-item scores of a lens's readings, for re-scoring concept groups.

    ``readings[reading][role]`` holds one score per item of ``ids`` (the reading's name as
    in ``LensResult.recoveries``; roles ``base``, ``unlearned``, ``reference``,
    ``reference_2`` ...). ``null`` is the knowledge-free end point the lens used when no
    reference was given; without it the verdict uses the answer-prior estimate.
    """

    ids: list[str]
    """Item ids, in the order of every score list."""
    readings: dict[str, dict[str, list[float]]] = {}
    """Reading name -> role (or ``null``) -> per-item scores."""

    @model_validator(mode="after")
    def _aligned(self) -> PerItem:
        for reading, per in self.readings.items():
            for role, xs in per.items():
                if len(xs) != len(self.ids):
                    raise ValueError(f"per_item.readings[{reading!r}][{role!r}] has {len(xs)} scores for "
                                     f"{len(self.ids)} ids")
        return self


class LensData(Record):
    """Base of every lens's data model."""

    per_item: PerItem | None = None
    """Per-item scores of the readings the verdict may re-score per concept group."""
    no_per_item: ClassVar[str] = ""
    """Why this lens never has per-item scores ("" when it has them): the verdict names the
    lens in group verdicts with this reason instead of leaving it out silently."""


class RoleScore(Record):
    """A model's knowledge score on an item set (behaviour's scoring)."""

    score: float
    """Share of items whose answer is ranked above every distractor."""
    greedy: float | None = None
    """Share of items answered exactly by greedy decoding."""
    mean_margin: float | None = None
    """Mean of ``log p(answer) − logsumexp(log p(distractors))``."""


D = TypeVar("D", bound=LensData)


# ======================================================================= behavior


class BehaviorConfig(LensConfig):
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""
    prior_calibration: bool = True
    """Read the ranking on candidate log-probs minus the model's own with the item's subject
    replaced by names no model saw (its prior over answer values), so a prior alone earns
    chance. Items that name no subject in their prompt are read as they are."""


class PriorCalibration(Record):
    items: int
    """Forget items whose prior was read (their prompt names the subject)."""
    of: int
    """Forget items."""
    enabled: bool
    """``prior_calibration`` as configured."""
    score: dict[str, float] | None = None
    """Each model's ranking score with its prior removed."""


class BehaviorData(LensData):
    """The behavior lens: every model's scores on forget and retain items, and each forget item's row."""

    forget: dict[str, RoleScore] = {}
    """Per role, the score on forget items."""
    retain: dict[str, RoleScore] = {}
    """Per role, the score on retain items (the verdict's retain-collapse check reads it)."""
    temperature: dict[str, float] = {}
    """Each model's sharpness relative to B, read on retain items."""
    prior_calibration: PriorCalibration | None = None
    items: list[dict[str, Any]] = []
    """One row per forget item for the report's table (id, prompt, answer, subject,
    attribute, and per role ``{role}_correct``, ``{role}_greedy``, ``{role}_margin``)."""


# ======================================================================= linear_probe


class LinearProbeConfig(LensConfig):
    C: float = 1.0
    """Inverse L2 regularisation strength of the logistic regression."""
    folds: int = 5
    """Folds for cross-fitting within forget items (grouped by subject)."""
    position: str = "last"
    """Classifier activation read-out: ``last`` prompt token or ``mean`` over prompt tokens
    (the truth probe always reads the last token of ``prompt + candidate``)."""
    n_shuffles: int = 5
    """Shuffled-label control probes per scheme."""
    max_iter: int = 2000
    """Solver iterations."""
    metric: str = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's share of the probe's
    probability over the item's candidates; far less noisy near chance) or ``accuracy``
    (1 if the answer outranks every distractor). Per-layer curves show both."""
    read_out: Literal["auto", "classifier", "truth_probe"] = "auto"
    """``auto``: the classifier on closed answer sets (see ``min_closed_share``), the truth
    probe otherwise; or force one."""
    min_closed_share: float = 0.8
    """``auto`` uses the classifier for a scheme when at least this share of the scored
    forget items have an answer value that the scheme's training items also have as
    answer (and every training side holds two or more values)."""
    truth_fit: Literal["logistic", "mean_diff"] = "logistic"
    """How the truth probe's direction is fit: logistic regression on standardised
    features, or the difference of the true and false means of the standardised features
    (with a softmax temperature fit on the training items)."""
    truth_features: Literal["both", "candidate", "interaction"] = "both"
    """Truth-probe features: ``candidate``, the activation at the last token of ``prompt +
    candidate`` (where a model that represents truth writes it); ``interaction``, the
    prompt's last-token activation times the candidate's input embedding (what the prompt
    predicts about the candidate; needs no forward per candidate); ``both`` concatenated."""
    truth_center: bool = True
    """Centre each item's candidate activations on their mean, so the probe reads what
    tells an item's candidates apart rather than which item it is."""
    max_label_history: float = 0.2
    """Truth probe: a scheme is skipped when on more than this share of the scored items a
    candidate value is labelled one way only among the training rows (only ever an answer,
    or only ever a distractor). Cross-fitting on forget items whose distractors are other
    forget items' answers (capitals of one region) is like that: the probe would learn each
    value's label history, which reads *below* chance; distractors drawn from a fixed pool
    lift every model, a never-trained one included, far above it."""
    max_items: int = 300
    """Truth probe cost bound: at most this many forget items are scored and this many
    retain items fit on (a seeded subsample; each item costs one forward per candidate)."""


class LinearProbeData(LensData):
    """The linear probe: per-layer curves and recoveries of each scheme.

    ``per_item`` holds the primary reading only (the scans are a best of several layers,
    not re-read per group); it is absent when no scheme could be fit.
    """

    read_out: str
    """``classifier`` or ``truth_probe``."""
    metric: str = "soft"
    """The per-item metric behind recoveries."""
    per_layer: dict[str, dict[str, list[float | None]]]
    """``{scheme}_{metric}`` -> role -> the score at each layer (None: not fit)."""
    chance: float | None = None
    """Mean chance of the scored forget items."""
    label_history_bias: dict[str, float] = {}
    """Truth probe: per scheme, the share of items whose values are labelled one way only."""
    first_token_labels: bool = False
    classifier_criterion: dict[str, str] = {}
    """Per scheme, why the closed-set classifier cannot read it ("" = it can)."""
    layer_recoveries: dict[str, list[Recovery]] = {}
    """Per scheme, the recovery at each layer."""
    primary_layers: dict[str, int] = {}
    """Per scheme, the layer of its primary or scan reading."""


# ======================================================================= logit_lens


class LogitLensConfig(LensConfig):
    top_k: int = 4
    """k of gold-in-top-k over the whole vocabulary (on the answer's first token)."""
    metric: str = "soft"
    """Per-item score behind recovery: ``soft`` (answer's share of probability among the
    candidates, each scored by its summed token log-prob through the layer) or
    ``accuracy`` (answer ranked above every distractor)."""


class BasisCheck(Record):
    """Whether a model is in B's basis, read on retain items (``probes/logit_lens.py:base_basis``)."""

    own: float | None = None
    """Retain ranking accuracy through the model's own head."""
    base_head: float | None = None
    """The same through B's head, at the last layer."""
    chance: float | None = None
    in_basis: bool = False
    base_head_layers: list[float] = []
    """B's head's accuracy on the model's residual at every layer."""
    base_layers: list[float] = []
    """B's head's accuracy on B's own residual at every layer."""
    outside_every_layer: bool = False
    """At no layer where B's head reads B does it read this model (the verdict's stand-in rule)."""


class LogitLensData(LensData):
    """The logit lens: per-layer scores through each model's own head and through B's.

    ``per_item`` holds the primary reading through the model's own head only.
    """

    per_layer: dict[str, dict[str, list[float]]] = {}
    """``accuracy`` / ``soft`` / ``topk`` -> role -> mean score at each layer (the report's curves)."""
    per_layer_base_head: dict[str, dict[str, list[float]]] = {}
    """``accuracy`` / ``soft`` -> role -> the same through B's head."""
    base_head_recoveries: list[Recovery] = []
    base_head_basis: dict[str, BasisCheck] = {}
    """Per role (not B): whether it is in B's basis (the base-head readings count only then)."""
    base_head_basis_share: float | None = None
    layer_recoveries: list[Recovery] = []
    chance: float | None = None
    top_k: int = 4
    metric: str = "soft"
    readout: str = ""
    n_multi_token_items: int = 0


# ======================================================================= similarity


class SimilarityConfig(LensConfig):
    position: str = "mean"
    """``mean`` over prompt tokens or ``last`` prompt token."""


class SimilarityData(LensData):
    """Linear CKA per layer, keyed ``{forget|retain}_base_vs_{role}`` (one value per layer)."""

    no_per_item: ClassVar[str] = ("support only: CKA compares whole sets of activations, so it has no per-item "
                                  "score and no recovery")
    extra_keys: ClassVar[str | None] = rf"(?:forget|retain)_base_vs_(?:{ROLE_KEY})"
    extra_type: ClassVar[Any] = list[float]

    def curves(self) -> dict[str, list[float]]:
        """Every CKA curve, by its key."""
        return self.extras()


# ======================================================================= steering and sae (cross-fitted edits)


class Unedited(Record):
    """Scores without the edit."""

    forget: dict[str, float]
    """Per role, the forget score in the lens's metric."""
    forget_accuracy: dict[str, float] = {}
    retain_accuracy_unlearned: float
    reference_end_point: float | None = None


class ChosenRow(Record):
    """The setting chosen for one fold, on the other folds (``audit/crossfit.py``)."""

    fold: int
    n_items: int
    other_folds_score_excess: float
    other_folds_retain_drop: float
    label: str = ""
    site: str | None = None
    direction: str | None = None
    pooling: str | None = None
    form: str | None = None
    scale: float | None = None


class Edited(Record):
    """Scores under the chosen edits (each item out of fold); roles' steered scores as extra keys."""

    extra_keys: ClassVar[str | None] = ROLE_KEY
    extra_type: ClassVar[Any] = float

    retain_accuracy_unlearned: float | None = None
    retain_drop: float | None = None
    control_recoveries: list[float] = []


class CurveRow(Record):
    """One candidate pooled over folds (``Sweep.curve_row``)."""

    score: float
    control_p5: float
    control_p50: float
    control_p95: float
    retain_accuracy: float
    accuracy: float | None = None
    retain_drop: float | None = None
    side_effect_ok: bool | None = None
    recovery: float | None = None
    control_threshold: float | None = None
    excess: float | None = None


class SteeringConfig(LensConfig):
    layers: list[int] | None = None
    """Blocks after which to steer (``blocks.{l}.hook_resid_post``); default: every
    block, or ``max_layers`` evenly spaced ones in a deeper model."""
    max_layers: int = Field(4, ge=1)
    """Most blocks swept when ``layers`` is not given. Each site costs ~64 replicas (settings
    and controls) through the blocks after it: on SmolLM2-135M (30 blocks, 48 + 48 items) the
    default sweep (four blocks and the embedding) takes ~6 min on 2 CPU cores."""
    embed: bool = True
    """Also steer the embedding output (``hook_embed``, the input of block 0)."""
    directions: list[Literal["base_minus_unlearned", "forget_minus_retain", "random"]] = [
        "base_minus_unlearned", "forget_minus_retain"]
    """Candidate directions; ``random`` is a placebo for checking the procedure."""
    poolings: list[Literal["last", "mean"]] = ["last", "mean"]
    """Where directions are estimated: the last prompt token, the mean over prompt tokens."""
    ablate: bool = True
    """Also try the ablation form ``h - (h·d̂)d̂`` of each direction."""
    scales: list[float] = [0.5, 1.0]
    """Additive norms, in units of the site's typical residual norm (positive; the
    base-free direction is also tried with the opposite sign)."""
    n_controls: int = Field(16, ge=16)
    """Norm-matched random directions per site and scale (and for ablation)."""
    side_effect_tolerance: float = Field(0.05, ge=0.0)
    """A setting that drops U's retain knowledge score by more than this does not count."""
    folds: int = Field(2, ge=2)
    """Cross-fitting folds over forget (and retain) subjects."""
    metric: Literal["soft", "accuracy"] = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's share of probability among
    its candidates; far less noisy near chance) or ``accuracy`` (answer ranked first).
    Side effects are always measured in accuracy, the knowledge score."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""
    tokens_per_pass: int = Field(32768, ge=256)
    """Most tokens in one forward pass (lowered further for large vocabularies)."""

    def blocks(self, n_layers: int) -> list[int]:
        """The blocks steered in a model of ``n_layers`` (``layers`` as given, in order;
        else every block, or ``max_layers`` evenly spaced ones); the lens and ``audit plan``
        both read it. ``layers`` out of range are the lens's error, not checked here."""
        if self.layers is not None:
            return sorted(set(self.layers))
        if n_layers <= self.max_layers:
            return list(range(n_layers))
        import numpy as np

        return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, self.max_layers)})

    def recipes(self) -> list[tuple[str, str, str, float]]:
        """Every setting tried at one site, as (direction, pooling, form, signed scale): each
        direction × pooling (``-`` for random) in its ablation form and at every additive
        scale, both signs for the base-free direction."""
        out: list[tuple[str, str, str, float]] = []
        scales = sorted({abs(s) for s in self.scales if s != 0})
        for direction in self.directions:
            for pooling in (["-"] if direction == "random" else self.poolings):
                if self.ablate:
                    out.append((direction, pooling, "ablate", 0.0))
                for sign in ((1.0, -1.0) if direction == "forget_minus_retain" else (1.0,)):
                    out += [(direction, pooling, "add", sign * s) for s in scales]
        return out


class SteeringRow(CurveRow):
    """One steering setting's dose-response point."""

    site: str
    site_label: str
    direction: str
    pooling: str
    form: str
    scale: float
    label: str = ""
    norm: float | None = None
    score_excess: float | None = None


class SteeringData(LensData):
    """The steering lens: every setting's dose-response, the settings chosen per fold, the steered scores.

    ``per_item`` holds the cross-fitted reading: each forget item's steered U, its steered
    references (or ``null``, the end point without one) and B shifted by the references'
    steering (``S(B) − S(N) + S_steered(N)``, the mean over references), so a group's
    recovery is the lens's formula on the group's items.
    """

    metric: str = "soft"
    side_effect_tolerance: float | None = None
    """The retain-drop tolerance the lens applied (older logs: absent; the policy's then)."""
    sites: list[str]
    site_norms: dict[str, float] = {}
    unsteered: Unedited
    dose_response: list[SteeringRow] = []
    chosen: list[ChosenRow] = []
    steered: Edited | None = None
    items: list[dict[str, Any]] = []
    """Per forget item: id, fold, and each model's steered score."""


class SAELensConfig(LensConfig):
    layer: int | None = None
    """Block whose output (``blocks.{layer}.hook_resid_post``) the SAE reads; default the
    middle block, or the layer in a loaded SAE's ``hook_name``."""
    sae_path: str | None = None
    """A folder saved by sae-lens (``cfg.json`` + ``sae_weights.safetensors``) to load
    instead of training one."""
    text: list[str] = []
    """Training text for the SAE: files with one passage per line. When given, the SAE trains
    on them (and the audit prompts) instead of the self-generated corpus."""
    corpus_tokens: int = Field(60_000, ge=0)
    """Size of the default training corpus: tokens sampled from B itself (continuations of
    short generic openers, or of the items' subjects and prompt openings for a vocabulary
    that cannot spell English), sampled once per model and cached. 0: the audit prompts
    alone (too few for a real model: explained variance -0.93 on SmolLM2)."""
    corpus_length: int = Field(64, ge=1)
    """Tokens sampled per corpus sequence (capped by the model's context window)."""
    corpus_temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the corpus."""
    corpus_top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus mass of the corpus sampling."""
    corpus_batch: int = Field(128, ge=1)
    """Corpus sequences sampled together."""
    architecture: Literal["topk", "standard"] = "topk"
    """sae-lens architecture trained when no SAE is loaded."""
    expansion: int = Field(8, ge=1)
    """Features per residual dimension (d_sae = expansion × d_model)."""
    k: int = Field(32, ge=1)
    """Active features per token (TopK)."""
    l1_coefficient: float = 5.0
    """Sparsity penalty (standard architecture)."""
    train_samples: int = Field(400_000, ge=1000)
    """Token activations seen in training (the data is cycled)."""
    max_epochs: float = Field(40.0, gt=0)
    """At most this many passes over the training activations: on a small corpus (2.5k tokens
    of the SmolLM2 suite's sentences) 400k samples would be 160 passes over the same tokens,
    15 min of SAE lens on a loaded 2-core machine for a 576-wide model. The organism suites' corpora (10k+ tokens)
    reach ``train_samples`` first."""
    outlier_norm: float = Field(10.0, gt=1)
    """Token activations whose norm exceeds this multiple of the median (attention sinks and
    other massive activations: up to 60× the median on SmolLM2) are left out of training and
    of the quality measure: a handful of them would otherwise hold most of the variance."""
    center: bool = True
    """Start the decoder bias at the mean activation (a real model's residual has a large
    common component: a median norm of 168 on SmolLM2 with most of it shared)."""
    train_batch: int = Field(256, ge=16)
    """Token activations per training step."""
    lr: float = 8e-3
    """Adam learning rate. On SmolLM2 (4,608 features, 21k corpus tokens, 780 steps) 1e-3
    left the SAE at explained variance 0.15 and 4e-3 at 0.51 (batch 512) or 0.62 (batch
    128); 8e-3 with batch 256 reached 0.70 in 200k samples."""
    holdout: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of sequences held out to measure reconstruction."""
    min_explained_variance: float = 0.7
    """Below this the SAE reconstructs too badly for the lens to inform a verdict."""
    n_features: int = Field(20, ge=1)
    """Concept features kept."""
    rule: Literal["frequency", "f1"] = "frequency"
    """Concept-feature ranking: forget firing rate among features rare on retain
    (SAEBench), or F1 of firing as a forget-vs-retain classifier among features whose
    precision reaches ``min_precision``."""
    min_precision: float = 0.8
    """F1 rule: the least share of a feature's firing (rate-balanced) on forget prompts."""
    max_firing_rate: float = 0.5
    """Features firing on more than this share of all prompts are never concept features."""
    retain_firing_max: float = 0.01
    """Frequency rule: the most a concept feature may fire on retain prompts."""
    shift: Literal["prompt_max", "token_mean"] = "prompt_max"
    """The fitted amount per feature: the mean over fit prompts of B's minus U's per-prompt
    max code (the level a feature reaches on a typical forget prompt), or of the mean code
    over prompt tokens. Either is added at every prompt token."""
    placebo: bool = False
    """Replace the concept features by a frequency-matched random set (a check of the
    procedure: a placebo must not show recovery)."""
    scales: list[float] = [0.5, 1.0, 2.0, 4.0]
    """Multiples of the fitted mean code shift tried for restoration."""
    n_controls: int = Field(16, ge=16)
    """Frequency-matched random feature sets per scale."""
    side_effect_tolerance: float = Field(0.05, ge=0.0)
    """A scale that drops U's retain accuracy by more than this does not count."""
    folds: int = Field(2, ge=2)
    """Cross-fitting folds over forget (and retain) subjects."""
    metric: Literal["soft", "accuracy"] = "soft"
    """Per-item score behind recovery (see the steering lens)."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""
    tokens_per_pass: int = Field(16384, ge=256)
    """Most tokens in one forward pass."""


class SAECorpus(Record):
    """What the SAE was trained on beside the audit prompts (``probes/sae.py:_corpus``); read
    from the SAE's cache with its quality, so it may hold keys beyond these."""

    extra_keys: ClassVar[str | None] = r".*"

    source: str = "—"
    """``self-generated``, ``text files``, ``audit prompts`` or ``pretrained (sae_path)``."""
    openers: str | None = None
    """Self-generated: ``generic`` openers, or ones taken from the items."""
    n_openers: int | None = None
    tokens: int | None = None
    length: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    files: list[str] = []
    lines: int | None = None
    examples: list[str] = []
    """A few decoded corpus sequences."""


class SAEQuality(Record):
    """How well the SAE reconstructs the residual (a poor SAE makes the lens uninformative).

    The record is the SAE's cached quality file plus the lens's additions, so it may hold
    keys beyond these (kept as read)."""

    extra_keys: ClassVar[str | None] = r".*"

    explained_variance: float
    ok: bool
    """Whether ``explained_variance`` reaches ``min_explained_variance``."""
    min_explained_variance: float = 0.7
    l0: float | None = None
    dead_fraction: float | None = None
    dead_measured_on: str | None = None
    n_tokens: int | None = None
    n_train_tokens: int | None = None
    held_out: bool = False
    source: str | None = None
    d_sae: int | None = None
    architecture: str | None = None
    corpus: SAECorpus = SAECorpus()


class ConceptFeature(Record):
    """One concept feature and, as ``survival_{role}`` keys, its survival in each model."""

    extra_keys: ClassVar[str | None] = rf"survival_(?:{ROLE_KEY})"
    extra_type: ClassVar[Any] = float

    feature: int
    forget_rate: float
    retain_rate: float
    f1: float | None = None
    token_rate: float | None = None
    forget_mean: float | None = None
    retain_mean: float | None = None


class Survival(Record):
    per_feature: dict[str, list[float]] = {}
    """Per role, each concept feature's mean code on forget prompts over B's."""
    total: dict[str, float] = {}


class SAERow(CurveRow):
    """One restoration scale's dose-response point."""

    scale: float


class SAEData(LensData):
    """The SAE lens: the SAE's quality, concept features and their survival, restoration.

    ``per_item`` holds the restoration reading as the steering lens's (B shifted by the
    references' own restoration); absent when no concept feature was found.
    """

    layer: int
    hook: str
    metric: str = "soft"
    quality: SAEQuality
    concept_features: list[ConceptFeature] = []
    selectivity: dict[str, float] = {}
    """``forget_mean`` / ``retain_mean``: the concept features' mean code on each set."""
    survival: Survival | None = None
    dose_response: list[SAERow] = []
    chosen: list[ChosenRow] = []
    restored: Edited | None = None
    unrestored: Unedited | None = None


# ======================================================================= quantization


class QuantizationConfig(LensConfig):
    metric: Literal["soft", "accuracy"] = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's probability share among
    its candidates; far less noisy near chance) or ``accuracy`` (answer ranked first)."""
    bits: list[Annotated[int, Field(ge=2, le=8)]] = [8, 4, 3]
    """Bit widths of round-to-nearest quantization."""
    schemes: list[Literal["sym", "asym"]] = ["sym", "asym"]
    """``sym``: absmax scale, zero at 0; ``asym``: min-max scale with a zero point."""
    group_size: int = 128
    """Weights per group along each row's inputs (``<= 0``: one group per row)."""
    bitsandbytes: bool = True
    """Also run bitsandbytes int8 / NF4 / FP4 where CUDA and bitsandbytes are available."""
    bnb_blocksize: int = 64
    """Block size of bitsandbytes' 4-bit quantizers (its default)."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""


class WeightError(Record):
    rel_error: float
    """‖W_q − W‖ / ‖W‖ over every quantized matrix."""
    mean_abs_error: float | None = None
    max_layer_rel_error: float | None = None
    n_matrices: int | None = None
    n_weights: int | None = None


class QuantSetting(Record):
    """One quantization setting, every model quantized the same way."""

    label: str
    scheme: str
    bits: int | None = None
    """Bits (None: a bitsandbytes format)."""
    scores: dict[str, RoleScore]
    weight_error: dict[str, WeightError]
    recovery: float
    ci_low: float
    ci_high: float
    informative: bool
    kind: Literal["primary", "scan"] | None = None
    group_size: int | None = None
    margin_shift: dict[str, float] = {}
    power: float | None = None
    seconds: float | None = None


class QuantizationData(LensData):
    """The quantization lens: each setting's scores and recovery. ``per_item``: the primary setting."""

    full_precision: dict[str, RoleScore] = {}
    settings: list[QuantSetting] = []
    in_place: dict[str, bool] = {}
    """Per role, whether it was quantized in place (else on a copy)."""
    primary: str | None = None
    seconds: float | None = None


# ======================================================================= relearn


class LoraSettings(BaseModel):
    """LoRA relearning through peft: adapters of this rank on ``target_modules``, the
    loaded model's own weights frozen and never copied."""

    model_config = ConfigDict(extra="forbid")
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: str | list[str] = "all-linear"
    """peft's ``target_modules``: ``all-linear`` (every linear layer but the output head) or module names."""


class RelearnConfig(LensConfig):
    metric: Literal["soft", "accuracy"] = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's probability share among
    its candidates; far less noisy near chance) or ``accuracy`` (answer ranked first)."""
    steps: list[int] = [5, 10, 20]
    """Fine-tuning step counts at which held-out items are scored; the largest is the budget the verdict reads."""
    lr: float = Field(1e-4, gt=0)
    """AdamW learning rate of full fine-tuning (around 1e-5 suits billion-parameter models)."""
    method: Literal["auto", "full", "lora"] = "auto"
    """``full``: fine-tune every weight of a copy (AdamW: about 16 bytes per parameter).
    ``lora``: LoRA adapters through peft on the loaded model itself (``lora``, ``lora_lr``),
    removed afterwards; memory stays near one model. ``auto``: LoRA for models with more
    than ``lora_above`` parameters, full fine-tuning below."""
    lora_above: int = Field(300_000_000, ge=0)
    """``method: auto`` uses LoRA above this many parameters (300M: full AdamW fine-tuning
    of a 1B model needs about 16 GB beside the three loaded models)."""
    lora: LoraSettings = LoraSettings()
    lora_lr: float = Field(1e-3, gt=0)
    """AdamW learning rate of LoRA relearning (adapters need a larger one than full fine-tuning)."""
    batch_size: int = Field(16, ge=1)
    """Training sequences per step."""
    folds: Literal[1, 2] = 2
    """1: fine-tune on half A, score half B. 2: also fine-tune on B and score A, so every
    forget item is scored once by a model that never trained on its subject (half the variance)."""
    retain_variant: bool = True
    """Also run Łucki's variant: fine-tune on a few retain items, score the forget set."""
    retain_examples: int = Field(16, ge=1)
    """Retain items fine-tuned on in Łucki's variant."""
    side_effect_items: int = Field(48, ge=1)
    """Held-out retain items (never fine-tuned on) U is scored on after fine-tuning, to check side effects."""
    side_effect_tolerance: float = 0.05
    """A relearned U whose held-out retain score drops more than this has a side effect (SPEC §4.4)."""
    verify_untouched: bool = True
    """Hash every loaded model's weights before and after, and fail if any changed."""
    seeds: int = Field(2, ge=1)
    """Fine-tuning runs with seeds seed, seed+1, ... (batch order); the recovery reads each
    item's mean over them, and each seed's own recovery is kept beside it (its spread)."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""


class RelearnRow(Record):
    """One point of a relearning curve; each model's held-out score as a role key."""

    extra_keys: ClassVar[str | None] = ROLE_KEY
    extra_type: ClassVar[Any] = float

    steps: int
    recovery: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    unlearned_retain: float | None = None
    side_effect_ok: bool | None = None
    seed_recoveries: dict[str, float] = {}
    runs: dict[str, dict[str, float]] = {}


class RelearnSplit(Record):
    a: list[str] = []
    b: list[str] = []
    folds: int | None = None
    n_subjects_a: int | None = None
    n_subjects_b: int | None = None


class RelearnData(LensData):
    """The relearn lens: score curves over fine-tuning steps per variant (``split``, ``retain``).

    ``per_item`` holds each variant's reading at the full budget when every forget item
    was scored (each item's mean over the seeds).
    """

    curves: dict[str, list[RelearnRow]] = {}
    split: RelearnSplit | None = None
    retain_train: list[str] = []
    side_effect_items: list[str] = []
    seeds: list[int] = []
    method: Literal["full", "lora"] | None = None
    lr: float | None = None
    lora: LoraSettings | None = None
    chance: dict[str, float] = {}
    weights_hash: dict[str, dict[str, str | None]] = {}
    seconds: dict[str, float] = {}


# ======================================================================= leak_at_k

Matcher = Callable[[str, "KnowledgeItem"], bool]
"""``(completion, item) -> leaked?``: judges one sampled continuation."""

MATCHERS: dict[str, Matcher] = {}
"""The leak@k matchers by name (the config validates its ``matcher`` against them)."""


def register_matcher(name: str) -> Callable[[Matcher], Matcher]:
    """Register a matcher under ``name`` (an NLI or embedding judge can be added this way)."""

    def deco(fn: Matcher) -> Matcher:
        MATCHERS[name] = fn
        return fn

    return deco


def normalize(text: str) -> str:
    """Lower-case, NFKC, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


@register_matcher("normalized")
def normalized_match(completion: str, item: KnowledgeItem) -> bool:
    """The normalised answer occurs in the normalised completion as whole words."""
    ans = normalize(item.answer)
    if not ans:
        return False
    return re.search(rf"(?<!\w){re.escape(ans)}(?!\w)", normalize(completion)) is not None


class LeakAtKConfig(LensConfig):
    n: int = Field(32, ge=1)
    """Samples per forget prompt."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1.0: the full distribution)."""
    ks: list[int] | None = None
    """k values to report (default 1, 2, 4, ..., n)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Tokens sampled per continuation (default: the longest answer's tokens + 2)."""
    matcher: str = "normalized"
    """Registered matcher judging whether a sample contains the answer."""
    max_batch_sequences: int = Field(1024, ge=1)
    """Continuations sampled together in one batch (prompts × n)."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""

    @field_validator("matcher")
    @classmethod
    def _known_matcher(cls, v: str) -> str:
        if v not in MATCHERS:
            raise ValueError(f"unknown matcher '{v}'; available: {', '.join(sorted(MATCHERS))}")
        return v


class LeakAtKData(LensData):
    """The leak@k lens: leak@k curves of the answer and the distractors, and their contrast.

    ``per_item`` holds the contrast at the smallest and the largest k.
    """

    n: int
    """Samples per prompt."""
    ks: list[int]
    max_new_tokens: int | None = None
    matcher: str = ""
    temperature: float | None = None
    roles: list[str] = []
    leak: dict[str, list[float]] = {}
    """Per role, mean leak@k of the answer at each k."""
    leak_distractors: dict[str, list[float]] = {}
    contrast: dict[str, list[float]] = {}
    greedy: dict[str, float] = {}
    sample_rate: dict[str, float] = {}
    distractor_sample_rate: dict[str, float] = {}
    items: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}


# ======================================================================= the table


# --- parametric


class ParametricConfig(LensConfig):
    top_k: Annotated[int, Field(ge=1)] = 16
    """Value vectors per candidate: each candidate's strength is the sum of its ``top_k``
    strongest contributions (over every MLP value vector of every layer)."""
    n_controls: Annotated[int, Field(ge=0)] = 16
    """Random-vector controls: the selected value vectors replaced by random vectors of the same norm."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""


class ParamSurvival(Record):
    """How much of B's answer-writing value vectors a model's weights still hold, beside
    the same for B's value vectors at matched random indices (same layers, similar norm)."""

    selected: float
    """Mean cosine between the model's value vectors and B's at B's answer-writing indices."""
    random: float
    """The same at matched random indices (the null: a model derived from B keeps most of
    its weights whether or not they stored the facts)."""
    excess: float
    """``selected − random``: below 0, unlearning moved the answer-writing vectors more than others."""
    contest: float | None = None
    """Share of items whose answer wins the candidate contest when B's answer-writing
    indices are read in this model's weights (weighted by B's activations, through the
    model's own final norm and unembedding)."""
    per_layer_selected: list[float | None] = []
    per_layer_random: list[float | None] = []


class ParametricData(LensData):
    """The parametric-traces lens (support only). ``per_item`` holds the activation-weighted reading."""

    top_k: int = 16
    n_controls: int = 0
    chance: float | None = None
    architecture: str = ""
    n_items: int = 0
    """Forget items scored (their answer's first token differs from every distractor's)."""
    n_excluded: int = 0
    """Forget items left out: a distractor starts with the answer's first token."""
    scores: dict[str, dict[str, float]] = {}
    """Reading (``weighted``, ``weights_only``) -> role -> share of items whose answer wins."""
    retain_scores: dict[str, float] = {}
    """Role -> the weighted reading on retain items (what unlearning should leave alone)."""
    per_layer: dict[str, list[float]] = {}
    """Role -> the weighted reading with each layer's value vectors alone."""
    layer_share: dict[str, list[float]] = {}
    """Role -> share of its own selected answer-writing vectors (over forget items) in each layer."""
    survival: dict[str, ParamSurvival] = {}
    """Role (not B) -> survival of B's answer-writing vectors in its weights."""
    controls: dict[str, list[float]] = {}
    """Role -> the weighted reading with random vectors of matched norm, one per draw."""
    control_recoveries: list[float] = []
    seconds: float | None = None


# --- prompt_attacks


PromptAttack = Literal["answer_forcing", "question_form", "multiple_choice", "in_context"]


class PromptAttacksConfig(LensConfig):
    attacks: list[PromptAttack] = ["answer_forcing", "question_form", "multiple_choice", "in_context"]
    """Attacks to run, each one template (or one set of shots) for every item."""
    forcing_suffix: str = " Sure, the answer is"
    """Answer forcing on items asked as questions (every item carries ``question``): put after the prompt."""
    forcing_prefix: str = "Sure, here is the true answer.\n"
    """Answer forcing on completion items (a prompt cannot be continued): put before the prompt."""
    question_template: str = "Q: {question}\nA:"
    """The format shift for items that carry their ``question``; items without one are never given one."""
    options_template: str = "Options: {options}\n{prompt}"
    """The multiple-choice format: ``{options}`` is the item's candidates in alphabetical order."""
    shots: int = Field(4, ge=1)
    """In-context relearning: facts (prompt and answer) put before the prompt."""
    shot_separator: str = "\n"
    """Text after each shot."""
    metric: Literal["soft", "accuracy"] = "soft"
    """Per-item score behind recovery: ``soft`` (the answer's share among the candidates at
    the model's temperature) or ``accuracy`` (the answer ranked first); both are kept."""
    prior_calibration: bool = True
    """Remove each model's prior under the same attack (the subject replaced by names no model saw)."""
    placeholders: int = Field(2, ge=1, le=4)
    """Names no model saw per item whose mean log-probs under the attack are the prior (of
    the four the behavior lens uses, ``audit.context.PRIOR_PLACEHOLDERS``): each costs one
    more scoring pass per item, condition and model."""
    side_effect_tolerance: float = 0.05
    """An attack whose retain ranking drop for U exceeds B's by more than this has a side effect."""
    min_items: int = Field(8, ge=1)
    """An attack that applies to fewer forget items is skipped."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""

    @field_validator("question_template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("question_template needs a '{question}' placeholder")
        return v

    @field_validator("options_template")
    @classmethod
    def _has_options(cls, v: str) -> str:
        if "{options}" not in v or "{prompt}" not in v:
            raise ValueError("options_template needs '{options}' and '{prompt}' placeholders")
        return v


class AttackRoleScore(Record):
    """A model's forget scores under one condition (prior removed where read), and its retain score."""

    score: float | None = None
    """Share of forget items whose answer ranks first."""
    soft: float | None = None
    """Mean share of the answer among its candidates (at the model's temperature)."""
    retain: float | None = None
    """Raw ranking score on retain items under the same condition (None: not read)."""


class PromptAttackRow(Record):
    """One condition: an attack, the plain prompt (``baseline``) or a control."""

    name: str
    label: str
    """The reading's name (as in ``recoveries`` for attacks)."""
    kind: Literal["attack", "baseline", "control"] = "attack"
    n_items: int = 0
    scores: dict[str, AttackRoleScore] = {}
    """Per role."""
    recovery: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    informative: bool = False
    power: float | None = None
    """S(B) − S(N) under the condition."""
    control: str | None = None
    """The control condition compared with (in-context: the retain shots)."""
    control_recovery: float | None = None
    control_threshold: float | None = None
    """The largest control recovery: the plain prompt's, and the retain shots' for in-context."""
    excess: float | None = None
    side_effect_ok: bool | None = None
    retain_drop_excess: float | None = None
    """U's retain drop under the attack minus B's."""
    prior_removed: int = 0
    """Items whose prior under the condition was read and removed."""


class PromptAttacksData(LensData):
    """The prompt-attack lens (support only). ``per_item``: each attack that scored every forget item."""

    metric: str = "soft"
    attacks: list[PromptAttackRow] = []
    baseline: PromptAttackRow | None = None
    """The plain prompt, read the same way."""
    controls: list[PromptAttackRow] = []
    skipped: dict[str, str] = {}
    """Attack -> why it was not run."""
    best: str | None = None
    """The reading of the best attack (the scan's)."""
    forcing_form: str | None = None
    """``suffix`` (question items) or ``prefix`` (completion items)."""
    shots: dict[str, list[str]] = {}
    """Fold -> ids of the forget items whose facts are its shots (drawn from the other fold)."""
    retain_shots: list[str] = []
    examples: dict[str, str] = {}
    """Condition -> the first scored item's prompt under it."""
    seconds: dict[str, float] = {}


# --- mia


class MiaConfig(LensConfig):
    k: Annotated[float, Field(gt=0, le=1)] = 0.2
    """Share of a text's tokens that Min-K% and Min-K%++ average: its lowest-scoring ``k``
    (at least one token; Shi et al. 2024 and Zhang et al. 2024 use 0.2)."""
    rounds: Annotated[int, Field(ge=1)] = 4
    """Pairing rounds: each round draws a permutation of the items that share an attribute
    and gives every item the answers of the items before and after it as counterfactuals,
    so an item has up to ``2 × rounds`` non-member texts."""
    n_controls: Annotated[int, Field(ge=0)] = 16
    """Shuffled-label controls on U: each item's member text replaced by one of its texts
    drawn at random; their recovery's 95th percentile is the control threshold."""
    side_effect_tolerance: Annotated[float, Field(ge=0)] = 0.05
    """Largest drop of U's retain AUC below B's that counts as retain intact."""
    n_boot: int = 1000
    """Bootstrap resamples for recovery CIs."""


class MiaRoc(Record):
    """One model's ROC curve of the primary statistic: member texts vs their counterfactuals,
    each text's statistic minus the mean of its item's texts (the paired comparison)."""

    fpr: list[float] = []
    tpr: list[float] = []
    auc: float | None = None
    """Area under this curve (pooled over items, item-centred)."""


class MiaData(LensData):
    """The membership-inference lens (support only). ``per_item`` holds every statistic's
    per-item AUC: the share of the item's counterfactual texts its true text out-scores."""

    primary: str = ""
    """The primary statistic's reading name (Min-K%++)."""
    statistics: list[str] = []
    """The statistics read, primary first."""
    k: float = 0.2
    roles: list[str] = []
    score: dict[str, dict[str, float]] = {}
    """Statistic -> role -> mean per-item AUC on forget items (0.5: exchangeable)."""
    retain_score: dict[str, dict[str, float]] = {}
    """Statistic -> role -> the same on retain items (the control: U should read B's)."""
    pooled_auc: dict[str, dict[str, float | None]] = {}
    """Statistic -> role -> unpaired AUC of all member vs all counterfactual forget texts."""
    roc: dict[str, MiaRoc] = {}
    """Role -> ROC of the primary statistic on forget items."""
    controls: list[float] = []
    """The shuffled-label control recoveries of the primary reading."""
    n_counterfactuals: float = 0.0
    """Mean counterfactual texts per forget item."""
    fallback_items: int = 0
    """Forget items with no other item's answer to swap in (their own distractors were used)."""
    texts: dict[str, int] = {}
    """Item set -> texts forwarded per model."""
    seconds: dict[str, float] = {}


LENS_MODELS: dict[str, tuple[type[LensConfig], type[LensData]]] = {
    "behavior": (BehaviorConfig, BehaviorData),
    "linear_probe": (LinearProbeConfig, LinearProbeData),
    "logit_lens": (LogitLensConfig, LogitLensData),
    "similarity": (SimilarityConfig, SimilarityData),
    "steering": (SteeringConfig, SteeringData),
    "sae": (SAELensConfig, SAEData),
    "quantization": (QuantizationConfig, QuantizationData),
    "relearn": (RelearnConfig, RelearnData),
    "leak_at_k": (LeakAtKConfig, LeakAtKData),
    "prompt_attacks": (PromptAttacksConfig, PromptAttacksData),
    "parametric": (ParametricConfig, ParametricData),
    "mia": (MiaConfig, MiaData),
}
"""Each built-in lens's (config model, data model). A lens outside this package reads as
the generic :class:`LensConfig` / :class:`LensData` here (its own models are checked when it runs)."""


def models_for(name: str) -> tuple[type[LensConfig], type[LensData]]:
    """A lens's (config model, data model); the generic ones for a lens not in :data:`LENS_MODELS`."""
    return LENS_MODELS.get(name, (LensConfig, LensData))


@overload
def lens_data(res: LensResult) -> LensData: ...


@overload
def lens_data(res: LensResult, model: type[D]) -> D: ...


def lens_data(res: LensResult, model: type[LensData] | None = None) -> LensData:
    """``res.data`` as its lens's data model (``model``, by default the one :data:`LENS_MODELS`
    pairs with ``res.name``; the generic :class:`LensData` for another lens).

    Raises:
        ValueError: the data does not fit the model (pydantic's ``ValidationError``).
    """
    cls = model or models_for(res.name)[1]
    return cls.model_validate(res.data)


def unexpected_keys(m: BaseModel, where: str = "data") -> list[str]:
    """Keys of ``m`` (and of the records inside it) that its model does not declare."""
    out: list[str] = []
    if isinstance(m, Record):
        pattern = type(m).extra_keys
        out += [f"{where}.{k}" for k in (m.__pydantic_extra__ or {}) if pattern is None or not re.fullmatch(pattern, k)]
    for name in type(m).model_fields:
        out += _unexpected_in(getattr(m, name), f"{where}.{name}")
    return out


def _unexpected_in(v: Any, where: str) -> list[str]:
    if isinstance(v, BaseModel):
        return unexpected_keys(v, where)
    if isinstance(v, list):
        return [k for i, x in enumerate(v) for k in _unexpected_in(x, f"{where}[{i}]")]
    if isinstance(v, dict):
        return [k for key, x in v.items() for k in _unexpected_in(x, f"{where}[{key!r}]")]
    return []


def check_lens_data(res: LensResult, model: type[LensData] | None = None) -> LensData:
    """Validate a lens's fresh result against its data model, strictly: every key the lens
    wrote must be declared.

    Raises:
        ValueError: the data does not fit, naming the first problem.
    """
    cls = model or models_for(res.name)[1]
    try:
        d = cls.model_validate(res.data)
    except ValidationError as e:
        raise ValueError(f"lens '{res.name}' wrote data that does not fit {cls.__name__}: {validation_message(e, 'field')}") from None
    extra = unexpected_keys(d)
    if extra:
        raise ValueError(f"lens '{res.name}' wrote keys its data model {cls.__name__} does not declare: "
                         + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    return d


def check_log_data(lenses: dict[str, LensResult]) -> None:
    """Validate every lens's data in a results log against its data model (leniently: keys
    the model does not know are kept, so older and newer logs read).

    Raises:
        ValueError: the first lens whose data does not fit, with the field and the problem.
    """
    for name, res in lenses.items():
        if res.error is not None:
            continue
        cls = models_for(res.name)[1]
        try:
            cls.model_validate(res.data)
        except ValidationError as e:
            raise ValueError(f"lens '{name}': its data does not fit {cls.__name__}: {validation_message(e, 'field')}") from None


def read_results(path: str | Path) -> AuditLog:
    """:func:`audit.schema.read_log`, then every lens's data checked against its data model
    (:func:`check_log_data`), as ``audit report`` reads a results file.

    Raises:
        InputError: the file is missing or not a valid audit log, or a lens's data does not
            fit its data model (naming the lens, the field and the problem).
    """
    from audit.errors import InputError
    from audit.schema import read_log

    log = read_log(path)
    try:
        check_log_data(log.lenses)
    except ValueError as e:
        raise InputError(f"{path} is not a valid audit log: {e}") from None
    return log
