"""Checkpoint loading: formats, refusals and compatibility checks, each with its message."""

from __future__ import annotations

import pickle
import shutil

import pytest

from audit.errors import InputError
from audit.lab.organisms import ModelShape, make_model, make_tokenizer
from audit.lab.world import WorldConfig, make_world
from audit.models import check_compatible, content_hash, load_model


def test_missing_and_non_checkpoint_paths(tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is not a Hugging Face checkpoint: it has no config.json"):
        load_model(tmp_path / "empty")
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="neither a Hugging Face checkpoint directory nor a .gguf file"):
        load_model(f)


def test_config_without_weights(suite, tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(suite / "base" / "config.json", d)
    with pytest.raises(InputError, match="has a config.json but no weights"):
        load_model(d)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_weights_are_refused_and_never_executed(suite, tmp_path, monkeypatch):
    d = tmp_path / "pickled"
    shutil.copytree(suite / "base", d)
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as fh:
        pickle.dump(_Boom(), fh)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"pickle-based weights \(pytorch_model.bin\).*--allow-pickle"):
        load_model(d)
    assert not (tmp_path / "PWNED").exists()


def test_loaded_model_is_hookable_and_hashed(suite, base_model):
    assert base_model.n_layers == 4 and base_model.d_model == 128
    assert "blocks.3.hook_resid_post" in base_model.bridge.hook_dict
    assert base_model.hash == content_hash(suite / "base")
    assert content_hash(suite / "base") != content_hash(suite / "reference_a")


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)


def test_architecture_mismatch_names_the_difference(suite, base_model, tmp_path):
    tok = base_model.tokenizer
    small = make_model(ModelShape(d_model=64, n_layers=4, n_heads=4, d_mlp=128), len(tok.get_vocab()), 0)
    _save(small, tok, tmp_path / "small")
    other = load_model(tmp_path / "small", "unlearned")
    with pytest.raises(InputError, match=r"base and unlearned have different architectures: hidden_size is 128 .* but 64"):
        check_compatible([base_model, other])


def test_tokenizer_mismatch_is_reported(base_model, tmp_path):
    world = make_world(WorldConfig(seed=99))
    tok = make_tokenizer(world)
    v = len(base_model.tokenizer.get_vocab())
    # same vocabulary size, different words: only the tokenizer differs
    while len(tok.get_vocab()) < v:
        tok.add_tokens([f"pad{len(tok.get_vocab())}"])
    model = make_model(ModelShape(), len(tok.get_vocab()), 0)
    if len(tok.get_vocab()) != v:
        pytest.skip("could not match vocabulary sizes")
    _save(model, tok, tmp_path / "othertok")
    other = load_model(tmp_path / "othertok", "reference")
    with pytest.raises(InputError, match="base and reference have different tokenizers"):
        check_compatible([base_model, other])


def test_unknown_dtype(suite):
    with pytest.raises(InputError, match="unknown dtype 'float8'"):
        load_model(suite / "base", dtype="float8")
