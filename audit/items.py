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
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        item = validate(KnowledgeItem, obj, "field", where, strict=True)
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


@dataclass
class ItemSet:
    """Items plus where they came from, for the results file (``ItemSetInfo``)."""

    items: list[KnowledgeItem]
    source: str
    """The path the items were read from."""
    format: str = "jsonl"
    """``jsonl`` (our own format) or a format adapter's name (see ``audit.adapters.FORMATS``)."""
    split: str | None = None
    """The split (or file) of a Hugging Face dataset the items came from."""
    chat_template: bool = False
    """Whether prompts were wrapped with the checkpoint's chat template."""
    n_dropped: int = 0
    """Items dropped from scoring because the base model does not know them."""
    notes: list[str] = field(default_factory=list)
    """What a reader should know about how the set was built."""

    @property
    def distractors_sampled(self) -> bool:
        return any(it.distractors_sampled for it in self.items)

    def info(self) -> dict:
        """The fields of ``ItemSetInfo`` beyond path, hash and count."""
        return {"format": self.format, "split": self.split, "distractors_sampled": self.distractors_sampled,
                "chat_template": self.chat_template, "n_dropped": self.n_dropped, "notes": list(self.notes)}


MAX_LINE_BYTES = 1 << 20
"""Longest JSONL line (one item) read: 1 MiB, far beyond any prompt a model's context holds."""
MAX_FILE_BYTES = 256 << 20
"""Largest item file (or dataset file) read: 256 MiB."""
MAX_PROMPT_CHARS = 200_000
"""Longest prompt or question an item may hold (characters)."""
MAX_ANSWER_CHARS = 10_000
"""Longest answer, distractor, id or tag (characters)."""


def _check_file_size(p: Path) -> None:
    try:
        size = p.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read item file {p}: {e.strerror or e}") from None
    if size > MAX_FILE_BYTES:
        raise InputError(f"item file {p} is {size / (1 << 20):.0f} MiB; at most {MAX_FILE_BYTES >> 20} MiB "
                         "is read (split the set, or use --max-items on a smaller copy)")


def read_lines(p: Path) -> list[str]:
    """The lines of a UTF-8 text file, read with :data:`MAX_FILE_BYTES` and
    :data:`MAX_LINE_BYTES` limits (memory stays near the file's size, whatever it holds).

    Raises:
        InputError: missing, unreadable, too big, a line too long, or not UTF-8 (naming the line).
    """
    if not p.is_file():
        raise InputError(f"item file not found: {p}")
    _check_file_size(p)
    lines: list[str] = []
    try:
        with p.open("rb") as fh:
            for lineno in range(1, 1 << 62):
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(f"{p}:{lineno}: line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                     "an item this long cannot fit a model's context")
                try:
                    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"cannot read item file {p}: line {lineno} is not UTF-8 text "
                                     f"(byte {e.start}: {e.reason})") from None
                lines.append(text.rstrip("\r\n"))
    except OSError as e:
        raise InputError(f"cannot read item file {p}: {e.strerror or e}") from None
    return lines


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


def load_item_set(path: str | Path, fmt: str | None = None, *, role: str | None = None, **options) -> ItemSet:
    """Read an item set: our JSONL, or a local Hugging Face dataset through a format adapter.

    ``path`` is a ``.jsonl`` file, a ``save_to_disk`` folder, a ``.parquet`` / ``.json`` /
    ``.csv`` file or a folder of them; ``PATH:SPLIT`` picks one split. ``fmt`` names a
    format (``jsonl``, ``tofu``, ``wmdp``, ``rwku``, ``qa``); ``None`` detects it from the
    columns. ``role`` (``forget`` / ``retain``) picks a split by name when several exist.
    ``options`` go to the adapter (``qa_template``, ``mc_mode``, ``seed``, ``n_distractors``).

    Files are read with size limits (:data:`MAX_FILE_BYTES`; JSONL lines
    :data:`MAX_LINE_BYTES`), and every item's texts with :func:`check_item_sizes`.

    Raises:
        InputError: naming the file, the row or column, and what was expected.
    """
    from audit.adapters import load_dataset_items, looks_native

    p = Path(path)
    lines = None
    if p.is_file():
        _check_file_size(p)
        if p.suffix == ".jsonl":
            lines = read_lines(p)  # line and encoding limits before any other reader sees the file
    if lines is not None and fmt in (None, "jsonl") and (fmt == "jsonl" or looks_native(p)):
        item_set = ItemSet(parse_items(lines, source=str(p)), str(p))
    else:
        item_set = load_dataset_items(str(path), fmt, role=role, **options)
    check_item_sizes(item_set.items, item_set.source)
    return item_set


def load_items(path: str | Path, fmt: str | None = None, **options) -> list[KnowledgeItem]:
    """Read an item set (see :func:`load_item_set`) and return its items.

    Raises:
        InputError: if the file is missing, unreadable or malformed.
    """
    return load_item_set(path, fmt, **options).items


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
