"""Checkpoints as users name them (issue 19): hub IDs from a local cache, PEFT adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from audit.errors import InputError
from audit.models import load_model, parse_hub_id, resolve_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(suite, tmp_path, monkeypatch) -> Path:
    """A Hugging Face hub cache holding the suite's base as ``org/tiny`` (revision main),
    laid out as huggingface_hub writes it; nothing is downloaded (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(suite / "base", snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_are_told_from_paths(tmp_path):
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("open-unlearning/tofu_Llama-3.2-1B@v1.0") == ("open-unlearning/tofu_Llama-3.2-1B", "v1.0")
    for local in ("./org/name", "/abs/path", "model.gguf", "name", "a/b/c"):
        assert parse_hub_id(local) is None, local
    (tmp_path / "org" / "name").mkdir(parents=True)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # an existing folder of that name is a local path, not a hub ID
        assert parse_hub_id("org/name") is None
    finally:
        os.chdir(cwd)


def test_a_hub_id_resolves_from_the_local_cache_and_its_commit_is_recorded(hub_cache, suite):
    path, meta = resolve_checkpoint("org/tiny")
    assert path == hub_cache / "models--org--tiny" / "snapshots" / COMMIT
    assert meta == {"hub_id": "org/tiny", "revision": "main", "commit": COMMIT}
    m = load_model("org/tiny", "base")
    assert m.hash == load_model(suite / "base", "base").hash
    info = m.info()
    assert info["path"] == "org/tiny" and info["commit"] == COMMIT and info["hub_id"] == "org/tiny"
    assert resolve_checkpoint(f"org/tiny@{COMMIT}")[1]["commit"] == COMMIT


def test_a_hub_id_missing_from_the_cache_is_a_clear_input_error(hub_cache):
    with pytest.raises(InputError, match="neither a local path nor a hub model in the local Hugging Face cache"):
        resolve_checkpoint("org/absent")
    with pytest.raises(InputError, match="checkpoint not found|cannot resolve"):
        resolve_checkpoint("org/tiny@no-such-revision")


@pytest.fixture(scope="module")
def adapter_and_merged(suite, tmp_path_factory) -> tuple[Path, Path]:
    """A LoRA adapter on the suite's base (non-zero, so merging changes the weights) and
    the same adapter merged by hand with peft and saved as a full checkpoint."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(suite / "base", torch_dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(root / "adapter")
    cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(suite / "base")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged", safe_serialization=True)
    AutoTokenizer.from_pretrained(suite / "base").save_pretrained(root / "merged")
    return root / "adapter", root / "merged"


def test_an_adapter_loads_as_its_merged_model(adapter_and_merged, suite):
    adapter, merged = adapter_and_merged
    a, m = load_model(adapter, "unlearned"), load_model(merged, "unlearned")
    b = load_model(suite / "base", "base")
    ids = torch.tensor([[1, 5, 9, 13]])
    mask = torch.ones_like(ids)
    la, lm, lb = a.forward(ids, mask), m.forward(ids, mask), b.forward(ids, mask)
    assert torch.allclose(la, lm, atol=1e-5)
    assert (la - lb).abs().max() > 1e-3  # the adapter changed the model
    assert a.hash == m.hash
    assert a.info()["adapter"] == str(adapter) and a.info()["adapter_base"] == str(suite / "base")


def test_an_adapter_as_unlearned_gives_the_same_log_as_the_merged_model(adapter_and_merged, suite, run_args,
                                                                         tmp_path):
    from cli import app

    adapter, merged = adapter_and_merged
    logs = {}
    for name, ck in (("adapter", adapter), ("merged", merged)):
        args = run_args(suite, tmp_path / name, lenses="behavior,linear_probe")
        args[args.index("--unlearned") + 1] = str(ck)
        r = CliRunner().invoke(app, args)
        assert r.exit_code in (0, 1), r.output
        logs[name] = json.loads((tmp_path / name / "audit_log.json").read_text())
    a, m = logs["adapter"], logs["merged"]
    assert a["models"]["unlearned"]["adapter"] == str(adapter) and m["models"]["unlearned"]["adapter"] is None
    assert a["models"]["unlearned"]["hash"] == m["models"]["unlearned"]["hash"]
    assert a["verdicts"] == m["verdicts"]
    for lens in ("behavior", "linear_probe"):
        assert a["lenses"][lens]["recoveries"] == m["lenses"][lens]["recoveries"], lens


def test_an_adapter_whose_base_is_missing_is_a_clear_input_error(adapter_and_merged, tmp_path):
    adapter, _ = adapter_and_merged
    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "nowhere")
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="not found|no config.json|neither"):
        load_model(bad, "unlearned")


def test_audit_run_takes_a_hub_id_and_records_its_commit(hub_cache, suite, run_args, tmp_path):
    from cli import app

    args = run_args(suite, tmp_path / "out")
    args[args.index("--base") + 1] = "org/tiny"
    r = CliRunner().invoke(app, args)
    assert r.exit_code in (0, 1), r.output
    log = json.loads((tmp_path / "out" / "audit_log.json").read_text())
    base = log["models"]["base"]
    assert base["path"] == "org/tiny" and base["hub_id"] == "org/tiny" and base["commit"] == COMMIT
    # one not in the cache: exit 2, one line, nothing written
    args = run_args(suite, tmp_path / "out2")
    args[args.index("--base") + 1] = "org/absent"
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "org/absent" in r.output, r.output
    assert not (tmp_path / "out2" / "audit_log.json").exists()
