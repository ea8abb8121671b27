"""Pre-release policy: thresholds and pass/fail rules, from a YAML file (SPEC §5).

``audit run --policy FILE`` exits 0 when the policy passes, 1 when it fails, 2 on bad
input. The default policy ships as ``audit/default_policy.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from audit.errors import InputError, validate
from audit.schema import AuditLog, Label
from audit.verdict import Thresholds
from audit.yamlio import read_mapping

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")


def _default_fail_on() -> list[Label]:
    return ["NOT_UNLEARNED", "SUPPRESSED", "INCONCLUSIVE"]


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
    fail_on: list[Label] = Field(default_factory=_default_fail_on)
    """Verdict labels (on the whole forget set) that fail the gate."""
    fail_on_groups: bool = False
    """Also fail when a concept group's verdict is in ``fail_on``."""
    fail_on_retain_collapse: bool = True
    """Fail when U's retain score collapsed (dropped by more than ``thresholds.retain_collapse``)."""

    @model_validator(mode="after")
    def _within_meaning(self) -> Policy:
        """Thresholds within their meaning; lens names that exist (checked when a policy is read)."""
        th = self.thresholds

        def num(name: str) -> float | None:
            v = getattr(th, name, None)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        tau_s, tau_d, beh = num("tau_s"), num("tau_d"), num("behavior_recovery")
        if tau_d is not None and not 0 <= tau_d <= 1:
            raise ValueError(f"thresholds.tau_d must be between 0 and 1, not {tau_d}")
        if tau_s is not None and not 0 <= tau_s <= 1:
            raise ValueError(f"thresholds.tau_s must be between 0 and 1, not {tau_s}")
        if tau_s is not None and tau_d is not None and not tau_d < tau_s:
            raise ValueError(f"thresholds.tau_d ({tau_d}) must be below thresholds.tau_s ({tau_s})")
        if beh is not None and not 0 < beh <= 1:
            raise ValueError(f"thresholds.behavior_recovery must be in (0, 1], not {beh}")
        # every other float threshold (present now or added later) is a fraction of a score
        for name, field in type(th).model_fields.items():
            v = num(name)
            if field.annotation is float and v is not None and not (math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"thresholds.{name} must be between 0 and 1, not {v}")
        if self.min_items < 1:
            raise ValueError(f"min_items must be at least 1, not {self.min_items}")
        if not 0 <= self.side_effect_tolerance <= 1:
            raise ValueError(f"side_effect_tolerance must be between 0 and 1, not {self.side_effect_tolerance}")
        if self.retain_floor is not None and not 0 <= self.retain_floor <= 1:
            raise ValueError(f"retain_floor must be between 0 and 1, not {self.retain_floor}")
        return self


def _check_lens_names(policy: Policy, p: Path) -> None:
    """Every lens a policy names must exist (a typo would otherwise cost a full run)."""
    named = [("required_lenses", n) for n in policy.required_lenses]
    named += [("thresholds.required_for_deleted", n)
              for n in getattr(policy.thresholds, "required_for_deleted", ()) or ()]
    if not named:
        return
    import difflib

    from audit.registry import available_lenses

    lenses = list(available_lenses())
    for key, name in named:
        if name not in lenses:
            close = difflib.get_close_matches(name, lenses, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"policy file {p}: key '{key}': unknown lens '{name}'{hint}; "
                             f"available: {', '.join(lenses)}")


def load_policy(path: str | Path | None) -> Policy:
    """Read a policy file (the default policy when ``path`` is None).

    The file is read with :func:`audit.yamlio.read_yaml`'s limits; thresholds must lie
    within their meaning (0 <= tau_d < tau_s <= 1, 0 < behavior_recovery <= 1, other
    thresholds in [0, 1], min_items >= 1) and every lens it names must exist.

    Raises:
        InputError: unreadable file, not YAML, unknown key or bad value (naming the key).
    """
    p = Path(path) if path is not None else DEFAULT_POLICY
    policy = validate(Policy, read_mapping(p, "policy file", "policy keys"), "key", f"policy file {p}")
    _check_lens_names(policy, p)
    return policy


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
