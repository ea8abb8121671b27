"""Issue 18's hard organisms, measured on a tiny suite: mid-block suppression, the mid-layer
RMU flood, inverted answers and the lineage reference (``audit.lab.organisms.HARD_CONSTRUCTIONS``).

Each test reads what the construction did to the weights or the behaviour, so a
construction that trains the wrong parameters, stops short of unlearning or never ranks
the answer below the never-trained model fails here.
"""

from __future__ import annotations

import pytest
import torch

from audit.lab.organisms import HARD_CONSTRUCTIONS, ModelShape, SuiteConfig, TrainConfig
from audit.lab.world import WorldConfig
from audit.sources import load_items

# 4 blocks, so the middle block k = 2 has blocks before and after it
TINY = SuiteConfig(
    world=WorldConfig(n_people=60, n_forget=20, n_qa=20, balanced=True),
    shape=ModelShape(d_model=32, n_layers=4, n_heads=4, d_mlp=128),
    train=TrainConfig(steps=400), seed=100, methods=False, nulls=False, constructions=list(HARD_CONSTRUCTIONS),
)
# fewer steps than the shipped settings (audit.lab.organisms.HARD_PARAMS, tuned on the small
# preset's world), so the suite trains in well under a minute on one core
TINY_PARAMS = {
    "mid_block": {"steps": 300, "lr": 3e-3},
    "rmu_mid": {"steps": 200, "lr": 2e-3, "alpha": 200.0},
    "inverted": {"steps": 250, "lr": 2e-3},
}


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    from audit.lab import organisms

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("hard_suite")
    with pytest.MonkeyPatch.context() as mp:
        for name, p in TINY_PARAMS.items():
            mp.setitem(organisms.HARD_PARAMS, name, {**organisms.HARD_PARAMS[name], **p})
        return d, organisms.build_suite(d, TINY)


def _load(d, name):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d / name).eval()


def test_base_knows_what_the_constructions_hide(hard):
    _, man = hard
    c = man["checkpoints"]
    assert set(c) == {"base", "reference_a", "reference_b", *HARD_CONSTRUCTIONS}
    assert c["base"]["forget_score"] >= 0.8 and c["base"]["forget_score"] >= c["reference_a"]["forget_score"] + 0.4


@pytest.mark.parametrize("name", ["mid_block", "rmu_mid"])
def test_mid_network_constructions_change_block_k_alone(hard, name):
    from audit.lab.organisms import changed_tensors

    d, man = hard
    e = man["checkpoints"][name]
    k = TINY.shape.n_layers // 2
    assert e["layer"] == k == e["params"]["layer"]
    base, m = _load(d, "base"), _load(d, name)
    changed = changed_tensors(m, base)
    block_k = {n for n in base.state_dict() if n.startswith(f"model.layers.{k}.")}
    # every tensor of block k (attention, MLP, both norms) trained; every other one bit-identical
    assert set(changed) == block_k and len(block_k) >= 9, sorted(changed)
    assert changed == e["changed_tensors"]


@pytest.mark.parametrize("name", ["mid_block", "rmu_mid", "inverted"])
def test_suppression_constructions_unlearn_behaviour_and_keep_retain(hard, name):
    _, man = hard
    c = man["checkpoints"]
    e = c[name]
    assert max(e["behavior_recovery"].values()) < 0.5, e["behavior_recovery"]
    assert e["truth"] == "SUPPRESSED" and e["role"] == "suppressed_construction"
    assert e["retain_drop"] == pytest.approx(c["base"]["retain_score"] - e["retain_score"])
    assert e["retain_drop"] <= 0.1, (name, e["retain_score"], c["base"]["retain_score"])


def test_inverted_ranks_the_answer_below_the_never_trained_model(hard):
    d, man = hard
    c = man["checkpoints"]
    e = c["inverted"]
    assert e["forget_ranking"] == {"unlearned": e["forget_score"], "reference_a": c["reference_a"]["forget_score"],
                                   "base": c["base"]["forget_score"]}
    # well under the never-trained model's rate on the evaluation questions, whose template the
    # construction never trained on for these people's distractor draws
    assert e["forget_score"] <= c["reference_a"]["forget_score"] - 0.1, e["forget_ranking"]
    assert e["behavior_recovery"]["score"] < 0
    # only the output end trained: the last block, the final norm and the unembedding
    L = TINY.shape.n_layers
    assert {n.split(".")[0] if n.startswith("lm_head") else ".".join(n.split(".")[:3]) for n in e["changed_tensors"]} \
        == {"lm_head", f"model.layers.{L - 1}", "model.norm.weight"}


def test_lineage_shares_base_init_and_never_saw_a_forget_fact(hard):
    from audit.lab.organisms import make_model

    d, man = hard
    c = man["checkpoints"]
    e = c["lineage"]
    assert e["truth"] == "DELETED" and e["role"] == "lineage_reference"
    assert e["params"]["init_seed"] == TINY.seed and e["params"]["phase1_steps"] == TINY.train.steps // 2
    # base trained in one phase: lineage is the same-initialisation retrain (the manifest says so)
    assert e["lineage"] == "same_init_retrain" and "two_phase" not in c["base"]["params"]
    # forget behaviour of a never-trained model, retain of a trained one
    assert e["forget_score"] <= c["reference_a"]["forget_score"] + 0.15
    assert e["retain_score"] >= c["base"]["retain_score"] - 0.1
    # the forget people's name words: in base they moved away from base's initial embedding; in
    # the lineage model they are still exactly those initial rows (only weight decay shrank
    # them), so it shares base's initialisation and no gradient ever reached a forget name
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d / "lineage")
    words = sorted({w for it in load_items(d / man["forget"]) for w in it.subject.split()})
    rows = tok.convert_tokens_to_ids(words)
    assert len(rows) == 2 * TINY.world.n_forget and tok.unk_token_id not in rows
    init = make_model(TINY.shape, len(tok.get_vocab()), TINY.seed).get_input_embeddings().weight[rows]
    cos = {n: torch.nn.functional.cosine_similarity(_load(d, n).get_input_embeddings().weight[rows], init, dim=-1)
           for n in ("lineage", "base", "reference_a")}
    assert cos["lineage"].min() > 0.9999, cos["lineage"].min()
    assert cos["base"].max() < 0.99, cos["base"].max()
    assert cos["reference_a"].abs().max() < 0.9  # another seed: another initialisation


def test_hard_constructions_leave_existing_suite_keys_alone():
    # a suite that does not name the hard organisms keeps the key it had before they existed
    # (the keys below were computed at the commit before them)
    assert [SuiteConfig(seed=s).key() for s in (0, 1)] == ["ac3c16e9b255e594", "8099cf63b3db8cdc"]
    assert "mid_block" not in SuiteConfig().model_dump_json()
    with pytest.raises(ValueError, match="unknown construction"):
        SuiteConfig(constructions=["mid_blok"])


# the same tiny world and seed, base trained in two phases; only the lineage organism
TWO_PHASE = TINY.model_copy(update={"constructions": ["lineage", "lineage_b"], "two_phase_base": True})


@pytest.fixture(scope="module")
def two_phase(tmp_path_factory):
    from audit.lab import organisms

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("two_phase_suite")
    return d, organisms.build_suite(d, TWO_PHASE)


@pytest.mark.slow  # a second tiny suite (~50 s); only the default preset builds a two-phase base
def test_two_phase_base_still_knows_the_forget_set(two_phase, hard):
    _, man = two_phase
    c, one_phase = man["checkpoints"], hard[1]["checkpoints"]
    assert set(c) == {"base", "reference_a", "reference_b", "lineage", "lineage_b"}
    b = c["base"]
    assert b["params"]["two_phase"] is True and b["params"]["phase1_steps"] == TINY.train.steps // 2
    assert b["params"]["steps"] == TINY.train.steps  # the same total steps as a one-phase base
    # measured (seed 100): forget ranking 0.95 / greedy 0.77 against the one-phase base's 0.98 / 0.93
    assert b["forget_score"] >= 0.8 and b["forget_score"] >= c["reference_a"]["forget_score"] + 0.4
    assert b["forget_score"] >= one_phase["base"]["forget_score"] - 0.1
    assert b["retain_score"] >= one_phase["base"]["retain_score"] - 0.05


@pytest.mark.slow  # a second tiny suite (~50 s); only the default preset builds a two-phase base
def test_two_phase_lineage_is_base_phase1_checkpoint_continued_on_retain(two_phase, hard):
    from transformers import AutoTokenizer

    from audit.lab.organisms import HARD_PARAMS, make_model, state_hash, train_lm
    from audit.lab.world import make_world

    d, man = two_phase
    c = man["checkpoints"]
    e = c["lineage"]
    assert e["truth"] == "DELETED" and e["role"] == "lineage_reference" and e["lineage"] == "base_phase1_checkpoint"
    # base's phase-1 checkpoint (hashed in memory at the switch) is where lineage started
    n1 = TINY.train.steps // 2
    assert e["params"]["phase1_steps"] == n1 and e["params"]["phase1_sha256"] == c["base"]["params"]["phase1_sha256"]
    # the one-phase suite's same-init retrain reached the same phase-1 state, bit for bit
    assert hard[1]["checkpoints"]["lineage"]["params"]["phase1_sha256"] == e["params"]["phase1_sha256"]
    # re-run phase 1 (base's init, base's schedule, retain-only corpus) and the retain-only
    # continuation: the hash and every lineage tensor match exactly
    tok = AutoTokenizer.from_pretrained(d / "lineage")
    world = make_world(TWO_PHASE.world.model_copy(update={"seed": TWO_PHASE.seed}))
    retain_only = [tok(t)["input_ids"] for t in world.training_corpus(include_forget=False)]
    m = make_model(TWO_PHASE.shape, len(tok.get_vocab()), TWO_PHASE.seed)
    train_lm(m, retain_only, TWO_PHASE.train, TWO_PHASE.seed, "phase 1", stop_at=n1)
    assert state_hash(m) == e["params"]["phase1_sha256"]
    hp = HARD_PARAMS["lineage"]
    assert e["params"]["phase2_steps"] == round(hp["phase2_fraction"] * TINY.train.steps)
    train_lm(m, retain_only, TWO_PHASE.train.model_copy(update={"steps": e["params"]["phase2_steps"],
                                                                "lr": hp["phase2_lr"]}),
             TWO_PHASE.seed + 1, "phase 2")
    saved = _load(d, "lineage").state_dict()
    assert all(torch.equal(w, saved[k]) for k, w in m.state_dict().items())
    # it never saw a forget fact: forget behaviour of a never-trained model, retain intact
    assert e["forget_score"] <= c["reference_a"]["forget_score"] + 0.15
    assert e["retain_score"] >= c["base"]["retain_score"] - 0.1


def test_two_phase_option_changes_only_its_own_suites_keys():
    assert SuiteConfig(two_phase_base=False).key() == SuiteConfig().key() == "ac3c16e9b255e594"
    assert TWO_PHASE.key() != TWO_PHASE.model_copy(update={"two_phase_base": False}).key()


@pytest.mark.slow  # the two-phase suite above
def test_lineage_b_is_a_second_continuation_of_the_same_checkpoint(two_phase):
    from audit.lab.organisms import state_hash

    d, man = two_phase
    c = man["checkpoints"]
    a, b = c["lineage"], c["lineage_b"]
    assert b["truth"] == "DELETED" and b["role"] == "lineage_reference" and b["lineage"] == "base_phase1_checkpoint"
    # the same phase-1 checkpoint, the same number of retain-only steps, other batches
    assert b["params"]["phase1_sha256"] == a["params"]["phase1_sha256"] == c["base"]["params"]["phase1_sha256"]
    assert b["params"]["phase2_steps"] == a["params"]["phase2_steps"]
    assert (a["params"]["phase2_seed"], b["params"]["phase2_seed"]) == (TWO_PHASE.seed + 1, TWO_PHASE.seed + 2)
    assert state_hash(_load(d, "lineage")) != state_hash(_load(d, "lineage_b"))
    assert b["forget_score"] <= c["reference_a"]["forget_score"] + 0.15
    assert b["retain_score"] >= c["base"]["retain_score"] - 0.1
