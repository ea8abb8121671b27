"""The project's own error types, and the one way an error becomes a line of text.

Every error a user can cause by bad input is an :class:`InputError`; the CLI turns it
into a one-line message and exit code 2. Anything else escaping the library is a bug.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError


class AuditError(Exception):
    """Base class of every error the auditor raises on purpose."""


class InputError(AuditError):
    """Bad user input: a file, a checkpoint, an option or a policy that cannot be used."""


class LensError(AuditError):
    """A lens could not produce a valid result (e.g. NaN logits); recorded, not fatal."""


MAX_MESSAGE_CHARS = 2000
"""Longest message printed; the rest is cut (a message may quote user input)."""


def one_line(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line: whitespace runs become one space, control and
    unencodable characters (terminal escapes, lone surrogates from undecodable file
    names) become ``\\x..`` escapes, and it is cut at ``limit`` characters.

    The result is plain text, to be printed as is: never as markup.
    """
    s = " ".join(str(text).split())
    out = []
    for ch in s:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def validation_message(err: ValidationError, label: str, where: str | None = None) -> str:
    """The one line for a pydantic validation error: its first problem, naming the key.

    ``{where}: {label} '{key}': {problem}``, e.g. ``policy file p.yaml: key
    'thresholds.tau_x': Extra inputs are not permitted`` or ``f.jsonl:7: field 'answer':
    missing``; without a ``where``, ``{label} '{key}': {problem}``. A missing field reads
    ``missing``; a validator's own message loses pydantic's ``Value error,`` prefix.

    Args:
        err: the error.
        label: what a key is called in this input (``key``, ``config option``, ``field``).
        where: the file (and line or row) the input came from, when there is one.
    """
    first = err.errors()[0]
    key = ".".join(str(x) for x in first["loc"])
    problem = "missing" if first["type"] == "missing" else str(first["msg"]).removeprefix("Value error, ")
    head = f"{where}: " if where else ""
    return f"{head}{label} '{key}': {problem}" if key else f"{where or label}: {problem}"


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, label: str, where: str, *, strict: bool | None = None) -> M:
    """``model.model_validate(data)``, every failure an :class:`InputError` naming ``where``.

    Raises:
        InputError: :func:`validation_message`'s line, or ``{where} is nested too deeply``.
    """
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        raise InputError(validation_message(e, label, where)) from None
    except RecursionError:
        raise InputError(f"{where} is nested too deeply") from None
