"""Typed run configuration. Precedence: CLI > config file (YAML) > defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.errors import InputError, one_line


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
    identical_candidates: Literal["error", "drop"] = "error"
    """Items with two candidates that tokenize identically (no lens can tell them apart):
    ``error`` names them before any lens runs; ``drop`` leaves them out, with a note."""
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


# ---------------------------------------------------------------------------------------
# YAML read with limits (config and policy files): a few KB of hand-written options. The
# limits refuse what no such file needs and what could exhaust memory or the stack: an
# alias bomb (a few lines whose aliases expand to billions of nodes downstream), a
# self-referencing anchor, nesting thousands deep, or a huge file.
# ---------------------------------------------------------------------------------------

YAML_MAX_BYTES = 256 * 1024
"""Largest config or policy file read."""
YAML_MAX_DEPTH = 32
"""Deepest nesting of mappings and sequences, aliases expanded."""
YAML_MAX_NODES = 20_000
"""Most nodes (scalars, sequences, mappings), every alias counted as what it expands to."""
YAML_MAX_ALIASES = 32
"""Most aliases (``*name``) in one document."""


class _YAMLLimit(Exception):
    """A document beyond one of the limits above."""


def _parser_bases() -> tuple[type, ...]:
    # libyaml's parser (fast, and iterative: it refuses nesting beyond its own bound) with
    # PyYAML's Python composer, so every node passes through the counting compose_node
    try:
        from yaml._yaml import CParser

        return (CParser,)
    except ImportError:  # PyYAML without libyaml
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        return (Reader, Scanner, Parser)


_PARSER = _parser_bases()


class _LimitedLoader(*_PARSER, yaml.composer.Composer, yaml.constructor.SafeConstructor,  # type: ignore[misc]
                     yaml.resolver.Resolver):
    """PyYAML's safe loader with a node, depth and alias budget checked while composing."""

    def __init__(self, stream: str) -> None:
        if len(_PARSER) == 1:
            _PARSER[0].__init__(self, stream)  # type: ignore[misc]
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = self._nodes = self._aliases = 0

    # the Python composer's methods, not CParser's own (which compose in C, uncounted)
    get_single_node = yaml.composer.Composer.get_single_node
    compose_document = yaml.composer.Composer.compose_document
    compose_scalar_node = yaml.composer.Composer.compose_scalar_node
    compose_sequence_node = yaml.composer.Composer.compose_sequence_node
    compose_mapping_node = yaml.composer.Composer.compose_mapping_node

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > YAML_MAX_ALIASES:
                raise _YAMLLimit(f"it uses more than {YAML_MAX_ALIASES} aliases (*name)")
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            raise _YAMLLimit(f"it is nested too deeply (more than {YAML_MAX_DEPTH} levels)")
        try:
            node = yaml.composer.Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
        self._nodes += 1
        if self._nodes > YAML_MAX_NODES:
            raise _YAMLLimit(f"it has more than {YAML_MAX_NODES} values")
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand beyond the node or depth budget, or loop."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(n: yaml.Node) -> list[yaml.Node]:
        if isinstance(n, yaml.SequenceNode):
            return list(n.value)
        if isinstance(n, yaml.MappingNode):
            return [x for kv in n.value for x in kv]
        return []

    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            kids = [done[id(c)] for c in children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            if size > YAML_MAX_NODES:
                raise _YAMLLimit(f"its aliases expand to more than {YAML_MAX_NODES} values")
            if depth > YAML_MAX_DEPTH:
                raise _YAMLLimit(f"its aliases expand to more than {YAML_MAX_DEPTH} levels of nesting")
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in entered:  # entered and not left: an ancestor of itself
            raise _YAMLLimit("an alias refers to a node that contains it (a loop)")
        entered.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        what = ", ".join(x for x in (e.context, e.problem) if x) or type(e).__name__
        mark = e.problem_mark or e.context_mark
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what
    return one_line(str(e)) or type(e).__name__


def read_yaml(path: str | Path, what: str) -> Any:
    """Read a small YAML file safely: size, nesting, value and alias limits; strict UTF-8.

    Args:
        path: the file.
        what: what it is, for messages (``config file``, ``policy file``).

    Raises:
        InputError: missing, unreadable, too big, not UTF-8, not YAML, or beyond a limit;
            one line naming the file and the reason.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        with p.open("rb") as fh:
            raw = fh.read(YAML_MAX_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise InputError(f"{what} {p} is larger than {YAML_MAX_BYTES // 1024} KiB; is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _YAMLLimit as e:
        raise InputError(f"{what} {p} is refused: {e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{what} {p} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise InputError(f"{what} {p} is nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar the safe constructor chokes on
        raise InputError(f"{what} {p} is not valid YAML: {one_line(str(e)) or type(e).__name__}") from None
    finally:
        loader.dispose()


def load_config(path: str | Path | None, overrides: dict[str, Any], *, check: bool = True) -> AuditConfig:
    """Merge a YAML config file with CLI overrides (non-None values win), then check it.

    With ``check`` (the default) the resolved config goes through :func:`check_config`,
    so every bad option, device, output folder or policy is an error here, before any
    model loads.

    Raises:
        InputError: unreadable file, unknown key or bad value (naming the key).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml(p, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(f"config file {p} must hold a mapping of options")
        data.update(loaded or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = AuditConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(config)"
        raise InputError(f"config option '{key}': {err['msg']}") from None
    except RecursionError:
        raise InputError("the config is nested too deeply") from None
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
    from audit.models import DTYPES, check_device
    from audit.policy import load_policy

    if not 0 <= cfg.seed <= SEED_MAX:
        raise InputError(f"config option 'seed': must be between 0 and {SEED_MAX}, not {cfg.seed}")
    if cfg.dtype not in DTYPES:
        raise InputError(f"unknown dtype '{cfg.dtype}'; choose one of {', '.join(DTYPES)}")
    check_device(cfg.device)
    for role, ck in [("base", cfg.base), ("unlearned", cfg.unlearned),
                     *(("reference", r) for r in cfg.references)]:
        if not Path(ck).exists():
            raise InputError(f"checkpoint not found: {ck} (--{role})")
    if _same_file(Path(cfg.forget), Path(cfg.retain)):
        raise InputError(f"--forget and --retain are the same item set ({cfg.forget}); the retain set must be "
                         "facts the unlearning was meant to keep")
    load_policy(cfg.policy)
    _check_lens_options(cfg)
    _check_out(cfg)
