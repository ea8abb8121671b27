"""Item formats of public unlearning benchmarks: rows of a dataset become items.

Rows (dicts of column values, read by :mod:`audit.sources`) become a list of
:class:`~audit.items.KnowledgeItem` through one adapter per upstream column layout:

- ``tofu`` — TOFU (``question``, ``answer``, ``paraphrased_answer``, ``perturbed_answer``
  list): the true answer is the paraphrased answer (the answer when that column is
  absent) and the distractors are the perturbed answers, the comparison TOFU's truth
  ratio makes.
- ``wmdp`` — WMDP-style multiple choice (``question``, ``choices``, ``answer`` index):
  ``mc_mode="text"`` scores the choice texts, ``mc_mode="letter"`` lists the choices as
  ``A. …`` and scores the letters, as WMDP is usually reported.
- ``rwku`` — RWKU probes (``subject``, ``query``, ``answer``, ``level``, ``type``): the
  subject becomes the concept tag; a fill-in-the-blank whose blank ends the sentence is
  scored as a plain completion.
- ``qa`` — free-form QA without distractors (MUSE KnowMem: ``question``, ``answer``).

Formats without distractors (``rwku``, ``qa``) draw them from other items' answers — of
the same ``attribute`` where the set has that tag — with a fixed seed, and every such
item says so (``distractors_sampled``). ``jsonl`` is our own format
(``id``/``prompt``/``answer``/``distractors``) stored as a dataset.

Nothing here reads a file: :func:`adapt_rows` takes rows from any source (a local
dataset, a hub dataset) and returns validated items.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import InputError, validate
from audit.items import MIN_DISTRACTORS, KnowledgeItem, check_item

DEFAULT_QA_TEMPLATE = "Question: {question}\nAnswer:"
MC_MODES = ("text", "letter")
_BLANK = re.compile(r"_{2,}")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class AdaptOptions:
    """How rows become items (the same for every format)."""

    qa_template: str = DEFAULT_QA_TEMPLATE
    """Prompt around a question; ``{question}`` marks where it goes, the answer follows."""
    mc_mode: str = "text"
    """Multiple choice: score the choice ``text`` or its ``letter`` (A/B/C/D)."""
    seed: int = 0
    """Seed of sampled distractors."""
    n_distractors: int = MIN_DISTRACTORS
    """How many distractors to sample for an item that has none."""


@dataclass
class Draft:
    """An item before validation; ``distractors`` None means "sample them"."""

    id: str
    prompt: str
    answer: str
    distractors: list[str] | None
    where: str
    subject: str | None = None
    attribute: str | None = None
    question: str | None = None


@dataclass(frozen=True)
class FormatSpec:
    """One adapter: the columns it needs and the function mapping rows to drafts."""

    name: str
    required: tuple[str, ...]
    description: str
    fn: Callable[[list[dict[str, Any]], str, str, AdaptOptions], tuple[list[Draft], list[str]]]


# ---------------------------------------------------------------- cell readers


def _where(source: str, i: int) -> str:
    return f"{source} row {i}"


def _text(row: dict[str, Any], col: str, where: str) -> str:
    v = row.get(col)
    if not isinstance(v, str):
        raise InputError(f"{where}: column '{col}' should hold a string, got {_kind(v)}")
    if not v.strip():
        raise InputError(f"{where}: column '{col}' is empty")
    return v.strip()


def _str_list(row: dict[str, Any], col: str, where: str) -> list[str]:
    v = row.get(col)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(f"{where}: column '{col}' should hold a list of strings, got {_kind(v)}")
    return [x.strip() for x in v]


def _kind(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, list):
        inner = sorted({type(x).__name__ for x in v})
        return f"a list of {'/'.join(inner)}" if inner else "an empty list"
    return f"{type(v).__name__} {v!r}"[:80]


def _tags(row: dict[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for k in ("subject", "attribute"):
        v = row.get(k)
        out[k] = v.strip() if isinstance(v, str) and v.strip() else None
    return out


def fill_template(template: str, question: str) -> str:
    """Put ``question`` into a QA template at ``{question}`` (no other braces are read)."""
    return template.replace("{question}", question)


def _clean_distractors(answer: str, ds: list[str]) -> tuple[list[str], int]:
    """Drop empty, repeated and answer-equal distractors; return them and how many went."""
    seen = {answer.casefold()}
    out = []
    for d in ds:
        if d and d.casefold() not in seen:
            seen.add(d.casefold())
            out.append(d)
    return out, len(ds) - len(out)


# ---------------------------------------------------------------- adapters


def adapt_tofu(rows: list[dict[str, Any]], name: str, source: str, opts: AdaptOptions):
    """TOFU: distractors from ``perturbed_answer`` (a list), truth the paraphrased answer."""
    drafts, removed = [], 0
    for i, row in enumerate(rows):
        w = _where(source, i)
        q = _text(row, "question", w)
        answer = _text(row, "answer", w)
        if isinstance(row.get("paraphrased_answer"), str) and row["paraphrased_answer"].strip():
            answer = row["paraphrased_answer"].strip()
        ds, n = _clean_distractors(answer, _str_list(row, "perturbed_answer", w))
        removed += n
        drafts.append(Draft(f"{name}-{i}", fill_template(opts.qa_template, q), answer, ds, w,
                             **_tags(row), question=q))
    notes = ["TOFU: true answer = paraphrased_answer (as TOFU's truth ratio), distractors = perturbed_answer"]
    if removed:
        notes.append(f"{removed} empty, repeated or answer-equal perturbed answers were left out")
    return drafts, notes


def adapt_wmdp(rows: list[dict[str, Any]], name: str, source: str, opts: AdaptOptions):
    """WMDP-style multiple choice: ``answer`` is the index of the correct ``choices`` entry."""
    if opts.mc_mode not in MC_MODES:
        raise InputError(f"unknown multiple-choice mode '{opts.mc_mode}'; choose one of {', '.join(MC_MODES)}")
    drafts = []
    for i, row in enumerate(rows):
        w = _where(source, i)
        q = _text(row, "question", w)
        choices = _str_list(row, "choices", w)
        idx = row.get("answer")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise InputError(f"{w}: column 'answer' should hold the integer index of the correct choice, "
                             f"got {_kind(idx)}")
        if len(choices) < MIN_DISTRACTORS + 1:
            raise InputError(f"{w}: {len(choices)} choices; at least {MIN_DISTRACTORS + 1} are needed "
                             f"(the answer and {MIN_DISTRACTORS} distractors)")
        if len(choices) > len(_LETTERS):
            raise InputError(f"{w}: {len(choices)} choices; at most {len(_LETTERS)} can be lettered")
        if not 0 <= idx < len(choices):
            raise InputError(f"{w}: answer index {idx} is out of range for {len(choices)} choices "
                             f"(expected 0 to {len(choices) - 1})")
        if opts.mc_mode == "letter":
            body = q + "".join(f"\n{_LETTERS[j]}. {c}" for j, c in enumerate(choices))
            letters = list(_LETTERS[: len(choices)])
            answer, ds = letters[idx], letters[:idx] + letters[idx + 1 :]
            drafts.append(Draft(f"{name}-{i}", fill_template(opts.qa_template, body), answer, ds, w,
                                 **_tags(row), question=body))
        else:
            ds = choices[:idx] + choices[idx + 1 :]
            drafts.append(Draft(f"{name}-{i}", fill_template(opts.qa_template, q), choices[idx], ds, w,
                                 **_tags(row), question=q))
    how = "the letters A, B, C, ... of the listed choices" if opts.mc_mode == "letter" else "the choice texts"
    return drafts, [f"multiple choice: candidates are {how}"]


def adapt_rwku(rows: list[dict[str, Any]], name: str, source: str, opts: AdaptOptions):
    """RWKU probes: ``subject`` is the concept tag; no distractors (they are sampled)."""
    drafts, n_cloze = [], 0
    for i, row in enumerate(rows):
        w = _where(source, i)
        subject = _text(row, "subject", w)
        query = _text(row, "query", w)
        answer = _text(row, "answer", w)
        blanks = list(_BLANK.finditer(query))
        tail = query[blanks[-1].end():].strip() if blanks else None
        if len(blanks) == 1 and tail is not None and tail in ("", ".") and query[: blanks[0].start()].strip():
            # the blank ends the sentence: a plain completion, as the model saw such text
            prompt, n_cloze = query[: blanks[0].start()].rstrip(), n_cloze + 1
        else:
            prompt = fill_template(opts.qa_template, query)
        drafts.append(Draft(f"{name}-{i}", prompt, answer, None, w, subject=subject,
                             attribute=_tags(row)["attribute"], question=query))
    notes = ["RWKU: subject is the concept tag"]
    if n_cloze:
        notes.append(f"{n_cloze} fill-in-the-blank probes end in the blank and are scored as completions")
    return drafts, notes


def adapt_qa(rows: list[dict[str, Any]], name: str, source: str, opts: AdaptOptions):
    """Free-form QA (MUSE KnowMem): question and answer only; distractors are sampled."""
    drafts = []
    for i, row in enumerate(rows):
        w = _where(source, i)
        q = _text(row, "question", w)
        a = _text(row, "answer", w)
        drafts.append(Draft(f"{name}-{i}", fill_template(opts.qa_template, q), a, None, w, **_tags(row), question=q))
    return drafts, []


def adapt_jsonl(rows: list[dict[str, Any]], name: str, source: str, opts: AdaptOptions):
    """Our own item format, stored as a dataset (parquet, save_to_disk ...)."""
    drafts = []
    for i, row in enumerate(rows):
        w = _where(source, i)
        it = validate(KnowledgeItem, {k: v for k, v in row.items() if v is not None}, "column", w, strict=True)
        drafts.append(Draft(it.id, it.prompt, it.answer, list(it.distractors), w, it.subject, it.attribute,
                             it.question))
    return drafts, []


FORMATS: dict[str, FormatSpec] = {
    s.name: s
    for s in (
        FormatSpec("jsonl", ("id", "prompt", "answer", "distractors"), "our own items", adapt_jsonl),
        FormatSpec("tofu", ("question", "answer", "perturbed_answer"), "TOFU (perturbed answers)", adapt_tofu),
        FormatSpec("wmdp", ("question", "choices", "answer"), "WMDP-style multiple choice", adapt_wmdp),
        FormatSpec("rwku", ("subject", "query", "answer"), "RWKU subject-tagged probes", adapt_rwku),
        FormatSpec("qa", ("question", "answer"), "free-form QA, e.g. MUSE KnowMem", adapt_qa),
    )
}
"""Format name -> adapter, in detection order (the first whose columns are all present)."""
_ALIASES = {"muse": "qa", "mc": "wmdp", "native": "jsonl"}


def resolve_format(fmt: str) -> FormatSpec:
    """The adapter registered under ``fmt`` (or an alias such as ``muse``).

    Raises:
        InputError: an unknown name, with the known ones.
    """
    key = _ALIASES.get(fmt.lower(), fmt.lower())
    if key not in FORMATS:
        import difflib

        close = difflib.get_close_matches(key, [*FORMATS, *_ALIASES], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown item format '{fmt}'; choose one of {', '.join(FORMATS)}.{hint}")
    return FORMATS[key]


def detect_format(columns: Sequence[str], source: str = "<dataset>") -> str:
    """The first format whose required columns are all present.

    Raises:
        InputError: no format fits, listing the columns found and each format's columns.
    """
    cols = set(columns)
    for spec in FORMATS.values():
        if cols.issuperset(spec.required):
            return spec.name
    wanted = "; ".join(f"{s.name}: {', '.join(s.required)}" for s in FORMATS.values())
    raise InputError(f"{source}: cannot tell the item format from its columns ({', '.join(columns) or 'none'}); "
                     f"expected the columns of one of: {wanted}")


# ---------------------------------------------------------------- distractor sampling


def sample_distractors(drafts: list[Draft], k: int, seed: int) -> None:
    """Fill in ``k`` distractors for drafts that have none, from other items' answers.

    The pool is the answers of items with the same ``attribute`` when the item has that
    tag, else every answer of the set. Each item's draw depends only on the seed and its
    id, so it does not change when other items are added or dropped.

    Raises:
        InputError: when the pool has fewer than ``k`` answers other than the item's own.
    """
    if k < MIN_DISTRACTORS:
        raise InputError(f"n_distractors is {k}; at least {MIN_DISTRACTORS} are needed")
    everyone = sorted({d.answer for d in drafts}, key=str.casefold)
    by_attr: dict[str, list[str]] = {}
    for d in drafts:
        if d.attribute is not None:
            by_attr.setdefault(d.attribute, []).append(d.answer)
    by_attr = {a: sorted(set(v), key=str.casefold) for a, v in by_attr.items()}
    for d in drafts:
        if d.distractors is not None:
            continue
        pool = by_attr.get(d.attribute, everyone) if d.attribute is not None else everyone
        pool = _dedupe([a for a in pool if a.casefold() != d.answer.casefold()])
        if len(pool) < k:
            scope = f"with attribute '{d.attribute}'" if d.attribute is not None else "in the set"
            raise InputError(f"{d.where}: item '{d.id}' has no distractors and only {len(pool)} other "
                             f"answers {scope} to sample {k} from")
        rng = random.Random(int(hashlib.sha256(f"{seed}|{d.id}".encode()).hexdigest()[:16], 16))
        d.distractors = rng.sample(pool, k)


def _dedupe(xs: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for x in xs:
        if x.casefold() not in seen:
            seen.add(x.casefold())
            out.append(x)
    return out


def adapt_options(*, qa_template: str | None = None, mc_mode: str = "text", seed: int = 0,
                  n_distractors: int = MIN_DISTRACTORS) -> AdaptOptions:
    """The options of every adapter, with the QA template checked.

    Raises:
        InputError: a QA template without a ``{question}`` placeholder.
    """
    opts = AdaptOptions(qa_template=qa_template or DEFAULT_QA_TEMPLATE, mc_mode=mc_mode, seed=seed,
                        n_distractors=n_distractors)
    if "{question}" not in opts.qa_template:
        raise InputError(f"the QA template {opts.qa_template!r} has no '{{question}}' placeholder")
    return opts


def adapt_rows(rows: list[dict[str, Any]], columns: Sequence[str], name: str, source: str,
               spec: FormatSpec | None, opts: AdaptOptions) -> tuple[list[KnowledgeItem], str, list[str]]:
    """Rows of one dataset split as items: ``(items, format name, notes)``.

    ``spec`` is the format (``None``: detected from ``columns``); ``name`` prefixes the
    ids an adapter makes and ``source`` names the data in messages.

    Raises:
        InputError: naming the source, the row and the column of the first problem.
    """
    if spec is None:
        spec = FORMATS[detect_format(columns, source)]
    missing = [c for c in spec.required if c not in columns]
    if missing:
        hint = ""
        if spec.name == "tofu" and missing == ["perturbed_answer"]:
            hint = " (TOFU's plain splits have none: use a *_perturbed split, or --format qa to sample distractors)"
        raise InputError(f"{source}: format '{spec.name}' needs column '{missing[0]}', which is missing "
                         f"(columns: {', '.join(columns) or 'none'}){hint}")
    if not rows:
        raise InputError(f"{source}: no items (the dataset is empty)")
    drafts, notes = spec.fn(rows, name, source, opts)
    sampled = [d for d in drafts if d.distractors is None]
    if sampled:
        sample_distractors(drafts, opts.n_distractors, opts.seed)
        scope = "answers of the same attribute" if any(d.attribute for d in sampled) else "answers in the set"
        notes.append(f"distractors sampled for {len(sampled)} items from other items' {scope} "
                     f"(seed {opts.seed}): the data has none")
    items, seen = [], set()
    sampled_ids = {d.id for d in sampled}
    for d in drafts:
        if d.id in seen:
            raise InputError(f"{d.where}: duplicate id '{d.id}'")
        seen.add(d.id)
        it = KnowledgeItem(id=d.id, prompt=d.prompt, answer=d.answer, distractors=list(d.distractors or []),
                           subject=d.subject, attribute=d.attribute, question=d.question,
                           distractors_sampled=d.id in sampled_ids)
        check_item(it, d.where)
        items.append(it)
    return items, spec.name, notes


def pick_split(names: list[str], split: str | None, role: str | None, where: Path | str, what: str = "") -> str:
    """The split named ``split``, else the only one, else the one whose name starts with
    ``role``; ``what`` prefixes the source in errors (``"hub dataset "``)."""
    if split is not None:
        if split not in names:
            raise InputError(f"{what}{where} has no split '{split}'; available: {', '.join(names) or 'none'}")
        return split
    if len(names) == 1:
        return names[0]
    if role:
        hits = [n for n in names if n.rsplit("/", 1)[-1].lower().startswith(role)]
        if len(hits) == 1:
            return hits[0]
    raise InputError(f"{what}{where} holds several splits ({', '.join(names)}); name one as {where}:SPLIT")
