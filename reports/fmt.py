"""How a report writes a number: the one home of the report's number formatters.

Every section formats through these, so a missing or non-finite value reads the same
everywhere (``—``), and a change of precision is made once.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"
"""What a missing (None) or non-finite value reads as."""


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (for plotly: a gap, not NaN)."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def num(x: Any, spec: str = ".2f") -> str:
    """``format(x, spec)``, or :data:`MISSING` for None and non-finite floats (``.2f`` by default)."""
    return MISSING if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def pct(fraction: Any, spec: str = ".0f") -> str:
    """A fraction as a percentage number, without the sign (``0.125`` -> ``12``, ``.1f``: ``12.5``)."""
    return num(None if fraction is None else 100 * fraction, spec)


def signed(x: float) -> str:
    """A scale with its sign, shortest form (``+2``, ``-0.5``); zero is ``0``."""
    return "0" if x == 0 else f"{x:+g}"


def seconds(x: float) -> str:
    """A duration: ``12.3s``."""
    return f"{x:.1f}s"


def count(n: int) -> str:
    """A large count with thousands separators: ``1,234,567``."""
    return f"{n:,}"
