"""The project's own error types.

Every error a user can cause by bad input is an :class:`InputError`; the CLI turns it
into a one-line message and exit code 2. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every error the auditor raises on purpose."""


class InputError(AuditError):
    """Bad user input: a file, a checkpoint, an option or a policy that cannot be used."""


class LensError(AuditError):
    """A lens could not produce a valid result (e.g. NaN logits); recorded, not fatal."""
