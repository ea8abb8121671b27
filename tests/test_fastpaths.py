"""The fast paths of issue #8 give the numbers of the slow ones.

``benchmarks/`` measures how much faster they are (``make bench``); these tests only
prove they compute the same thing, on the organism suite:

- the resumed forward of steering / SAE edits (run the blocks after the site from a
  cached residual) vs a full forward pass with a hook at the site;
- replica-batched interventions (settings and random controls in one pass) vs one
  intervention at a time;
- one activation capture per model and item set, shared by every lens and across runs;
- scoring one-token candidates from one forward pass of the prompt vs one pass per candidate;
- leak@k's batched sampler vs leak@k's per-prompt ``generate(num_return_sequences=n)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.intervene import PreparedItems as _Prepared
from audit.intervene import resumable as _resumable
from audit.items import KnowledgeItem
from audit.models import load_model
from audit.sources import load_items

ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # many small forward passes: on a shared 2-core machine one intra-op thread is faster
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def unlearned(suite):
    return load_model(suite / "rmu_gentle", "unlearned")


@pytest.fixture(scope="module")
def items(suite, manifest) -> list[KnowledgeItem]:
    forget = load_items(suite / manifest["forget"])[:14]
    # multi-token candidates: scored by forwarding prompt + candidate, one sequence each
    a, b = forget[0], forget[1]
    multi = [
        KnowledgeItem(id="multi-0", prompt=a.prompt, answer=f"{a.answer} {b.answer}",
                      distractors=[f"{d} {b.answer}" for d in a.distractors[:2]] + [a.distractors[2]]),
        KnowledgeItem(id="multi-1", prompt=b.prompt, answer=b.answer,
                      distractors=[f"{d} {a.answer}" for d in b.distractors]),
    ]
    return forget + multi


def _interventions(d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(k, d, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    add = 4.0 * torch.randn(k, d, generator=g)
    add[0] = 0.0  # replica 0 only ablates, replica 1 only adds
    u[1] = 0.0
    return add, u


class _LinearSAE:
    """A stand-in SAE (ReLU encoder, linear decoder) for the SAE lens's feature edit."""

    def __init__(self, d: int, d_sae: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d, d_sae, generator=g) / d**0.5
        self.W_dec = torch.randn(d_sae, d, generator=g) / d_sae**0.5

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec


def _call(prep: _Prepared, form: str, site: str, k: int, tokens_per_pass: int, resume: bool) -> torch.Tensor:
    d = prep.model.d_model
    add, abl = _interventions(d, k)
    if form == "add":
        return prep.logprobs(site, add, None, tokens_per_pass, resume=resume)
    if form == "ablate":
        return prep.logprobs(site, None, abl, tokens_per_pass, resume=resume)
    if form == "add+ablate":
        return prep.logprobs(site, add, abl, tokens_per_pass, resume=resume)
    from probes.sae import _editor

    sae = _LinearSAE(d)
    g = torch.Generator().manual_seed(1)
    delta = 3.0 * torch.rand(k, 64, generator=g)
    mask = torch.rand(k, 64, generator=g) < 0.3
    return prep.logprobs(site, None, None, tokens_per_pass, edit=_editor(sae, delta, mask), n_replicas=k,
                         resume=resume)


def _assert_same(fast: torch.Tensor, full: torch.Tensor) -> None:
    assert fast.shape == full.shape
    fin = torch.isfinite(full)
    assert torch.equal(fin, torch.isfinite(fast))  # the same slots are -inf (no such candidate)
    torch.testing.assert_close(fast[fin], full[fin], atol=ATOL, rtol=0)


@pytest.mark.parametrize("form", ["add", "ablate", "add+ablate", "edit"])
@pytest.mark.parametrize("tokens_per_pass", [32768, 256])  # one pass; many passes, replicas split into groups
def test_resumed_forward_matches_the_full_forward(unlearned, items, form, tokens_per_pass):
    prep = _Prepared(unlearned, items)
    assert _resumable(unlearned) is not None  # the organisms are Llama: the fast path is taken
    plain = prep.logprobs(None, None, None, tokens_per_pass)
    for layer in range(unlearned.n_layers):
        site = f"blocks.{layer}.hook_resid_post"
        fast = _call(prep, form, site, 4, tokens_per_pass, resume=True)
        full = _call(prep, form, site, 4, tokens_per_pass, resume=False)
        _assert_same(fast, full)
        fin = torch.isfinite(plain[0])
        # not vacuous: the intervention moves the log-probs
        assert float((full[:, fin] - plain[0][fin]).abs().max()) > 1e-2, (form, site)


def test_resumed_forward_on_gpt2(suite, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(suite / "base")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=3, n_head=4, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    tok.save_pretrained(tmp_path / "gpt2")
    m = load_model(tmp_path / "gpt2", "unlearned")
    assert _resumable(m) is not None
    prep = _Prepared(m, load_items(suite / "forget.jsonl")[:8])
    for layer in range(m.n_layers):
        site = f"blocks.{layer}.hook_resid_post"
        _assert_same(_call(prep, "add+ablate", site, 3, 32768, True), _call(prep, "add+ablate", site, 3, 32768, False))


def test_unknown_architectures_keep_the_full_forward(unlearned, monkeypatch):
    assert _resumable(unlearned) is not None
    monkeypatch.setattr(unlearned.hf.config, "final_logit_softcapping", 30.0, raising=False)  # Gemma-2 logits
    assert _resumable(unlearned) is None
    monkeypatch.setattr(unlearned.hf.config, "final_logit_softcapping", None)
    monkeypatch.setattr(unlearned.hf.config, "model_type", "some_new_arch")
    assert _resumable(unlearned) is None


@pytest.mark.parametrize("resume", [True, False])
def test_batched_replicas_match_one_at_a_time(unlearned, items, resume):
    prep = _Prepared(unlearned, items)
    add, abl = _interventions(unlearned.d_model, 6, seed=3)
    for site in ("hook_embed", "blocks.1.hook_resid_post"):
        together = prep.logprobs(site, add, abl, 32768, resume=resume)
        alone = torch.cat([prep.logprobs(site, add[r : r + 1], abl[r : r + 1], 32768, resume=resume)
                           for r in range(len(add))])
        _assert_same(together, alone)


def test_scoring_reads_one_token_candidates_from_one_prompt_pass(unlearned, items):
    from audit.scoring import encode_items, score_items

    fast = score_items(unlearned.forward, unlearned.tokenizer, items, batch_size=5)
    enc = encode_items(unlearned.tokenizer, items)
    assert sum(all(len(c) == 1 for c in cands) for cands in enc.candidates) == len(items) - 2
    # the slow way: every prompt + candidate forwarded on its own
    for i, (p, cands) in enumerate(zip(enc.prompts, enc.candidates, strict=True)):
        for j, c in enumerate(cands):
            ids = torch.tensor([p + c])
            with torch.no_grad():
                logp = torch.log_softmax(unlearned.forward(ids, torch.ones_like(ids))[0].float(), -1)
            pos, tgt = torch.arange(len(p) - 1, len(p) - 1 + len(c)), torch.tensor(c)
            assert abs(fast.candidate_logprobs[i][j] - float(logp[pos, tgt].sum())) < ATOL
            if j == 0:
                assert bool(fast.greedy[i]) == bool((logp[pos].argmax(-1) == tgt).all())


def test_capture_runs_once_per_model_and_item_set(suite, manifest, tmp_path):
    import audit.activations as A
    from audit.config import AuditConfig
    from audit.context import AuditContext
    from audit.registry import get_lens

    forget = load_items(suite / manifest["forget"])[:40]
    retain = load_items(suite / manifest["retain"])[:40]
    models = {r: load_model(suite / p, r) for r, p in
              (("base", "base"), ("unlearned", "rmu_gentle"), ("reference", "reference_a"))}
    cfg = AuditConfig(base="b", unlearned="u", forget="f", retain="r", cache_dir=str(tmp_path / "acts"), batch_size=16)

    def lenses(ctx):
        from probes.steering import _Acts

        for name in ("logit_lens", "similarity"):
            spec = get_lens(name)
            assert spec.fn(ctx, spec.make_config({})).error is None
        acts = _Acts(ctx)  # the steering lens's directions and residual norms read the same capture
        for role in models:
            assert acts.scale(role, "blocks.2.hook_resid_post") > 0
            assert acts.get(role, "forget", "blocks.1.hook_resid_post", "mean").shape == (40, ctx.models[role].d_model)

    before = A.FORWARD_COUNTER["capture"]
    ctx = AuditContext(cfg, models, {"forget": forget, "retain": retain})
    lenses(ctx)
    # two lenses and the steering lens's reads, every layer of three models on two item sets:
    # one capture pass each
    assert A.FORWARD_COUNTER["capture"] - before == 3 * 2 * 3  # 40 items in batches of 16
    again = AuditContext(cfg, models, {"forget": forget, "retain": retain})
    lenses(again)  # a later run reads the on-disk cache: no forward pass at all
    assert A.FORWARD_COUNTER["capture"] - before == 18
    for role in models:
        a, b = ctx.activations(role, "forget"), again.activations(role, "forget")
        assert all(torch.equal(a.last[h], b.last[h]) and torch.equal(a.mean[h], b.mean[h]) for h in a.hooks)


def _per_prompt_generate():
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # benchmarks/ is not an installed package
        sys.path.insert(0, root)
    from benchmarks.bench_leak import per_prompt_generate

    return per_prompt_generate


def test_batched_sampling_is_greedy_decoding_at_zero_temperature(unlearned, suite, manifest):
    from probes.leak_at_k import sample_continuations

    # three prompt templates of different lengths: the batch is left-padded
    prompts = [it.prompt for it in load_items(suite / manifest["forget"])[:12]]
    m = load_model(suite / "base", "base")
    for model in (m, unlearned):
        greedy = _per_prompt_generate()(model.hf, model.tokenizer, prompts, n=1, max_new_tokens=3, do_sample=False)
        cold = sample_continuations(model.hf, model.tokenizer, prompts, n=2, max_new_tokens=3, temperature=1e-4)
        assert [[g[0]] * 2 for g in greedy] == cold


def test_batched_sampling_draws_from_the_same_distribution(suite, manifest):
    from probes.leak_at_k import normalized_match, sample_continuations

    m = load_model(suite / "npo_gentle", "unlearned")
    items = load_items(suite / manifest["forget"])[:10]
    prompts = [it.prompt for it in items]
    n = 64
    batched = sample_continuations(m.hf, m.tokenizer, prompts, n=n, max_new_tokens=3, seed=0)
    loop = _per_prompt_generate()(m.hf, m.tokenizer, prompts, n=n, max_new_tokens=3, seed=0)
    rate = {k: np.array([np.mean([normalized_match(s, it) for s in row]) for row, it in zip(v, items, strict=True)])
            for k, v in (("batched", batched), ("loop", loop))}
    p = (rate["batched"] + rate["loop"]) / 2
    se = np.sqrt(np.sum(2 * p * (1 - p) / n)) / len(items)
    assert 0.05 < p.mean() < 0.95  # the leak rate is not stuck at 0 or 1, so this compares something
    assert abs(rate["batched"].mean() - rate["loop"].mean()) < 4 * se + 1e-9
    # and the first sampled word: each answer word's frequency agrees within sampling error
    first = {k: [s.split()[0] if s.split() else "" for row in v for s in row] for k, v in
             (("batched", batched), ("loop", loop))}
    for w in {it.answer for it in items}:
        fb, fl = (np.mean([x == w for x in first[k]]) for k in ("batched", "loop"))
        q = (fb + fl) / 2
        assert abs(fb - fl) < 4 * np.sqrt(2 * q * (1 - q) / len(first["batched"])) + 1e-9, w
