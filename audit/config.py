"""Typed run configuration. Precedence: CLI > config file (YAML) > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.errors import InputError


class AuditConfig(BaseModel):
    """Everything ``audit run`` needs; saved, resolved, in the results file."""

    model_config = ConfigDict(extra="forbid")

    base: str
    """Checkpoint before unlearning (HF directory or .gguf file)."""
    unlearned: str
    """Checkpoint after unlearning."""
    reference: str | list[str] | None = None
    """Model(s) that never learned the forget set (optional, strongly recommended). Several
    never-trained models (retrains with other seeds) put their spread into every CI."""
    forget: str
    """Forget set: our JSONL, or a local Hugging Face dataset (``PATH:SPLIT`` picks a split)."""
    retain: str
    """Retain set, in the same forms as ``forget``."""
    format: str | None = None
    """Item format of both sets: jsonl, tofu, wmdp, rwku or qa (default: detected from the columns)."""
    qa_template: str = "Question: {question}\nAnswer:"
    """Prompt around a dataset's question (``{question}`` marks where it goes)."""
    mc_mode: Literal["text", "letter"] = "text"
    """Multiple choice: score the choice texts, or the letters A/B/C/D of listed choices."""
    chat_template: Literal["auto", "none"] = "none"
    """``auto``: wrap prompts with the base checkpoint's chat template when it has one."""
    drop_unknown: bool = False
    """Drop items the base model does not know before scoring (counted in the results)."""
    out: str = "audit_out"
    """Output folder for audit_log.json, report.html and side files."""
    lenses: list[str] = Field(default_factory=lambda: ["default"])
    """Lenses to run (see ``audit lenses``), or a named set: ``default`` (the battery that can
    reach every label), ``quick`` (behavior only: a first look, never DELETED), ``full``."""
    lens_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-lens arguments, keyed by lens name."""
    seed: int = 0
    """Seed for every random choice (splits, bootstrap, controls, sampling)."""
    device: str = "cpu"
    """torch device."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16 (scores are computed in fp32)."""
    batch_size: int = Field(32, ge=1)
    """Sequences per forward pass."""
    max_items: int | None = Field(None, ge=1)
    """Use at most this many items from each set (first ones), for quick runs."""
    allow_pickle: bool = False
    """Allow pickle-based weights (.bin), read with weights_only=True."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with a checkpoint."""
    min_power: float = 0.2
    """S(B) - S(N) below this makes a lens uninformative (SPEC §4.3)."""
    policy: str | None = None
    """Policy YAML (thresholds, required lenses, failing labels); default: the shipped one."""
    cache_dir: str | None = None
    """Activation cache folder (default: $AUDIT_CACHE/activations)."""
    resume: bool = False
    """Reuse lenses completed by an earlier, interrupted run into the same ``out`` folder
    (``out/.partial``), when their inputs, settings and code version are unchanged."""


    @property
    def references(self) -> list[str]:
        """The reference checkpoints, as a list (empty without one)."""
        if self.reference is None:
            return []
        return [self.reference] if isinstance(self.reference, str) else list(self.reference)


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> AuditConfig:
    """Merge a YAML config file with CLI overrides (non-None values win).

    Raises:
        InputError: unreadable file, unknown key or bad value (naming the key).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise InputError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(f"config file {p} must hold a mapping of options")
        data.update(loaded or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise InputError(f"config option '{key}': {err['msg']}") from None
