"""Pre-release policy: thresholds and pass/fail rules, from a YAML file (SPEC §5).

``audit run --policy FILE`` exits 0 when the policy passes, 1 when it fails, 2 on bad
input. The default policy ships as ``audit/default_policy.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.errors import InputError
from audit.schema import AuditLog, Label
from audit.verdict import Thresholds

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")


class Policy(BaseModel):
    """What a release gate requires of an audit."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    thresholds: Thresholds = Field(default_factory=Thresholds)
    """Decision thresholds of the verdict (tau_s, tau_d, behaviour recovery, ...)."""
    required_lenses: list[str] = Field(default_factory=list)
    """Lenses that must have run without error."""
    min_items: int = 20
    """Fewest forget items an audit may rest on (fewer is an input error)."""
    retain_floor: float | None = None
    """Lowest acceptable retain score of the unlearned model (None: not checked)."""
    side_effect_tolerance: float = 0.05
    """Retain drop an intervention may cause and still count as recovery."""
    fail_on: list[Label] = Field(default_factory=lambda: ["NOT_UNLEARNED", "SUPPRESSED", "INCONCLUSIVE"])
    """Verdict labels (on the whole forget set) that fail the gate."""
    fail_on_groups: bool = False
    """Also fail when a concept group's verdict is in ``fail_on``."""
    fail_on_retain_collapse: bool = True
    """Fail when U's retain score collapsed (dropped by more than ``thresholds.retain_collapse``)."""


def load_policy(path: str | Path | None) -> Policy:
    """Read a policy file (the default policy when ``path`` is None).

    Raises:
        InputError: unreadable file, not YAML, unknown key or bad value (naming the key).
    """
    p = Path(path) if path is not None else DEFAULT_POLICY
    if not p.is_file():
        raise InputError(f"policy file not found: {p}")
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"policy file {p} is not valid YAML: {why}") from None
    except RecursionError:
        raise InputError(f"policy file {p} is nested too deeply") from None
    except OSError as e:
        raise InputError(f"cannot read policy file {p}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"policy file {p} must hold a mapping of policy keys")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(policy)"
        raise InputError(f"policy file {p}: key '{key}': {err['msg']}") from None
    except RecursionError:
        raise InputError(f"policy file {p} is nested too deeply") from None


def evaluate(log: AuditLog, policy: Policy) -> dict[str, Any]:
    """Check a finished audit against a policy; returns ``{"passed", "failures"}``."""
    failures: list[str] = []
    for name in policy.required_lenses:
        res = log.lenses.get(name)
        if res is None:
            failures.append(f"required lens '{name}' did not run")
        elif res.error:
            failures.append(f"required lens '{name}' failed: {res.error}")
    scopes = log.verdicts if policy.fail_on_groups else log.verdicts[:1]
    for v in scopes:
        if v.label in policy.fail_on:
            failures.append(f"{v.scope}: {v.label} — {v.reason}")
    ru = log.retain_utility
    if policy.fail_on_retain_collapse and ru.get("collapsed"):
        failures.append(f"retain collapsed: U's retain score {ru['unlearned']:.2f} vs B's {ru['base']:.2f}")
    if policy.retain_floor is not None and ru and ru["unlearned"] < policy.retain_floor:
        failures.append(f"retain score {ru['unlearned']:.2f} is below the floor {policy.retain_floor:.2f}")
    return {"passed": not failures, "failures": failures}
