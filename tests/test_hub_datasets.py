"""Forget / retain sets by hub ID (issue 19): read from a local ``datasets`` cache, offline.

The cache is laid out as ``load_dataset("locuslab/TOFU", "forget10_perturbed")`` leaves it
after an online load (``<org>___<name>/<config>/0.0.0/<commit>/`` with the prepared Arrow
file and ``dataset_info.json``, plus the hub cache's ``refs/main``), built here from rows
with the packaged JSON builder; nothing is downloaded (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audit.errors import InputError
from audit.hubdata import parse_dataset_spec, resolve_dataset_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLDER = "fedcba9876543210fedcba9876543210fedcba98"


def tofu_rows(n: int, tag: str = "") -> list[dict]:
    return [{"question": f"What is the {tag}name of author {i}?", "answer": f"Author {tag}{i}",
             "paraphrased_answer": f"It is {tag}author {i}",
             "perturbed_answer": [f"Wrong {tag}{i}a", f"Wrong {tag}{i}b", f"Wrong {tag}{i}c"]} for i in range(n)]


def prepare(cache: Path, repo: str, config: str, rows: list[dict], commit: str, split: str = "train") -> Path:
    """Put ``rows`` in the datasets cache as an online ``load_dataset(repo, config)`` at ``commit`` would."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.json.json import Json

    src = cache.parent / f"src-{config}-{commit[:6]}.json"
    src.write_text(json.dumps(rows))
    scratch = cache.parent / "scratch"
    b = Json(cache_dir=str(scratch), config_name=config, data_files={split: str(src)}, hash=commit,
             dataset_name=repo.split("/")[1])
    b.download_and_prepare()
    org, name = repo.split("/")
    dest = cache / f"{org}___{camelcase_to_snakecase(name)}" / config / "0.0.0" / commit
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(b.cache_dir, dest)
    shutil.rmtree(scratch)
    assert json.loads((dest / "dataset_info.json").read_text())["config_name"] == config
    return dest


@pytest.fixture
def ds_cache(tmp_path, monkeypatch) -> Path:
    """An HF_HOME holding TOFU's forget10_perturbed (commit COMMIT, refs/main -> COMMIT, plus
    an older commit) and retain_perturbed; the process is offline."""
    home = tmp_path / "hf"
    cache = home / "datasets"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    prepare(cache, "locuslab/TOFU", "forget10_perturbed", tofu_rows(6, "old "), OLDER)
    prepare(cache, "locuslab/TOFU", "forget10_perturbed", tofu_rows(5), COMMIT)
    prepare(cache, "locuslab/TOFU", "retain_perturbed", tofu_rows(4, "r"), COMMIT)
    refs = home / "hub" / "datasets--locuslab--TOFU" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(COMMIT)
    return cache


def test_hub_ids_are_told_from_local_paths(tmp_path, monkeypatch):
    s = parse_dataset_spec("locuslab/TOFU@v1.0:forget10_perturbed:train")
    assert s is not None and (s.repo, s.revision, s.config, s.split) == ("locuslab/TOFU", "v1.0", "forget10_perturbed",
                                                                          "train")
    s = parse_dataset_spec("cais/wmdp:wmdp-bio")
    assert s is not None and (s.repo, s.revision, s.config, s.split) == ("cais/wmdp", None, "wmdp-bio", None)
    for local in ("forget.jsonl", "data/forget.jsonl", "sets/tofu.parquet:train", "./a/b", "/abs/x", "~/x", "TOFU"):
        assert parse_dataset_spec(local) is None, local
    monkeypatch.chdir(tmp_path)
    (tmp_path / "locuslab" / "TOFU").mkdir(parents=True)  # an existing folder of that name stays local
    assert parse_dataset_spec("locuslab/TOFU:forget10_perturbed") is None
    assert resolve_dataset_spec("locuslab/TOFU:forget10_perturbed") is None


def test_a_hub_dataset_loads_offline_from_the_cache_and_records_its_commit(ds_cache):
    got = resolve_dataset_spec("locuslab/TOFU:forget10_perturbed", role="forget")
    assert got is not None
    assert got.rows == tofu_rows(5)  # the refs/main commit, not the older cached one
    assert got.columns == ["question", "answer", "paraphrased_answer", "perturbed_answer"]
    assert got.hub == {"hub_id": "locuslab/TOFU", "revision": "main", "commit": COMMIT,
                       "config": "forget10_perturbed"}
    assert got.split == "train" and got.name == "forget10_perturbed"
    # the TOFU adapter makes the same items as from a local forget10_perturbed.json
    from audit.formats import adapt_options, adapt_rows

    items, fmt, _ = adapt_rows(got.rows, got.columns, got.name, got.source, None, adapt_options())
    assert fmt == "tofu" and [it.id for it in items] == [f"forget10_perturbed-{i}" for i in range(5)]
    assert items[2].answer == "It is author 2" and items[2].distractors == ["Wrong 2a", "Wrong 2b", "Wrong 2c"]
    assert items[2].question == "What is the name of author 2?"


def test_a_revision_picks_that_cached_commit(ds_cache):
    old = resolve_dataset_spec(f"locuslab/TOFU@{OLDER}:forget10_perturbed")
    assert old is not None and old.rows == tofu_rows(6, "old ")
    assert old.hub["commit"] == OLDER and old.hub["revision"] == OLDER
    main = resolve_dataset_spec("locuslab/TOFU@main:forget10_perturbed")
    assert main is not None and main.hub["commit"] == COMMIT


def test_without_refs_the_latest_prepared_version_is_read_and_said_so(ds_cache):
    shutil.rmtree(ds_cache.parent / "hub")
    got = resolve_dataset_spec("locuslab/TOFU:forget10_perturbed")
    assert got is not None and got.hub["commit"] == COMMIT and got.hub["revision"] is None
    assert any("cannot be checked offline" in n for n in got.notes)
    with pytest.raises(InputError, match="give the commit hash"):
        resolve_dataset_spec("locuslab/TOFU@main:forget10_perturbed")


@pytest.mark.parametrize("spec, message", [
    ("locuslab/not-cached:forget10", "neither a local path nor a hub dataset in the local datasets cache"),
    ("locuslab/TOFU:retain90", "no configuration or split 'retain90'.*cached configurations: forget10_perturbed, "
                               "retain_perturbed"),
    ("locuslab/TOFU", "several configurations in the cache"),
    ("locuslab/TOFU:forget10_perturbed:test", "no split 'test'; available: train"),
    (f"locuslab/TOFU@{'1' * 40}:forget10_perturbed", "is not in the local datasets cache"),
])
def test_what_is_not_cached_is_a_clear_input_error(ds_cache, spec, message):
    with pytest.raises(InputError, match=message):
        resolve_dataset_spec(spec)


def test_online_the_resolved_commit_is_recorded(ds_cache, monkeypatch):
    """Online, ``datasets`` resolves the revision; what its builder was prepared from is recorded.
    (No network here: the builder is the cached one, handed out as ``load_dataset_builder`` would.)"""
    import datasets
    from datasets.packaged_modules.cache.cache import Cache

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    asked = {}

    def fake_builder(repo, name=None, revision=None, cache_dir=None):
        asked.update(repo=repo, name=name, revision=revision, cache_dir=cache_dir)
        if name != "forget10_perturbed":
            raise ValueError(f"BuilderConfig '{name}' not found.")
        return Cache(cache_dir=cache_dir, dataset_name="TOFU", repo_id=repo, config_name=name, version="0.0.0",
                     hash=OLDER)

    monkeypatch.setattr(datasets, "load_dataset_builder", fake_builder)
    got = resolve_dataset_spec("locuslab/TOFU@v1.0:forget10_perturbed")
    assert asked == {"repo": "locuslab/TOFU", "name": "forget10_perturbed", "revision": "v1.0",
                     "cache_dir": str(ds_cache)}
    assert got is not None and got.hub == {"hub_id": "locuslab/TOFU", "revision": "v1.0", "commit": OLDER,
                                           "config": "forget10_perturbed"}
    assert got.rows == tofu_rows(6, "old ")
    with pytest.raises(InputError, match="cannot load hub dataset locuslab/TOFU:nope"):
        resolve_dataset_spec("locuslab/TOFU:nope")

    def unreachable(*a, **k):
        raise ConnectionError("Couldn't reach 'locuslab/TOFU' on the Hub (ConnectError)")

    monkeypatch.setattr(datasets, "load_dataset_builder", unreachable)
    with pytest.raises(InputError, match="set HF_HUB_OFFLINE=1 to read the local cache"):
        resolve_dataset_spec("locuslab/TOFU:forget10_perturbed")




def test_forget_by_hub_id_becomes_an_item_set_with_its_commit(ds_cache):
    from audit.schema import ItemSetInfo
    from audit.sources import load_item_set

    s = load_item_set("locuslab/TOFU:forget10_perturbed", role="forget")
    assert s.format == "tofu" and s.split == "train" and len(s.items) == 5
    assert s.items[0].id == "forget10_perturbed-0" and s.items[0].answer == "It is author 0"
    info = ItemSetInfo(path="locuslab/TOFU:forget10_perturbed", hash="h", n_items=5, **s.info())
    assert (info.hub_id, info.revision, info.commit, info.config) == ("locuslab/TOFU", "main", COMMIT,
                                                                      "forget10_perturbed")


def test_a_hub_id_not_cached_exits_2_with_one_line(ds_cache):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["items", "check", "locuslab/TOFU:retain90"])
    assert res.exit_code == 2, res.output
    assert "no configuration or split 'retain90'" in res.output and "Traceback" not in res.output
