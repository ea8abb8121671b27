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
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from audit.errors import InputError, validate

MIN_DISTRACTORS = 3
_PROVENANCE = ("question", "distractors_sampled")


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
    question: str | None = None
    """The bare question, for items adapted from a QA or multiple-choice dataset: under a
    chat template it is the user's message (``prompt`` holds it in the QA template)."""
    distractors_sampled: bool = False
    """Whether the distractors were drawn from other items' answers (the data had none)."""

    @property
    def candidates(self) -> list[str]:
        """The answer followed by its distractors (index 0 is the truth)."""
        return [self.answer, *self.distractors]


def check_item(item: KnowledgeItem, where: str) -> None:
    """Refuse an item with an empty field, fewer than :data:`MIN_DISTRACTORS` distractors, the
    answer among them or a repeated one.

    Raises:
        InputError: naming ``where`` and the item.
    """
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
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        item = validate(KnowledgeItem, obj, "field", where, strict=True)
        check_item(item, where)
        if item.id in seen:
            raise InputError(
                f"{where}: duplicate id '{item.id}' (first seen on line {seen[item.id]})"
            )
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise InputError(f"{source}: no items (the file is empty)")
    return items


@dataclass
class ItemSet:
    """Items plus where they came from, for the results file (``ItemSetInfo``)."""

    items: list[KnowledgeItem]
    source: str
    """The path the items were read from."""
    format: str = "jsonl"
    """``jsonl`` (our own format) or a format adapter's name (see ``audit.formats.FORMATS``)."""
    split: str | None = None
    """The split (or file) of a Hugging Face dataset the items came from."""
    chat_template: bool = False
    """Whether prompts were wrapped with the checkpoint's chat template."""
    n_dropped: int = 0
    """Items dropped from scoring because the base model does not know them."""
    notes: list[str] = field(default_factory=list)
    """What a reader should know about how the set was built."""
    hub: dict[str, str | None] | None = None
    """For a hub dataset (``org/name[@revision]:CONFIG``): ``hub_id``, ``revision``, ``commit``
    and ``config`` (see :mod:`audit.hubdata`)."""

    @property
    def distractors_sampled(self) -> bool:
        return any(it.distractors_sampled for it in self.items)

    def info(self) -> dict:
        """The fields of ``ItemSetInfo`` beyond path, hash and count."""
        return {"format": self.format, "split": self.split, "distractors_sampled": self.distractors_sampled,
                "chat_template": self.chat_template, "n_dropped": self.n_dropped, "notes": list(self.notes),
                **(self.hub or {})}


MAX_LINE_BYTES = 1 << 20
"""Longest JSONL line (one item) read: 1 MiB, far beyond any prompt a model's context holds."""
MAX_FILE_BYTES = 256 << 20
"""Largest item file (or dataset file) read: 256 MiB."""
MAX_PROMPT_CHARS = 200_000
"""Longest prompt or question an item may hold (characters)."""
MAX_ANSWER_CHARS = 10_000
"""Longest answer, distractor, id or tag (characters)."""


def check_item_sizes(items: Sequence[KnowledgeItem], source: str) -> None:
    """Refuse items whose texts are beyond :data:`MAX_PROMPT_CHARS` / :data:`MAX_ANSWER_CHARS`
    (from any format: a dataset adapter reads columns, not lines).

    Raises:
        InputError: naming the source, the item and the field.
    """
    for it in items:
        for name in ("prompt", "question"):
            v = getattr(it, name)
            if v is not None and len(v) > MAX_PROMPT_CHARS:
                raise InputError(f"{source}: item '{it.id[:80]}': field '{name}' has {len(v)} characters; "
                                 f"at most {MAX_PROMPT_CHARS} are read")
        for name, v in (("id", it.id), ("answer", it.answer), ("subject", it.subject),
                        ("attribute", it.attribute), *(("distractors", d) for d in it.distractors)):
            if v is not None and len(v) > MAX_ANSWER_CHARS:
                raise InputError(f"{source}: item '{it.id[:80]}': field '{name}' has {len(v)} characters; "
                                 f"at most {MAX_ANSWER_CHARS} are read")


def write_items(items: Sequence[KnowledgeItem], path: str | Path) -> None:
    """Write items as JSONL (one object per line)."""
    lines = [json.dumps(it.model_dump(exclude_defaults=True), ensure_ascii=False) for it in items]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def items_hash(items: Sequence[KnowledgeItem]) -> str:
    """Content hash of an item set (order-sensitive), for cache keys."""
    h = hashlib.sha256()
    for it in items:
        d = it.model_dump()
        for k in _PROVENANCE:  # left out at their defaults, so older sets keep their hash
            if d[k] == KnowledgeItem.model_fields[k].default:
                del d[k]
        h.update(json.dumps(d, sort_keys=True).encode())
    return h.hexdigest()[:16]
