"""The backend of ``audit items check``: validate and summarise an item set, and count what the base knows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from audit.items import ItemSet, KnowledgeItem, write_items
from audit.prepare import known_mask, prepare_for_model
from audit.sources import load_item_set


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

