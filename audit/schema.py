"""The versioned results file, ``audit_log.json`` (inspect_ai's ``EvalLog`` pattern).

Reports and ``audit report`` render from this file alone, so it holds everything a
reader needs: the resolved config, model identities, per-lens results, verdicts,
timings, library versions and any error. This module must not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field

SCHEMA_VERSION = 2
"""Version of the results file this code writes. History (docs/reliability.md, "The
results file"): 1, the first; 2 adds ``LensResult.lens_version`` and sets ``status`` and
``error`` when a run fails. Every field added within a version has a default, so older
files of that version still read; an older version is upgraded by :data:`MIGRATIONS`."""


class BaseModel(_PydanticModel):
    # NaN recoveries (S(B) = S(N)) must survive a round trip, so write them as NaN
    model_config = ConfigDict(ser_json_inf_nan="constants")


Label = Literal["DELETED", "SUPPRESSED", "NOT_UNLEARNED", "INCONCLUSIVE"]


class Recovery(BaseModel):
    """Recovery of one reading of one lens: ``(S(U) - S(N)) / (S(B) - S(N))``."""

    reading: str
    """What was scored, e.g. ``ranking``, ``greedy``, ``layer 2``."""
    value: float
    """Point estimate of R (NaN when S(B) = S(N))."""
    ci_low: float
    """Lower end of the paired-bootstrap 95% CI."""
    ci_high: float
    """Upper end of the paired-bootstrap 95% CI."""
    score_base: float
    """S(B)."""
    score_unlearned: float
    """S(U)."""
    score_reference: float
    """S(N), or chance when no reference model was given."""
    n_items: int
    """Items scored."""
    informative: bool
    """Whether S(B) - S(N) reaches the power margin (SPEC §4.3)."""
    control_threshold: float | None = None
    """95th percentile of the control recoveries, when the lens has controls."""
    excess: float | None = None
    """R minus the control threshold (SPEC §4.2), when the lens has controls."""
    side_effect_ok: bool | None = None
    """Whether retain items stayed within tolerance, for interventions."""
    score_null: float | None = None
    """S of the lens's knowledge-free estimate (the end point used without a reference),
    recorded with a reference too, so the estimate can be checked against a real N."""
    n_references: int = 1
    """Never-trained models whose mean is the end point (their spread is in the CI)."""
    end_point: str = "reference"
    """What the end point S(N) is: ``reference`` (never-trained model(s)) or, without one,
    the knowledge-free estimate used (``chance``, ``exchangeable-candidates`` ...)."""
    kind: Literal["primary", "scan", "gate", "support"] = "primary"
    """``primary``: a reading fixed before looking at U (e.g. the layer where the lens
    best separates B from N); it may bound recovery (DELETED). ``scan``: the best of
    several readings (its CI widened for the number compared), or a reading too coarse
    to bound recovery (e.g. leak@n); it can show recovery (SUPPRESSED) but never bounds
    it. ``gate``: what U says as it is (behavior's raw ranking), read only by the
    NOT_UNLEARNED rule; it neither shows nor bounds hidden knowledge, since a model's prior
    over answer values moves it (docs/verdict.md). ``support``: shown beside the evidence
    but never read by the verdict, for a lens whose calibration AUROC has not earned it a
    say (docs/lenses.md, "Which lenses decide")."""


class LensResult(BaseModel):
    """What one lens measured."""

    name: str
    """Registered lens name."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The lens's resolved arguments."""
    recoveries: list[Recovery] = Field(default_factory=list)
    """Recovery per reading (the verdict reads these)."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Lens-specific numbers for plots (per layer, per scale, per item ...)."""
    notes: list[str] = Field(default_factory=list)
    """Caveats a reader should see (fallbacks taken, things skipped)."""
    error: str | None = None
    """Why the lens failed, if it did; a failed lens never supports a verdict."""
    seconds: float = 0.0
    """Wall time of the lens."""
    lens_version: str = "1"
    """Version of the lens's code that produced this result (``register_lens(version=...)``);
    ``audit run --resume`` recomputes a saved result whose version is not the registered one.
    Files of schema version 1 predate it and read as ``"1"``, the version of every lens then."""


class Evidence(BaseModel):
    lens: str
    reading: str
    value: float
    ci_low: float
    ci_high: float


class Verdict(BaseModel):
    """The decision for one forget set or concept group (SPEC §5)."""

    scope: str
    """``forget set`` or a concept group such as ``attribute=city``."""
    label: Label
    """DELETED, SUPPRESSED, NOT_UNLEARNED or INCONCLUSIVE."""
    reason: str
    """One sentence a reviewer can read."""
    deletion_score: float
    """1 minus the largest informative recovery, clipped to [0, 1]."""
    evidence: list[Evidence] = Field(default_factory=list)
    """The numbers behind the label, strongest first."""
    n_items: int = 0


class ModelInfo(BaseModel):
    role: str
    path: str
    hash: str
    architecture: str
    model_type: str
    n_layers: int
    d_model: int
    n_params: int
    converted_from: str | None = None
    hub_id: str | None = None
    """The hub model it was resolved from (``org/name``), its ``revision`` as asked and the
    snapshot's ``commit`` hash."""
    revision: str | None = None
    commit: str | None = None
    adapter: str | None = None
    """A PEFT adapter folder merged into ``adapter_base`` (its ``base_model_name_or_path``)."""
    adapter_base: str | None = None
    adapter_base_commit: str | None = None


class ItemSetInfo(BaseModel):
    path: str
    hash: str
    n_items: int
    format: str = "jsonl"
    """``jsonl`` (our items) or the format adapter that read the set (tofu, wmdp, rwku, qa)."""
    split: str | None = None
    """The dataset split the items came from, if the source had several."""
    distractors_sampled: bool = False
    """Whether distractors were drawn from other items' answers (the data had none)."""
    chat_template: bool = False
    """Whether prompts were wrapped with the base checkpoint's chat template."""
    n_dropped: int = 0
    """Items dropped from scoring because the base model does not know them."""
    notes: list[str] = Field(default_factory=list)
    """How the set was built (adapter choices, sampling, dropped items)."""
    hub_id: str | None = None
    """A hub dataset the set was read from (``org/name``), the ``revision`` asked (or the
    branch it was resolved through), the dataset repository's ``commit`` the data was
    prepared from, and its ``config``; ``None`` for local files."""
    revision: str | None = None
    commit: str | None = None
    config: str | None = None


class AuditLog(BaseModel):
    """Everything one ``audit run`` produced."""

    version: int = SCHEMA_VERSION
    """Schema version of this file."""
    created: str
    """ISO timestamp (UTC) when the run finished (or stopped with an error)."""
    status: Literal["success", "error"] = "success"
    """``success``: the run completed. ``error``: an unexpected error stopped it after the
    models were loaded; ``error`` says what, and ``lenses`` holds the lenses finished before
    it (no verdicts). Bad input and interruptions write no file at all."""
    config: dict[str, Any]
    """The resolved configuration (CLI > config file > defaults)."""
    models: dict[str, ModelInfo]
    """base / unlearned / reference identities with content hashes."""
    items: dict[str, ItemSetInfo]
    """forget / retain item sets."""
    lenses: dict[str, LensResult] = Field(default_factory=dict)
    """Per-lens results, keyed by lens name."""
    verdicts: list[Verdict] = Field(default_factory=list)
    """Verdict for the forget set, then per concept group."""
    retain_utility: dict[str, Any] = Field(default_factory=dict)
    """Retain score of U vs B, and whether it collapsed."""
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds per phase."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Library versions."""
    environment: dict[str, Any] = Field(default_factory=dict)
    """Device, dtype, seed, host facts."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """The policy applied (thresholds, required lenses, failing labels)."""
    policy_result: dict[str, Any] = Field(default_factory=dict)
    """``{"passed": bool, "failures": [...]}``; ``audit run`` exits 1 when it failed."""
    notes: list[str] = Field(default_factory=list)
    """Run-level caveats: each distinct library warning caught during the run, once, with
    its count (``audit.quiet``), instead of on the terminal."""
    error: str | None = None
    """What stopped the run (one line, ``Type: message``) when ``status`` is ``error``."""


def write_log(log: AuditLog, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename."""
    from audit.atomic import atomic_write_text

    return atomic_write_text(path, log.model_dump_json(indent=2))


def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    # version 1 had no lens versions (every lens was at "1") and never set status: a
    # version-1 file was only ever written by a run that finished
    for res in (d.get("lenses") or {}).values():
        if isinstance(res, dict):
            res.setdefault("lens_version", "1")
    d.setdefault("status", "success")
    return d


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
"""``MIGRATIONS[v]`` upgrades a file of schema version ``v`` (as a dict) to ``v + 1``."""


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a results file's dict, of any version up to :data:`SCHEMA_VERSION`, to the current one.

    A file without a ``version`` is taken to be version 1. Runs before validation (inspect_ai's
    pattern), so each step sees the fields as the older version wrote them. ``d`` is changed
    in place.

    Raises:
        ValueError: ``version`` is not a whole number from 1 to :data:`SCHEMA_VERSION`.
    """
    version = d.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"version must be a whole number from 1 to {SCHEMA_VERSION}, got {version!r}")
    for v in range(version, SCHEMA_VERSION):
        d = MIGRATIONS[v](d)
        d["version"] = v + 1
    return d


def read_log(path: str | Path) -> AuditLog:
    """Read and validate an ``audit_log.json``, upgrading an older schema version to the current one.

    Raises:
        InputError: the file is missing, not JSON, not a valid log, or from a newer schema version.
    """
    from audit.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"results file not found: {p}")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
        msg = str(e).splitlines()[0] if isinstance(e, ValueError) else "nested too deeply"
        raise InputError(f"{p} is not a valid audit log: {msg}") from None
    if not isinstance(d, dict):
        raise InputError(f"{p} is not a valid audit log: it holds a JSON {type(d).__name__}, not an object")
    version = d.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise InputError(f"{p} was written by a newer unlearning-audit (results schema version {version}; this one "
                         f"reads versions up to {SCHEMA_VERSION}): upgrade unlearning-audit to read it")
    try:
        return AuditLog.model_validate(migrate(d))
    except ValueError as e:
        raise InputError(f"{p} is not a valid audit log: {str(e).splitlines()[0]}") from None


def json_schema() -> str:
    return json.dumps(AuditLog.model_json_schema(), indent=2)
