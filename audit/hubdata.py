"""Forget and retain sets named by Hugging Face hub ID (issue 19).

``--forget locuslab/TOFU:forget10_perturbed`` reads a hub dataset through the
``datasets`` library, as users name it::

    org/name[@revision][:CONFIG[:SPLIT]]

``CONFIG`` is a configuration (TOFU's ``forget10_perturbed``, WMDP's ``wmdp-bio``); when
the dataset has no configuration of that name it is taken as a split of the default one.
Within a configuration, the split is ``SPLIT`` when given, else the only one, else the one
whose name starts with the role (``forget`` / ``retain``).

- Online, ``datasets`` resolves the revision (default ``main``) to a commit, downloads
  and prepares the data in its cache, and the commit is recorded.
- Offline (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) only the local ``datasets``
  cache is read: the prepared Arrow files under ``$HF_DATASETS_CACHE/<org>___<name>/
  <config>/<version>/<commit>/``, the folder ``load_dataset`` writes when it loads a
  hub dataset online. A branch or tag given as ``@revision`` is mapped to its commit
  through the hub cache's ``refs/`` (written by that same online load); a commit hash
  is matched directly. Nothing cached is an :class:`~audit.errors.InputError`.

The rows then go through the same format adapters as a local dataset (TOFU's
``question`` / ``answer`` / ``paraphrased_answer`` / ``perturbed_answer`` becomes items
exactly as a local ``forget10_perturbed.json`` does, ids included). :func:`resolve_dataset_spec`
is the one entry point: ``None`` for a local path, else the rows and what to record.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import InputError
from audit.formats import pick_split

_SPEC = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)"
    r"(?:@(?P<rev>[\w./-]+))?"
    r"(?::(?P<config>[^:\s]+))?"
    r"(?::(?P<split>[^:\s]+))?$"
)
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubDatasetSpec:
    """A hub dataset as the user named it."""

    repo: str
    """``org/name``."""
    revision: str | None
    """Branch, tag or commit after ``@`` (``None``: the default branch)."""
    config: str | None
    """The part after the first colon: a configuration, or a split of the default one."""
    split: str | None
    """The part after the second colon."""


@dataclass
class HubRows:
    """The rows of one split of a hub dataset, and where exactly they came from."""

    rows: list[dict[str, Any]]
    columns: list[str]
    name: str
    """Prefix of item ids: the configuration (``forget10_perturbed``), or the split for
    a dataset with only the default configuration, as a local file's name would be."""
    split: str
    source: str
    """``org/name@commit12:config:split``, for messages and ``ItemSet.source``."""
    hub: dict[str, str | None]
    """What to record in ``audit_log.json`` beside ``split``: ``hub_id``, ``revision`` (as
    asked, or the branch it was resolved through; ``None`` offline when neither is known),
    ``commit`` (the dataset repository's commit the data was prepared from) and ``config``."""
    notes: list[str] = field(default_factory=list)

    def as_read_rows(self) -> tuple[list[dict[str, Any]], list[str], str, str | None, str]:
        """``(rows, columns, name, split, source)``, the shape of ``read_rows`` for local data."""
        return self.rows, self.columns, self.name, self.split, self.source


def parse_dataset_spec(spec: str) -> HubDatasetSpec | None:
    """The hub dataset ``spec`` names, or ``None`` when it is (or looks like) a local path.

    A path that exists (alone or before ``:SPLIT``), one starting with ``.``, ``/`` or
    ``~``, and a missing file with a data suffix (``forget.jsonl``) are local: they keep
    the local reader's "not found" message.
    """
    s = str(spec)
    if not s or s.startswith((".", "/", "~")) or Path(s).exists():
        return None
    head = s.split(":", 1)[0]
    if Path(head).exists():
        return None
    if Path(head.split("@", 1)[0]).suffix.lower() in _FILE_SUFFIXES:
        return None
    m = _SPEC.match(s)
    if m is None:
        return None
    return HubDatasetSpec(m["repo"], m["rev"], m["config"], m["split"])


def resolve_dataset_spec(spec: str, role: str | None = None) -> HubRows | None:
    """Read a forget / retain set named by hub ID; ``None`` when ``spec`` is a local path.

    Args:
        spec: ``org/name[@revision][:CONFIG[:SPLIT]]`` (or a local path: then ``None``).
        role: ``forget`` / ``retain``, to pick a split by name when a configuration has several.

    Raises:
        InputError: not cached while offline, unknown dataset / revision / configuration /
            split, no network, or a split larger than :data:`~audit.items.MAX_FILE_BYTES`.
    """
    ref = parse_dataset_spec(spec)
    if ref is None:
        return None
    import datasets

    datasets.disable_progress_bars()
    return _read_offline(ref, spec, role) if hub_offline() else _read_online(ref, spec, role)


# ---------------------------------------------------------------- where things live


def hub_offline() -> bool:
    """Whether hub access is off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``), read now."""
    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if env:
        return True
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def datasets_cache() -> Path:
    """The ``datasets`` cache (``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``), read now:
    the library fixes it when first imported, tests and users may set it later."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets"
    import datasets.config

    return Path(str(datasets.config.HF_DATASETS_CACHE)).expanduser()


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _cache_root(repo: str) -> Path:
    from datasets.naming import camelcase_to_snakecase

    org, name = repo.split("/", 1)
    return datasets_cache() / f"{org}___{camelcase_to_snakecase(name)}"


def _ref_commit(repo: str, revision: str) -> str | None:
    """The commit a branch or tag pointed to when the dataset was last loaded online."""
    f = _hub_cache() / f"datasets--{repo.replace('/', '--')}" / "refs" / revision
    try:
        text = f.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if _COMMIT.match(text) else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------- choosing config and split


def _rows(builder, split: str, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    from audit.items import MAX_FILE_BYTES  # the local readers' limit, one home

    info = builder.info.splits[split] if builder.info.splits else None
    size = getattr(info, "num_bytes", 0) or 0
    if size > MAX_FILE_BYTES:
        raise InputError(f"hub dataset {where} is {size / (1 << 20):.0f} MiB; at most {MAX_FILE_BYTES >> 20} MiB "
                         "is read as an item set")
    try:
        ds = builder.as_dataset(split=split, in_memory=True)
    except Exception as e:  # noqa: BLE001 - a damaged cache raises anything
        raise InputError(f"cannot read hub dataset {where}: {_first_line(e)}") from None
    return ds.to_list(), list(ds.column_names)


def _result(ref: HubDatasetSpec, builder, split: str, rows, columns, revision: str | None,
            notes: list[str]) -> HubRows:
    commit = builder.hash if isinstance(builder.hash, str) else None
    config = builder.config.name
    name = config if config != "default" else split
    short = commit[:12] if commit else "?"
    source = f"{ref.repo}@{short}:{config}:{split}"
    if commit is not None and not _COMMIT.match(commit):
        notes.append(f"the datasets cache names this version '{commit}', not a commit hash")
    hub = {"hub_id": ref.repo, "revision": revision, "commit": commit, "config": config}
    return HubRows(rows, columns, name, split, source, hub, notes)


# ---------------------------------------------------------------- online


def _read_online(ref: HubDatasetSpec, spec: str, role: str | None) -> HubRows:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    cache = str(datasets_cache())

    def builder_for(config: str | None):
        return datasets.load_dataset_builder(ref.repo, name=config, revision=ref.revision, cache_dir=cache)

    split_wanted = ref.split
    try:
        try:
            builder = builder_for(ref.config)
        except ValueError as first:
            # not a configuration: maybe a split of the default one (``org/name:test``)
            if ref.config is None or ref.split is not None:
                raise
            try:
                builder = builder_for(None)
            except Exception:  # noqa: BLE001 - report the first reading of the spec
                raise first from None
            if ref.config not in (builder.info.splits or {}):
                raise first from None
            split_wanted = ref.config
        builder.download_and_prepare()
    except DatasetNotFoundError as e:
        raise InputError(f"item set not found: {spec} is neither a local path nor a hub dataset "
                         f"({_first_line(e)})") from None
    except ConnectionError as e:
        raise InputError(f"cannot reach the Hugging Face hub for dataset {spec} ({_first_line(e)}); "
                         "set HF_HUB_OFFLINE=1 to read the local cache") from None
    except (ValueError, FileNotFoundError, OSError) as e:
        raise InputError(f"cannot load hub dataset {spec}: {_first_line(e)}") from None
    split = pick_split(list(builder.info.splits or {}), split_wanted, role, spec, "hub dataset ")
    rows, columns = _rows(builder, split, spec)
    return _result(ref, builder, split, rows, columns, ref.revision or "main", [])


# ---------------------------------------------------------------- offline


@dataclass
class _Cached:
    config: str
    version: str
    commit: str
    path: Path
    splits: list[str]


def _cached_versions(repo: str) -> list[_Cached]:
    """Every prepared version of ``repo`` in the datasets cache (config/version/commit)."""
    import json

    out = []
    root = _cache_root(repo)
    for info in sorted(root.glob("*/*/*/dataset_info.json")):
        d = info.parent
        try:
            meta = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        config, version, commit = d.parts[-3:]
        # a config folder with extra kwargs has a suffixed id: not what a plain load names
        if meta.get("config_name") != config:
            continue
        splits = list((meta.get("splits") or {}).keys())
        out.append(_Cached(config, version, commit, d, splits))
    return out


def _read_offline(ref: HubDatasetSpec, spec: str, role: str | None) -> HubRows:
    from datasets.packaged_modules.cache.cache import Cache

    offline = "HF_HUB_OFFLINE=1: only the local cache is read"
    cached = _cached_versions(ref.repo)
    if not cached:
        raise InputError(f"item set not found: {spec} is neither a local path nor a hub dataset in the local "
                         f"datasets cache {datasets_cache()} ({offline}); load it once online, e.g. "
                         f"`audit items check {spec}` without HF_HUB_OFFLINE")
    configs = sorted({c.config for c in cached})
    config, split_wanted = ref.config, ref.split
    if config is None:
        if len(configs) == 1:
            config = configs[0]
        elif "default" in configs:
            config = "default"
        else:
            raise InputError(f"hub dataset {ref.repo} has several configurations in the cache "
                             f"({', '.join(configs)}); name one as {ref.repo}:CONFIG")
    elif config not in configs:
        # a split of the only (or default) configuration, as ``org/name:test``
        fallback = configs[0] if len(configs) == 1 else ("default" if "default" in configs else None)
        if (ref.split is None and fallback is not None
                and any(config in c.splits for c in cached if c.config == fallback)):
            config, split_wanted = fallback, ref.config
        else:
            raise InputError(f"hub dataset {ref.repo} has no configuration or split '{config}' in the local "
                             f"datasets cache ({offline}); cached configurations: {', '.join(configs)}")
    versions = [c for c in cached if c.config == config]
    notes = [f"read from the local datasets cache ({offline})"]
    revision = ref.revision
    if revision is not None:
        want = revision if _COMMIT.match(revision) else _ref_commit(ref.repo, revision)
        if want is None:
            raise InputError(f"hub dataset {spec}: which commit revision '{revision}' is cannot be told offline "
                             f"(no refs/{revision} in the hub cache {_hub_cache()}); give the commit hash, cached: "
                             f"{', '.join(sorted({c.commit for c in versions}))}")
        chosen = [c for c in versions if c.commit == want]
        if not chosen:
            raise InputError(f"hub dataset {spec}: revision '{revision}' (commit {want}) is not in the local datasets "
                             f"cache ({offline}); cached commits of '{config}': "
                             f"{', '.join(sorted({c.commit for c in versions}))}")
    else:
        main = _ref_commit(ref.repo, "main")
        chosen = [c for c in versions if c.commit == main]
        if chosen:
            revision = "main"
        else:
            chosen = sorted(versions, key=lambda c: c.path.stat().st_mtime)[-1:]
            notes.append(f"the most recently prepared cached version (commit {chosen[0].commit}); which commit "
                         "'main' is now cannot be checked offline")
    c = chosen[-1]
    try:
        builder = Cache(cache_dir=str(datasets_cache()), dataset_name=ref.repo.split("/", 1)[1], repo_id=ref.repo,
                        config_name=c.config, version=c.version, hash=c.commit)
    except Exception as e:  # noqa: BLE001 - a damaged cache raises anything
        raise InputError(f"cannot read hub dataset {spec} from the cache {c.path}: {_first_line(e)}") from None
    split = pick_split(list(builder.info.splits or {}) or c.splits, split_wanted, role, spec, "hub dataset ")
    rows, columns = _rows(builder, split, spec)
    return _result(ref, builder, split, rows, columns, revision, notes)
