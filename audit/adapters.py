"""Bring your own forget set: format adapters from public unlearning benchmarks to items.

A local Hugging Face dataset (a ``save_to_disk`` folder, or ``.parquet`` / ``.json`` /
``.csv`` files, read with the ``datasets`` library) becomes a list of
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

Split names of a dataset with several (TOFU's ``forget10`` / ``retain90`` / ``holdout10``,
RWKU's ``forget_level1``, files of a folder) are chosen as ``PATH:SPLIT``; without one,
the split whose name starts with the role (``forget`` / ``retain``) is taken when it is
the only one.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import InputError, validate
from audit.items import MIN_DISTRACTORS, ItemSet, KnowledgeItem, _check, load_item_set

DEFAULT_QA_TEMPLATE = "Question: {question}\nAnswer:"
MC_MODES = ("text", "letter")
CHAT_MODES = ("auto", "none")
_DATA_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
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
class _Draft:
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
    fn: Callable[[list[dict[str, Any]], str, str, AdaptOptions], tuple[list[_Draft], list[str]]]


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
        drafts.append(_Draft(f"{name}-{i}", fill_template(opts.qa_template, q), answer, ds, w,
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
            drafts.append(_Draft(f"{name}-{i}", fill_template(opts.qa_template, body), answer, ds, w,
                                 **_tags(row), question=body))
        else:
            ds = choices[:idx] + choices[idx + 1 :]
            drafts.append(_Draft(f"{name}-{i}", fill_template(opts.qa_template, q), choices[idx], ds, w,
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
        drafts.append(_Draft(f"{name}-{i}", prompt, answer, None, w, subject=subject,
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
        drafts.append(_Draft(f"{name}-{i}", fill_template(opts.qa_template, q), a, None, w, **_tags(row), question=q))
    return drafts, []


def adapt_jsonl(rows: list[dict[str, Any]], name: str, source: str, opts: AdaptOptions):
    """Our own item format, stored as a dataset (parquet, save_to_disk ...)."""
    drafts = []
    for i, row in enumerate(rows):
        w = _where(source, i)
        it = validate(KnowledgeItem, {k: v for k, v in row.items() if v is not None}, "column", w, strict=True)
        drafts.append(_Draft(it.id, it.prompt, it.answer, list(it.distractors), w, it.subject, it.attribute,
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


def sample_distractors(drafts: list[_Draft], k: int, seed: int) -> None:
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


# ---------------------------------------------------------------- reading datasets


def looks_native(path: Path) -> bool:
    """Whether a ``.jsonl`` file is in our own format (or cannot be judged: then the
    native parser gives the message). Checks the first non-empty line's keys."""
    try:
        with path.open(encoding="utf-8") as f:
            for raw in f:
                if raw.strip():
                    obj = json.loads(raw)
                    break
            else:
                return True
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    if not isinstance(obj, dict) or "prompt" in obj or "distractors" in obj or "id" in obj:
        return True
    try:
        return detect_format(list(obj)) == "jsonl"
    except InputError:
        return True


def _split_arg(path: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:SPLIT`` (the part after the last colon, when PATH exists)."""
    p = Path(path)
    if p.exists() or ":" not in path:
        return p, None
    head, _, split = path.rpartition(":")
    if head and Path(head).exists():
        return Path(head), split
    return p, None


def _data_files(folder: Path) -> dict[str, Path]:
    """Data files of a plain folder, each one split named by its relative path sans suffix."""
    out: dict[str, Path] = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and f.suffix in _DATA_SUFFIXES and not any(x.startswith(".") for x in rel.parts):
            out[rel.with_suffix("").as_posix()] = f
    return out


def _pick_split(names: list[str], split: str | None, role: str | None, where: Path) -> str:
    if split is not None:
        if split not in names:
            raise InputError(f"{where} has no split '{split}'; available: {', '.join(names)}")
        return split
    if len(names) == 1:
        return names[0]
    if role:
        hits = [n for n in names if n.rsplit("/", 1)[-1].lower().startswith(role)]
        if len(hits) == 1:
            return hits[0]
    raise InputError(f"{where} holds several splits ({', '.join(names)}); name one as {where}:SPLIT")


def _load_file(f: Path) -> tuple[list[dict[str, Any]], list[str]]:
    import datasets

    builder = _DATA_SUFFIXES[f.suffix]
    # a throw-away cache: nothing lands in ~/.cache, and concurrent runs never share one
    with tempfile.TemporaryDirectory(prefix="audit-ds-") as tmp:
        try:
            ds = datasets.load_dataset(builder, data_files=str(f), split="train", cache_dir=tmp,
                                       keep_in_memory=True)
        except Exception as e:  # noqa: BLE001 - datasets raises many types for unreadable files
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"cannot read {f} as {builder}: {why}") from None
        return ds.to_list(), list(ds.column_names)


def read_rows(path: str, role: str | None = None) -> tuple[list[dict[str, Any]], list[str], str, str | None, str]:
    """Rows of a local dataset: ``(rows, columns, name, split, source)``.

    Raises:
        InputError: missing path, unreadable data, or an ambiguous / unknown split.
    """
    import datasets

    datasets.disable_progress_bars()
    p, split = _split_arg(path)
    if not p.exists():
        raise InputError(f"item file not found: {p}")
    chosen: str | None = None
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        try:
            ds = datasets.load_from_disk(str(p), keep_in_memory=True)
        except Exception as e:  # noqa: BLE001 - a damaged folder raises anything
            raise InputError(f"cannot read the saved dataset {p}: {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            chosen = _pick_split(list(ds), split, role, p)
            ds = ds[chosen]
        elif split is not None:
            raise InputError(f"{p} is a single dataset without splits; drop ':{split}'")
        rows, columns = ds.to_list(), list(ds.column_names)
    elif p.is_dir():
        files = _data_files(p)
        if not files:
            raise InputError(f"{p} holds no dataset: expected a save_to_disk folder or "
                             f"{', '.join(_DATA_SUFFIXES)} files")
        chosen = _pick_split(list(files), split, role, p)
        rows, columns = _load_file(files[chosen])
    else:
        if p.suffix not in _DATA_SUFFIXES:
            raise InputError(f"{p}: unknown item file type '{p.suffix}'; expected .jsonl (our items), a dataset "
                             f"folder, or {', '.join(_DATA_SUFFIXES)}")
        if split is not None:
            raise InputError(f"{p} is a single file without splits; drop ':{split}'")
        rows, columns = _load_file(p)
    if chosen is not None:
        name, source = chosen.rsplit("/", 1)[-1], f"{p}:{chosen}"
    else:
        name, source = (p.name if p.is_dir() else p.stem), str(p)
    return rows, columns, name, chosen, source


def load_dataset_items(path: str, fmt: str | None = None, *, role: str | None = None, qa_template: str | None = None,
                       mc_mode: str = "text", seed: int = 0, n_distractors: int = MIN_DISTRACTORS) -> ItemSet:
    """Items from a local Hugging Face dataset through a format adapter (see the module).

    Raises:
        InputError: naming the file, the row and the column of the first problem.
    """
    opts = AdaptOptions(qa_template=qa_template or DEFAULT_QA_TEMPLATE, mc_mode=mc_mode, seed=seed,
                        n_distractors=n_distractors)
    if "{question}" not in opts.qa_template:
        raise InputError(f"the QA template {opts.qa_template!r} has no '{{question}}' placeholder")
    spec = resolve_format(fmt) if fmt else None
    rows, columns, name, split, source = read_rows(path, role)
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
        _check(it, d.where)
        items.append(it)
    return ItemSet(items, source, format=spec.name, split=split, notes=notes)


# ---------------------------------------------------------------- chat templates and base knowledge


def apply_chat_template(items: Sequence[KnowledgeItem], tokenizer, mode: str = "none") -> tuple[list[KnowledgeItem], bool]:
    """Wrap each prompt as one user message of the checkpoint's chat template.

    With ``mode="auto"`` and a tokenizer that has a chat template, the user's message is
    the item's bare ``question`` (else its ``prompt``) and the prompt becomes the
    rendered conversation up to the assistant's turn (``add_generation_prompt``), so the
    answer is what the assistant says. A leading BOS string is dropped when the tokenizer
    adds BOS itself, so it is not doubled. Returns the items and whether they were wrapped.

    Raises:
        InputError: an unknown mode, or a template that fails to render.
    """
    if mode not in CHAT_MODES:
        raise InputError(f"unknown chat-template mode '{mode}'; choose one of {', '.join(CHAT_MODES)}")
    if mode == "none" or not getattr(tokenizer, "chat_template", None):
        return list(items), False
    bos: str = getattr(tokenizer, "bos_token", None) or ""
    adds_bos = bool(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    out = []
    for it in items:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": it.question or it.prompt}],
                                                 tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - jinja raises its own error types
            raise InputError(f"the chat template failed on item '{it.id}': {e}") from None
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        out.append(it.model_copy(update={"prompt": text}))
    return out, True


def known_mask(model, items: Sequence[KnowledgeItem], *, batch_size: int = 32):
    """Which items ``model`` (a :class:`~audit.models.LoadedModel`) ranks correctly."""
    from audit.scoring import score_items

    return score_items(model.forward, model.tokenizer, items, batch_size=batch_size, device=model.device).correct


def prepare_for_model(sets: dict[str, ItemSet], items: dict[str, list[KnowledgeItem]], base, *,
                      chat_template: str = "none", drop_unknown: bool = False,
                      batch_size: int = 32) -> dict[str, list[KnowledgeItem]]:
    """Steps that need the base model: chat-template wrapping, then (optionally) dropping
    items the base does not know, since no lens can find knowledge that was never there.
    Records what was done on each :class:`ItemSet`."""
    out = {}
    for k, its in items.items():
        its, wrapped = apply_chat_template(its, base.tokenizer, chat_template)
        s = sets[k]
        s.chat_template = wrapped
        if wrapped:
            s.notes.append("prompts wrapped with the checkpoint's chat template")
        elif chat_template == "auto":
            s.notes.append("--chat-template auto: the checkpoint has no chat template; prompts used as they are")
        if drop_unknown:
            mask = known_mask(base, its, batch_size=batch_size)
            s.n_dropped = int((~mask).sum())
            if s.n_dropped:
                s.notes.append(f"{s.n_dropped} of {len(its)} items the base model does not know were dropped")
            its = [it for it, ok in zip(its, mask, strict=True) if ok]
        out[k] = its
    return out


@dataclass
class ItemCheck:
    """What ``audit items check`` reports about one set."""

    set: ItemSet
    n_items: int
    subjects: dict[str, int]
    attributes: dict[str, int]
    candidates: tuple[int, int]
    """Fewest and most candidates per item."""
    n_known: int | None = None
    """Items the base model ranks correctly (``None`` without ``base``)."""
    kept: list[KnowledgeItem] = field(default_factory=list)
    """The items scoring would use (unknown ones dropped when ``drop_unknown``)."""


def check_item_set(path: str, fmt: str | None = None, *, base: str | None = None, drop_unknown: bool = True,
                   chat_template: str = "none", device: str = "cpu", dtype: str = "float32",
                   batch_size: int = 32, out: str | None = None, **options) -> ItemCheck:
    """Validate and summarise an item set; with ``base``, count the items it knows.

    Items the base does not know are dropped from scoring by default (``drop_unknown``)
    and counted. ``out`` writes the items scoring would use as our JSONL.

    Raises:
        InputError: bad items, options or checkpoint.
    """
    from collections import Counter

    from audit.items import write_items

    s = load_item_set(path, fmt, **options)
    items = s.items
    n_known = None
    if base is not None:
        from audit.models import load_model

        model = load_model(base, "base", device=device, dtype=dtype)
        items = prepare_for_model({"set": s}, {"set": items}, model, chat_template=chat_template,
                                  batch_size=batch_size)["set"]
        mask = known_mask(model, items, batch_size=batch_size)
        n_known = int(mask.sum())
        if drop_unknown:
            s.n_dropped = len(items) - n_known
            items = [it for it, ok in zip(items, mask, strict=True) if ok]
    n_cands = [len(it.candidates) for it in s.items]
    check = ItemCheck(s, len(s.items), dict(Counter(it.subject for it in s.items if it.subject).most_common()),
                      dict(Counter(it.attribute for it in s.items if it.attribute).most_common()),
                      (min(n_cands), max(n_cands)), n_known, list(items))
    if out is not None:
        write_items(items, out)
    return check

