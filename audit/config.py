"""Typed run configuration. Precedence: CLI > config file (YAML) > defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.errors import InputError, validation_message
from audit.yamlio import read_mapping, read_yaml  # noqa: F401  (read_yaml: its old home, still importable)


class AuditConfig(BaseModel):
    """Everything ``audit run`` needs; saved, resolved, in the results file.

    Each field's ``description`` is its one help text: ``audit run`` and ``audit plan`` show
    it as the option's ``--help`` (``tests/test_cli_options.py`` holds the two together).
    Fields in :data:`CONFIG_FILE_ONLY` are set in a ``--config`` file only.
    """

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="Checkpoint before unlearning: a Hugging Face folder, a .gguf file, a hub ID "
                                  "org/name or org/name@revision, or a PEFT adapter folder.")
    unlearned: str = Field(description="Checkpoint after unlearning, in the same forms as the base (an adapter is "
                                       "merged into its base model).")
    reference: str | list[str] | None = Field(
        None, description="Model that never learned the forget set (optional, strongly recommended); repeat for "
                          "several (e.g. retrains with other seeds): their spread enters every CI.")
    forget: str = Field(description="Forget set: JSONL, or a local Hugging Face dataset (save_to_disk folder, "
                                    "parquet/json/csv; PATH:SPLIT picks a split).")
    retain: str = Field(description="Retain set, in the same forms as the forget set.")
    format: str | None = Field(None, description="Item format of both sets: jsonl, tofu, wmdp, rwku or qa "
                                                 "(default: detected from the columns).")
    qa_template: str = Field("Question: {question}\nAnswer:",
                             description="Prompt around a dataset question, with {question} where it goes.")
    mc_mode: Literal["text", "letter"] = Field(
        "text", description="Multiple choice: score the choice texts ('text') or the letters A/B/C/D of listed "
                            "choices ('letter').")
    chat_template: Literal["auto", "none"] = Field(
        "none", description="'auto': wrap prompts with the base checkpoint's chat template when it has one; 'none'.")
    drop_unknown: bool = Field(False, description="Drop items the base model does not know before scoring "
                                                  "(counted in the results).")
    identical_candidates: Literal["error", "drop"] = Field(
        "error", description="Items whose candidates tokenize identically (no lens can tell them apart): 'error' "
                             "names them before any lens runs; 'drop' leaves them out, with a note.")
    out: str = Field("audit_out", description="Output folder for audit_log.json, report.html and side files.")
    lenses: list[str] = Field(
        default_factory=lambda: ["default"],
        description="Lenses to run, comma-separated (see `audit lenses`), or a named set: 'default' (the battery "
                    "that can reach every label; the default), 'quick' (behavior only: a first look, never "
                    "DELETED) or 'full' (every registered lens).")
    lens_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-lens arguments, keyed by lens name (see `audit lenses`).")
    seed: int = Field(0, description="Seed for every random choice (splits, bootstrap, controls, sampling).")
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda or cuda:1.")
    dtype: str = Field("float32", description="Weights dtype: float32, bfloat16 or float16 (scores are computed "
                                              "in fp32).")
    batch_size: int = Field(32, ge=1, description="Sequences per forward pass.")
    max_items: int | None = Field(None, ge=1, description="Use at most this many items from each set (the first "
                                                          "ones), for quick runs.")
    allow_pickle: bool = Field(False, description="Allow pickle-based weights (.bin), read with weights_only=True.")
    trust_remote_code: bool = Field(False, description="Let transformers run code shipped with a checkpoint.")
    min_power: float = Field(0.2, description="S(B) - S(N) below this makes a lens uninformative (SPEC §4.3).")
    policy: str | None = Field(None, description="Policy YAML (thresholds, required lenses, failing labels); "
                                                 "`audit run` exits 1 when it fails (default: the shipped policy).")
    cache_dir: str | None = Field(None, description="Activation cache folder (default: $AUDIT_CACHE/activations).")
    low_memory: bool = Field(False, description="Hold one model's weights at a time: B, U and N are never "
                                                "resident together (each is read back from its checkpoint when "
                                                "next used, which costs load time).")
    resume: bool = Field(False, description="Reuse the lenses an interrupted run into the same output folder "
                                            "completed (kept in its .partial folder), when their inputs, settings "
                                            "and code version are unchanged.")

    @property
    def references(self) -> list[str]:
        """The reference checkpoints, as a list (empty without one)."""
        if self.reference is None:
            return []
        return [self.reference] if isinstance(self.reference, str) else list(self.reference)


CONFIG_FILE_ONLY = frozenset({"lens_options", "min_power", "cache_dir"})
""":class:`AuditConfig` fields with no ``audit run`` option: set them in a ``--config`` file.
Every other field is an option of ``audit run`` and ``audit plan`` (``--`` + its name with
dashes; ``format`` is ``--format``)."""


def load_config(path: str | Path | None, overrides: dict[str, Any], *, check: bool = True) -> AuditConfig:
    """Merge a YAML config file with CLI overrides (non-None values win), then check it.

    With ``check`` (the default) the resolved config goes through :func:`check_config`,
    so every bad option, device, output folder or policy is an error here, before any
    model loads.

    Raises:
        InputError: unreadable file, unknown key or bad value (naming the key).
    """
    p = Path(path) if path is not None else None
    from_file = read_mapping(p, "config file", "options") if p is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    data = {**from_file, **given}
    try:
        cfg = AuditConfig.model_validate(data)
    except ValidationError as e:
        # name the file when the bad option came from it (a CLI value wins over the file's)
        top = e.errors()[0]["loc"][:1]
        in_file = bool(top) and top[0] in from_file and top[0] not in given
        raise InputError(validation_message(e, "config option", f"config file {p}" if in_file else None)) from None
    except RecursionError:
        raise InputError(f"config file {p} is nested too deeply" if p is not None
                         else "the config is nested too deeply") from None
    if check:
        check_config(cfg)
    return cfg


SEED_MAX = 2**32 - 1
"""Largest seed (numpy's and torch's generators take 0 .. 2**32 - 1 everywhere)."""
N_BOOT_MAX = 100_000
"""Most bootstrap resamples a lens may draw (each holds a row per resample in memory)."""


def _check_lens_options(cfg: AuditConfig) -> list[str]:
    """Validate every lens's options now; returns the expanded lens names."""
    import math

    from audit.registry import expand_lenses, get_lens

    names = expand_lenses(cfg.lenses)
    if not names:
        raise InputError("no lens to run: --lenses names none (see `audit lenses`)")
    for name in names:
        spec = get_lens(name)  # unknown names: "did you mean"
        lens_cfg = spec.make_config(cfg.lens_options.get(name) or {})
        for key, field in spec.config_cls.model_fields.items():
            value = getattr(lens_cfg, key)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"lens '{name}' option '{key}': must be a finite number, not {value}")
            # a count without a declared bound (n_boot, folds, top_k, ...) must still be >= 1
            bounded = any(hasattr(m, "ge") or hasattr(m, "gt") for m in field.metadata)
            if (field.annotation is int and not bounded and isinstance(field.default, int)
                    and field.default >= 1 and value < 1):
                raise InputError(f"lens '{name}' option '{key}': must be at least 1, not {value}")
        n_boot = getattr(lens_cfg, "n_boot", None)
        if isinstance(n_boot, int) and n_boot > N_BOOT_MAX:
            raise InputError(f"lens '{name}' option 'n_boot': at most {N_BOOT_MAX}, not {n_boot}")
    return names


def _same_file(a: Path, b: Path) -> bool:
    try:
        # a folder is a dataset with splits: forget and retain may name it both (each takes its own split)
        if not (a.is_file() and b.is_file()):
            return False
        if a.resolve() == b.resolve():
            return True
        if a.stat().st_size != b.stat().st_size or a.stat().st_size > (256 << 20):
            return a.samefile(b)
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _check_out(cfg: AuditConfig) -> None:
    """The output folder: a folder (or creatable), writable, outside every input checkpoint."""
    import tempfile

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; it must be a folder (audit_log.json and report.html go in it)")
    for name in ("audit_log.json", "report.html"):
        if (out / name).is_dir():
            raise InputError(f"--out {out}: {out / name} is a folder; results cannot be written there")
    if (out / ".partial").exists() and not (out / ".partial").is_dir():
        raise InputError(f"--out {out}: {out / '.partial'} is a file; lens checkpoints cannot be written there")
    ro = out.resolve()
    for role, ck in [("base", cfg.base), ("unlearned", cfg.unlearned),
                     *(("reference", r) for r in cfg.references)]:
        ckp = Path(ck).resolve()
        if ckp.is_dir() and (ro == ckp or ckp in ro.parents):
            raise InputError(f"--out {out} is inside the {role} checkpoint {ck}; choose a folder outside it")
    # the nearest folder that exists must take a new file (a read-only folder fails here)
    probe = ro
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"--out {out}: {probe} is a file, so the folder cannot be created")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".audit-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"--out {out} is not writable ({probe}: {e.strerror or e})") from None


def check_config(cfg: AuditConfig) -> None:
    """Check a resolved config at the door, before any model loads or any file is written.

    Seed range, dtype, device, checkpoint paths, output folder, forget != retain, the
    policy (thresholds within their meaning, required lenses that exist), the lens names
    and every lens's options.

    Raises:
        InputError: naming the option and what is wrong with it.
    """
    from audit.models import DTYPES, check_device, parse_hub_id
    from audit.policy import load_policy

    if not 0 <= cfg.seed <= SEED_MAX:
        raise InputError(f"config option 'seed': must be between 0 and {SEED_MAX}, not {cfg.seed}")
    if cfg.dtype not in DTYPES:
        raise InputError(f"unknown dtype '{cfg.dtype}'; choose one of {', '.join(DTYPES)}")
    check_device(cfg.device)
    for role, ck in [("base", cfg.base), ("unlearned", cfg.unlearned),
                     *(("reference", r) for r in cfg.references)]:
        if not Path(ck).exists() and parse_hub_id(ck) is None:
            raise InputError(f"checkpoint not found: {ck} (--{role}); give a folder, a .gguf file, a PEFT "
                             "adapter folder or a hub ID org/name[@revision]")
    if _same_file(Path(cfg.forget), Path(cfg.retain)):
        raise InputError(f"--forget and --retain are the same item set ({cfg.forget}); the retain set must be "
                         "facts the unlearning was meant to keep")
    load_policy(cfg.policy)
    _check_lens_options(cfg)
    _check_out(cfg)
