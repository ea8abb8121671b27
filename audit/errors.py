"""The project's own error types, and the one way an error becomes a line of text.

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
