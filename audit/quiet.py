"""A quiet terminal during a run: library warnings are counted, not printed (issue #23).

scikit-learn, torch, transformers and friends warn from inside loops ("number of unique
classes", convergence, torch's ``index_reduce`` beta notice, transformers' deprecations),
so a run used to repeat the same lines over its progress bars. :func:`quiet_warnings`
catches every ``warnings.warn`` and every WARNING record of the libraries' own loggers
while a run lasts, and keeps each distinct (category, message) once with its count, for
the results' notes. Errors logged by the libraries still reach the user, and so does an
:class:`AuditWarning` (the category for warnings ``audit`` means for its user), once per
message. Standard library only: ``warnings.catch_warnings`` + ``warnings.showwarning``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from audit.errors import one_line

LIBRARY_LOGGERS = ("transformers", "transformer_lens", "sae_lens", "huggingface_hub", "datasets", "accelerate")
"""Loggers whose WARNING records are caught like warnings (they bypass ``warnings``)."""

_SELF_CONFIGURING = {"transformers": "transformers.utils.logging", "datasets": "datasets.utils.logging"}
"""Libraries that attach their own stderr handler when first imported: imported before
their handlers are taken, so a first import during the run cannot add a printing one."""

MAX_DISTINCT = 200
"""Distinct warnings kept; more are counted together (a message with a counter in it
must not grow the notes without bound)."""

MAX_MESSAGE_CHARS = 500


class AuditWarning(UserWarning):
    """A warning ``audit`` gives its user: shown (once per message), never only recorded."""


@dataclass
class CaughtWarnings:
    """Distinct warnings seen, in order of first occurrence, with their counts."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    """``(category, message)`` -> occurrences."""
    first_at: dict[tuple[str, str], str] = field(default_factory=dict)
    """``(category, message)`` -> ``file:line`` of the first occurrence."""
    n_other: int = 0
    """Occurrences of warnings beyond :data:`MAX_DISTINCT` distinct ones."""

    def add(self, category: str, message: str, where: str) -> bool:
        """Count one occurrence; returns whether it is the first of its kind."""
        key = (category, one_line(message, MAX_MESSAGE_CHARS))
        if key in self.counts:
            self.counts[key] += 1
            return False
        if len(self.counts) >= MAX_DISTINCT:
            self.n_other += 1
            return False
        self.counts[key], self.first_at[key] = 1, where
        return True

    def __len__(self) -> int:
        return sum(self.counts.values()) + self.n_other

    def notes(self) -> list[str]:
        """One note per distinct warning: ``warning (N×, first at FILE:LINE) Category: message``."""
        out = [f"warning ({n}×, first at {self.first_at[k]}) {k[0]}: {k[1]}" for k, n in self.counts.items()]
        if self.n_other:
            out.append(f"warnings: {self.n_other} more of other kinds (only the first {MAX_DISTINCT} kinds are kept)")
        return out


def _short(path: str) -> str:
    """A warning's file, from its package on (``sklearn/linear_model/_logistic.py``)."""
    parts = path.replace(os.sep, "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(marker):])
    return "/".join(parts[-2:])


class _LoggerCatcher(logging.Handler):
    """Stands in for a library logger's handlers: WARNING records are counted, the rest
    goes where it went before."""

    def __init__(self, caught: CaughtWarnings, saved: dict[str, tuple[list, bool]]) -> None:
        super().__init__(logging.NOTSET)
        self.caught, self.saved = caught, saved

    def emit(self, record: logging.LogRecord) -> None:
        if logging.WARNING <= record.levelno < logging.ERROR:
            try:
                msg = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed record must not fail the run
                msg = str(record.msg)
            self.caught.add(f"{record.name} {record.levelname.lower()}", msg, f"{_short(record.pathname)}:{record.lineno}")
            return
        for name, (handlers, propagate) in self.saved.items():  # errors (and debug output asked for)
            if record.name == name or record.name.startswith(name + "."):
                for h in handlers:
                    if record.levelno >= h.level:
                        h.handle(record)
                parent = logging.getLogger(name).parent
                if propagate and parent is not None:
                    parent.callHandlers(record)
                return


@contextmanager
def quiet_warnings(loggers: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[CaughtWarnings]:
    """Catch library warnings (``warnings`` and the ``loggers``' WARNING records) while the
    block runs; yields the :class:`CaughtWarnings` that counts them.

    Every occurrence is counted whatever the warning filters say (an ``error`` filter
    still raises). An :class:`AuditWarning` is also shown, once per message.
    """
    caught = CaughtWarnings()
    for name in loggers:
        module = _SELF_CONFIGURING.get(name)
        if module and name not in sys.modules and importlib.util.find_spec(name) is not None:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - a broken optional library is the run's business, not ours
                pass
    with warnings.catch_warnings():
        errors = [f for f in warnings.filters if f[0] == "error"]
        warnings.simplefilter("always")
        for _, msg, cat, mod, lineno in reversed(errors):
            for c in cat if isinstance(cat, tuple) else (cat,):
                warnings.filterwarnings("error", msg.pattern if msg else "", c, mod.pattern if mod else "", lineno)
        show = warnings.showwarning
        shown: set[tuple[str, str]] = set()

        def showwarning(message, category, filename, lineno, file=None, line=None):
            caught.add(category.__name__, str(message), f"{_short(filename)}:{lineno}")
            if issubclass(category, AuditWarning) and (category.__name__, str(message)) not in shown:
                shown.add((category.__name__, str(message)))
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        saved: dict[str, tuple[list, bool]] = {}
        lowered: dict[str, int] = {}
        handler = _LoggerCatcher(caught, saved)
        for name in loggers:
            lg = logging.getLogger(name)
            saved[name] = (list(lg.handlers), lg.propagate)
            for h in saved[name][0]:
                lg.removeHandler(h)
            lg.addHandler(handler)
            lg.propagate = False
            if lg.getEffectiveLevel() > logging.WARNING:  # e.g. the CLI's ERROR: count them all the same
                lowered[name] = lg.level
                lg.setLevel(logging.WARNING)
        try:
            yield caught
        finally:
            for name, (handlers, propagate) in saved.items():
                lg = logging.getLogger(name)
                lg.removeHandler(handler)
                for h in handlers:
                    lg.addHandler(h)
                lg.propagate = propagate
                # a level a library set meanwhile (transformer_lens silences transformers on import) stays
                if name in lowered and lg.level == logging.WARNING:
                    lg.setLevel(lowered[name])
