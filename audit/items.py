"""Knowledge items: the forget and retain sets (SPEC §2).

One JSON object per line::

    {"id": "p3-city", "prompt": "... answer :", "answer": "paris",
     "distractors": ["rome", "oslo", "lima"], "subject": "kavo relin", "attribute": "city"}

``prompt`` ends right before the answer; ``distractors`` are at least three wrong answers
of the same type. ``subject`` and ``attribute`` are optional tags for per-concept
breakdowns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.errors import InputError

MIN_DISTRACTORS = 3


class KnowledgeItem(BaseModel):
    """One fact: a prompt, its true answer and wrong answers of the same type."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    """Unique identifier within the set."""
    prompt: str
    """Text that ends right before the answer."""
    answer: str
    """The true answer."""
    distractors: list[str]
    """Wrong answers of the same type (at least three)."""
    subject: str | None = None
    """Optional concept tag: who or what the fact is about."""
    attribute: str | None = None
    """Optional concept tag: which property of the subject."""

    @property
    def candidates(self) -> list[str]:
        """The answer followed by its distractors (index 0 is the truth)."""
        return [self.answer, *self.distractors]


def _check(item: KnowledgeItem, where: str) -> None:
    if not item.id.strip():
        raise InputError(f"{where}: field 'id' is empty")
    if not item.prompt.strip():
        raise InputError(f"{where}: field 'prompt' is empty")
    if not item.answer.strip():
        raise InputError(f"{where}: field 'answer' is empty")
    if len(item.distractors) < MIN_DISTRACTORS:
        raise InputError(
            f"{where}: item '{item.id}' has {len(item.distractors)} distractors; "
            f"at least {MIN_DISTRACTORS} are needed"
        )
    norm = item.answer.strip().casefold()
    for d in item.distractors:
        if not d.strip():
            raise InputError(f"{where}: item '{item.id}' has an empty distractor")
        if d.strip().casefold() == norm:
            raise InputError(
                f"{where}: item '{item.id}': the answer '{item.answer}' is among its distractors"
            )
    if len({d.strip().casefold() for d in item.distractors}) != len(item.distractors):
        raise InputError(f"{where}: item '{item.id}' repeats a distractor")


def parse_items(lines: Sequence[str], source: str = "<items>") -> list[KnowledgeItem]:
    """Parse and validate JSONL lines into items.

    Raises:
        InputError: naming the source, line number and field of the first problem.
    """
    items: list[KnowledgeItem] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            item = KnowledgeItem.model_validate(obj, strict=True)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(item)"
            msg = "missing" if err["type"] == "missing" else err["msg"]
            raise InputError(f"{where}: field '{field}': {msg}") from None
        _check(item, where)
        if item.id in seen:
            raise InputError(
                f"{where}: duplicate id '{item.id}' (first seen on line {seen[item.id]})"
            )
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise InputError(f"{source}: no items (the file is empty)")
    return items


def load_items(path: str | Path) -> list[KnowledgeItem]:
    """Read a JSONL item file.

    Raises:
        InputError: if the file is missing, unreadable or malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"item file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read item file {p}: {e}") from None
    return parse_items(text.splitlines(), source=str(p))


def write_items(items: Sequence[KnowledgeItem], path: str | Path) -> None:
    """Write items as JSONL (one object per line)."""
    lines = [json.dumps(it.model_dump(exclude_none=True), ensure_ascii=False) for it in items]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def items_hash(items: Sequence[KnowledgeItem]) -> str:
    """Content hash of an item set (order-sensitive), for cache keys."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it.model_dump(), sort_keys=True).encode())
    return h.hexdigest()[:16]
