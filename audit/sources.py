"""Where an item set comes from: a ``--forget`` / ``--retain`` spec becomes an :class:`~audit.items.ItemSet`.

:func:`load_item_set` is the one entry point. A spec is

- a ``.jsonl`` file in our own format (``id``/``prompt``/``answer``/``distractors``), read
  with size limits (:data:`~audit.items.MAX_FILE_BYTES`; lines :data:`~audit.items.MAX_LINE_BYTES`);
- a local Hugging Face dataset — a ``save_to_disk`` folder, ``.parquet`` / ``.json`` /
  ``.jsonl`` / ``.csv`` files or a folder of them, read with the ``datasets`` library —
  whose rows become items through a format adapter (:mod:`audit.formats`).

Split names of a dataset with several (TOFU's ``forget10`` / ``retain90`` / ``holdout10``,
RWKU's ``forget_level1``, files of a folder) are chosen as ``PATH:SPLIT``; without one,
the split whose name starts with the role (``forget`` / ``retain``) is taken when it is
the only one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from audit.errors import InputError
from audit.formats import adapt_options, adapt_rows, detect_format, pick_split, resolve_format
from audit.items import (
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    MIN_DISTRACTORS,
    ItemSet,
    KnowledgeItem,
    check_item_sizes,
    parse_items,
)

_DATA_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


# ---------------------------------------------------------------- our JSONL


def check_file_size(p: Path) -> None:
    """Refuse a file beyond :data:`MAX_FILE_BYTES` (before any reader sees it).

    Raises:
        InputError: unreadable or too big.
    """
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
    check_file_size(p)
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


# ---------------------------------------------------------------- local datasets


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
            chosen = pick_split(list(ds), split, role, p)
            ds = ds[chosen]
        elif split is not None:
            raise InputError(f"{p} is a single dataset without splits; drop ':{split}'")
        rows, columns = ds.to_list(), list(ds.column_names)
    elif p.is_dir():
        files = _data_files(p)
        if not files:
            raise InputError(f"{p} holds no dataset: expected a save_to_disk folder or "
                             f"{', '.join(_DATA_SUFFIXES)} files")
        chosen = pick_split(list(files), split, role, p)
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
    """Items from a local Hugging Face dataset through a format adapter (see :mod:`audit.formats`).

    Raises:
        InputError: naming the file, the row and the column of the first problem.
    """
    opts = adapt_options(qa_template=qa_template, mc_mode=mc_mode, seed=seed, n_distractors=n_distractors)
    spec = resolve_format(fmt) if fmt else None
    from audit.hubdata import resolve_dataset_spec

    hub = resolve_dataset_spec(path, role)  # None: a local path
    rows, columns, name, split, source = hub.as_read_rows() if hub else read_rows(path, role)
    items, fmt_name, notes = adapt_rows(rows, columns, name, source, spec, opts)
    return ItemSet(items, source, format=fmt_name, split=split, notes=(hub.notes if hub else []) + notes,
                   hub=hub.hub if hub else None)


# ---------------------------------------------------------------- every source


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
    p = Path(path)
    lines = None
    if p.is_file():
        check_file_size(p)
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
