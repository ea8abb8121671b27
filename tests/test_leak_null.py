"""leak@k's knowledge-free null (issue 16): the answer's hits against the distractors' hits.

A stand-in "model" that samples from one fixed distribution over words, whatever the
prompt, knows nothing about any item. Sampled through the lens's own sampler at several
temperatures, its raw leak@k of the true answer rises with temperature (more mass leaves
the frequent filler words for the answer values), while the contrast leak@k(answer) −
mean leak@k(distractors) stays at 0. A stand-in that reads the subject and favours its
answer scores far above 0 at every temperature. CPU-cheap: no network, no training.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from audit.items import KnowledgeItem
from audit.stats import recovery
from probes.leak_at_k import candidate_counts, candidate_leaks, leak_contrast, normalized_match, sample_continuations

VALUES = [f"val{i:02d}" for i in range(20)]
FILLER = ["the", "a", "of", "and", "is", "it", "so", "no"]
N_ITEMS, N_SAMPLES = 240, 16


def _tokenizer(subjects: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for w in ["where", "does", "live", "?", *FILLER, *VALUES, *subjects]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


class _Cache:
    def batch_repeat_interleave(self, n: int) -> None:  # the stand-ins keep no state
        pass


class FixedSampler(torch.nn.Module):
    """Next-token logits from one fixed vector, times ``scale`` (a scaled unembedding:
    scale 0.5 samples as temperature 2). With ``knows`` (subject token id -> answer
    token id) the first sampled token of a prompt about a known subject favours its answer."""

    def __init__(self, tok, scale: float = 1.0, knows: dict[int, int] | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        logits = torch.full((len(tok),), -30.0)
        logits[tok.convert_tokens_to_ids(FILLER)] = 4.0
        vals = tok.convert_tokens_to_ids(VALUES)
        # a prior over values: some far more likely than others, the same for every prompt
        logits[vals] = torch.linspace(-1.0, 2.5, len(VALUES))[torch.randperm(len(VALUES), generator=g)]
        self.logits, self.scale, self.knows = logits, scale, knows or {}

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        out = self.logits.expand(*input_ids.shape, -1).clone()
        if input_ids.shape[1] > 1:  # the prompt pass: its last position gives the first token
            for row, ids in enumerate(input_ids.tolist()):
                hit = next((self.knows[t] for t in ids if t in self.knows), None)
                if hit is not None:
                    out[row, -1, hit] = 12.0
        return SimpleNamespace(logits=out * self.scale, past_key_values=past_key_values or _Cache())


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    subjects = [f"subj{i:03d}" for i in range(N_ITEMS)]
    items = []
    for i, s in enumerate(subjects):
        # answer and distractors drawn alike: exchangeable candidates
        cands = [VALUES[j] for j in rng.choice(len(VALUES), size=4, replace=False)]
        items.append(KnowledgeItem(id=f"i{i}", prompt=f"where does {s} live ?", answer=cands[0],
                                   distractors=cands[1:], subject=s))
    tok = _tokenizer(subjects)
    knows = {tok.convert_tokens_to_ids(it.subject): tok.convert_tokens_to_ids(it.answer) for it in items}
    return SimpleNamespace(items=items, tok=tok, knows=knows)


def _counts(world, model, temperature: float = 1.0):
    with torch.no_grad():
        samples = sample_continuations(model, world.tok, [it.prompt for it in world.items], n=N_SAMPLES,
                                       max_new_tokens=2, temperature=temperature, seed=1, max_batch_sequences=2048)
    return candidate_counts(samples, world.items, normalized_match)


def test_candidate_counts_score_each_distractor_in_the_same_samples():
    it = KnowledgeItem(id="x", prompt="p", answer="rome", distractors=["paris", "oslo", "new york"])
    rows = [["rome paris", "oslo", "new-york rome", "york"]]
    np.testing.assert_array_equal(candidate_counts(rows, [it], normalized_match)[0], [2, 1, 1, 1])
    ans, dis = candidate_leaks(4, [np.array([2, 1, 1, 1])], 1)
    assert ans[0] == pytest.approx(0.5) and dis[0] == pytest.approx(0.25)
    # at k = n any hit is a sure leak: answer 1, distractors 1
    assert leak_contrast(4, [np.array([2, 1, 1, 0])], 4)[0] == pytest.approx(1 - 2 / 3)


def test_item_blind_sampler_has_zero_contrast_at_any_temperature_while_raw_leak_rises(world):
    raw, con = {}, {}
    for t in (0.5, 1.0, 2.0):
        counts = _counts(world, FixedSampler(world.tok), temperature=t)
        raw[t] = candidate_leaks(N_SAMPLES, counts, 1)[0].mean()
        c1, cn = leak_contrast(N_SAMPLES, counts, 1), leak_contrast(N_SAMPLES, counts, N_SAMPLES)
        con[t] = (c1.mean(), cn.mean())
        for c in (c1, cn):  # mean within 3 standard errors of 0, and small in absolute terms
            se = c.std(ddof=1) / np.sqrt(len(c))
            assert abs(c.mean()) <= 3 * se and abs(c.mean()) < 0.06, (t, c.mean(), se)
    # the raw reading follows sampling entropy: several times higher at T=2 than at T=0.5
    assert raw[0.5] < raw[1.0] < raw[2.0] and raw[2.0] > 3 * raw[0.5], raw


def test_item_aware_sampler_reads_high_at_any_temperature(world):
    for t in (0.5, 2.0):
        c = leak_contrast(N_SAMPLES, _counts(world, FixedSampler(world.tok, knows=world.knows), temperature=t), 1)
        assert c.mean() > 0.7, (t, c.mean())  # measured 0.98 (T=0.5), 0.79 (T=2)


def test_a_hotter_never_trained_model_reads_no_recovery_on_the_contrast(world):
    """U = the item-blind sampler with its unembedding scaled by 0.5 (temperature 2),
    N = the unscaled one, B = the item-aware one: the raw leak@k reading calls the hotter
    model a recovery (significant at k=1, 0.25 at k=n); the contrast's CI covers 0."""
    roles = {"base": FixedSampler(world.tok, knows=world.knows), "unlearned": FixedSampler(world.tok, scale=0.5),
             "reference": FixedSampler(world.tok)}
    counts = {r: _counts(world, m) for r, m in roles.items()}
    for k in (1, N_SAMPLES):
        raw = {r: candidate_leaks(N_SAMPLES, c, k)[0] for r, c in counts.items()}
        con = {r: leak_contrast(N_SAMPLES, c, k) for r, c in counts.items()}
        r_raw = recovery(raw["base"], raw["unlearned"], raw["reference"], reading="raw", n_boot=400)
        r_con = recovery(con["base"], con["unlearned"], con["reference"], reading="contrast", n_boot=400)
        # the failure this null exists for: the raw reading sees recovery (measured leak@1 0.018,
        # CI 0.015-0.023; leak@16 0.25, CI 0.19-0.30); the contrast reads -0.002 and -0.018
        assert r_raw.ci_low > 0 and (k == 1 or r_raw.value > 0.15), (k, r_raw)
        assert r_con.ci_low <= 0 <= r_con.ci_high and abs(r_con.value) < 0.1, (k, r_con)
        assert r_con.informative


def test_report_section_shows_the_contrast_for_every_role_and_reads_old_logs():
    from audit.schema import LensResult
    from reports.attacks import leak_at_k_section
    from reports.render import Page

    roles = ["base", "unlearned", "reference", "reference_2"]
    ks = [1, 2, 4]
    data = {"n": 4, "ks": ks, "matcher": "normalized", "max_new_tokens": 3,
            "leak": {r: [0.1 * i, 0.2 * i, 0.3 * i] for i, r in enumerate(roles)},
            "leak_distractors": {r: [0.05, 0.1, 0.15] for r in roles},
            "contrast": {r: [0.1 * i - 0.05, 0.2 * i - 0.1, 0.3 * i - 0.15] for i, r in enumerate(roles)},
            "greedy": {r: 0.5 for r in roles}}
    page = Page()
    leak_at_k_section(page, LensResult(name="leak_at_k", data=data, notes=["a note"]))
    html = page.parts[-1]
    assert "<td>reference_2</td>" in html and "leak@4 distractors" in html and "a note" in html
    # greedy, then answer / distractors / contrast at k=1 and k=n
    assert ("<tr><td>reference_2</td><td>0.50</td><td>0.30</td><td>0.05</td><td>0.25</td><td>0.90</td><td>0.15</td>"
            "<td>0.75</td></tr>") in html
    old = {k: v for k, v in data.items() if k not in ("leak_distractors", "contrast")}  # a log from before
    page2 = Page()
    leak_at_k_section(page2, LensResult(name="leak_at_k", data=old))
    assert "leak@k over 4 samples" in page2.figures[-1][1] and "<table>" not in page2.parts[-1]


def test_sampling_model_reuses_its_kv_cache_correctly(base_model):
    """leak@k samples several tokens with a KV cache. The bridge-wrapped ``hf`` model returns a
    cache whose next step differs from a full forward, so leak@k samples through a plain HF
    model on the same weights: its cached step must equal the full forward."""
    from audit.corpus import plain_hf

    hf = plain_hf(base_model)
    assert hf is not base_model.hf or not any("_original_component" in k for k, _ in hf.named_parameters())
    tok = base_model.tokenizer
    ids = torch.tensor([tok("question : where does bob live ? answer : paris")["input_ids"]])
    with torch.no_grad():
        past = hf(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = hf(input_ids=ids[:, -1:], past_key_values=past, use_cache=True).logits[0, -1]
        full = hf(input_ids=ids).logits[0, -1]
    assert float((step - full).abs().max()) < 1e-3
    # the weights are shared, not copied
    assert hf.get_input_embeddings().weight.data_ptr() == base_model.hf.get_input_embeddings().weight.data_ptr()
