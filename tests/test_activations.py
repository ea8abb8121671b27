"""Activation capture reads the same numbers transformers computes, and is cached."""

from __future__ import annotations

import torch

from audit import activations as A
from audit.scoring import encode_prompt
from audit.sources import load_items


def _hf_hidden(model, prompt):
    ids = torch.tensor([encode_prompt(model.tokenizer, prompt)])
    out = model.hf(input_ids=ids, output_hidden_states=True)
    return out.hidden_states


def test_capture_equals_transformers_hidden_states(suite, manifest, base_model, tmp_path):
    items = load_items(suite / manifest["forget"])[:7]  # odd count: batches of 4 pad unevenly
    acts = A.capture(base_model, items, batch_size=4, cache_dir=tmp_path)
    L = base_model.n_layers
    norm = base_model.hf.model.norm
    for i, it in enumerate(items):
        hs = _hf_hidden(base_model, it.prompt)
        for layer in range(L - 1):
            ref = hs[layer + 1][0]
            torch.testing.assert_close(acts.last[f"blocks.{layer}.hook_resid_post"][i], ref[-1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(acts.mean[f"blocks.{layer}.hook_resid_post"][i], ref[1:].mean(0), atol=1e-5, rtol=1e-5)
        # transformers returns the last layer after the final norm; the hook reads it before
        last = acts.last[f"blocks.{L - 1}.hook_resid_post"][i]
        torch.testing.assert_close(norm(last[None])[0], hs[L][0, -1], atol=1e-5, rtol=1e-5)


def test_capture_is_cached_on_disk(suite, manifest, base_model, tmp_path):
    items = load_items(suite / manifest["retain"])[:10]
    before = A.FORWARD_COUNTER["capture"]
    a1 = A.capture(base_model, items, cache_dir=tmp_path)
    mid = A.FORWARD_COUNTER["capture"]
    a2 = A.capture(base_model, items, cache_dir=tmp_path)
    assert mid > before and A.FORWARD_COUNTER["capture"] == mid
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 and not list(tmp_path.glob(".*tmp"))
    for h in a1.hooks:
        assert torch.equal(a1.last[h], a2.last[h])
    # a different item set is a different entry
    A.capture(base_model, items[:5], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_hooks_are_removed_after_capture(suite, manifest, base_model, tmp_path):
    items = load_items(suite / manifest["forget"])[:3]
    A.capture_uncached(base_model, items, A.resid_hooks(base_model.n_layers))
    assert all(not hp._forward_hooks for hp in base_model.bridge.hook_dict.values())
