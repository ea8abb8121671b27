"""Per-lens checkpoints of a run, so ``audit run --resume`` continues where it stopped.

After each lens completes, its :class:`~audit.schema.LensResult` is written atomically
to ``<out>/.partial/<lens>.json`` together with a key over everything that determines
it: the content hashes of base / unlearned / reference, the forget and retain item-set
hashes, the lens's resolved config, the run settings that change numbers (seed, dtype,
device, power margin) and the code version. ``--resume`` reuses an entry only when its
key matches, so a changed input never reuses a stale result. The folder is removed once
the final ``audit_log.json`` (and report) are written.

The batch size is not part of the key: it is a resource setting (it may shrink on its
own after an out-of-memory), not an input. The lens's code version is checked beside
the key: a saved result whose ``lens_version`` is not the registered lens's is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from audit.atomic import atomic_write_text
from audit.progress import log
from audit.schema import LensResult

CODE_VERSION = "1"
"""Bump when a change to the lenses or scoring makes older checkpoints invalid."""

PARTIAL_DIR = ".partial"


def code_version() -> str:
    """Package version plus :data:`CODE_VERSION`."""
    try:
        pkg = metadata.version("unlearning-audit")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    return f"{pkg}+{CODE_VERSION}"


def lens_key(
    lens: str,
    lens_config: dict[str, Any],
    model_hashes: dict[str, str],
    item_hashes: dict[str, str],
    settings: dict[str, Any],
) -> str:
    """Hash of everything a lens result depends on."""
    blob = json.dumps(
        {"lens": lens, "config": lens_config, "models": model_hashes, "items": item_hashes,
         "settings": settings, "code": code_version()},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class PartialStore:
    """The ``.partial`` folder of one output folder."""

    def __init__(self, out: str | Path) -> None:
        self.root = Path(out) / PARTIAL_DIR

    def path(self, lens: str) -> Path:
        return self.root / f"{lens}.json"

    def load(self, lens: str, key: str, lens_version: str = "1") -> LensResult | None:
        """The saved result of ``lens`` if its key matches ``key`` and it was made by
        ``lens_version`` of the lens, else None."""
        p = self.path(lens)
        if not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
            if entry.get("key") != key:
                log.info("lens %s: saved result is for other inputs or settings; recomputing", lens)
                return None
            res = LensResult.model_validate(entry["result"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ValidationError) as e:
            log.warning("lens %s: saved result %s is unreadable (%s); recomputing", lens, p, e)
            return None
        if res.lens_version != lens_version:
            log.info("lens %s: saved result is from lens version %s, this is version %s; recomputing",
                     lens, res.lens_version, lens_version)
            return None
        return res

    def save(self, lens: str, key: str, result: LensResult) -> None:
        """Write ``result`` atomically under ``key``."""
        body = result.model_dump_json()
        atomic_write_text(self.path(lens), f'{{"key": "{key}", "result": {body}}}')

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
