"""Organisms with open answers (issue 17): every forget answer belongs to one person alone.

The open-answer suite (:func:`audit.lab.organisms.open_answer_suite`) is built once per session
(about a minute on 2 CPU cores); ``AUDIT_TEST_OPEN_SUITE_DIR`` may point at a folder to keep
it between runs while developing (it is reused only if its config key matches).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from audit.sources import load_items
from cli import app

runner = CliRunner()


@pytest.fixture(scope="session")
def open_suite(tmp_path_factory) -> Path:
    from audit.lab.organisms import build_suite, open_answer_suite

    d = os.environ.get("AUDIT_TEST_OPEN_SUITE_DIR")
    path = Path(d) if d else tmp_path_factory.mktemp("open_suite")
    build_suite(path, open_answer_suite(0))
    return path


@pytest.fixture(scope="session")
def open_manifest(open_suite) -> dict:
    return json.loads((open_suite / "manifest.json").read_text())


def test_open_world_gives_everyone_a_value_of_their_own():
    from audit.lab.world import WorldConfig, make_world

    w = make_world(WorldConfig(n_people=60, n_forget=20, n_qa=20, attributes=["city", "birth_town"], seed=5))
    towns = [p.facts["birth_town"] for p in w.people]
    name_words = {x for p in w.people for x in p.name.split()}
    assert len(set(towns)) == len(towns) and name_words.isdisjoint(towns)
    assert set(towns) <= set(w.vocab)  # the tokenizer is built from the vocabulary
    # the closed facts are drawn as in a world without the open attribute
    closed = make_world(WorldConfig(n_people=60, n_forget=20, n_qa=20, attributes=["city"], seed=5))
    assert [p.facts["city"] for p in w.people] == [p.facts["city"] for p in closed.people]
    # training text states every person's town (forget people's only with include_forget)
    corpus = " ".join(w.training_corpus(include_forget=True))
    assert all(t in corpus for t in towns)
    assert not any(p.facts["birth_town"] in " ".join(w.training_corpus(include_forget=False))
                   for p in w.people_in("forget"))
    with pytest.raises(ValueError, match="unknown attribute"):
        WorldConfig(attributes=["birth_twon"])


def test_open_answers_are_distinct_and_base_knows_them_unlike_the_never_trained(open_suite, open_manifest):
    forget = load_items(open_suite / open_manifest["forget"])
    retain = load_items(open_suite / open_manifest["retain"])
    assert len(forget) == 40 and len(retain) == 40
    for items in (forget, retain):
        answers = [it.answer for it in items]
        assert len(set(answers)) == len(answers)  # no answer repeats across items (TOFU-like)
        # distractors are other people's answers of the same set, so every candidate is a
        # value the never-trained model has never seen as an answer of anyone
        assert all(set(it.distractors) <= set(answers) - {it.answer} for it in items)
    c, chance = open_manifest["checkpoints"], open_manifest["chance"]
    assert set(c) == {"base", "reference_a", "reference_b", "head_only", "lineage"}
    assert c["base"]["forget_score"] >= 0.95 and c["base"]["forget_greedy"] >= 0.9
    for k in ("reference_a", "reference_b", "lineage"):  # never trained on the forget people: chance
        assert c[k]["forget_score"] <= chance + 0.15 and c[k]["forget_greedy"] <= 0.05, (k, c[k])
        assert c[k]["retain_score"] >= 0.95, (k, c[k])
    # the forget towns are words no retain fact uses: the head alone can unlearn them
    h = c["head_only"]
    assert h["truth"] == "SUPPRESSED" and h["retain_score"] >= 0.95, h


def test_cli_builds_the_open_answer_suite(open_suite):
    # the session's suite has the command's config: the command finds it up to date (no training)
    before = (open_suite / "base" / "model.safetensors").stat().st_mtime_ns
    res = runner.invoke(app, ["organisms", "build", "--open-answers", "--out", str(open_suite)])
    assert res.exit_code == 0, res.output
    assert "head_only" in res.output and "SUPPRESSED" in res.output
    assert (open_suite / "base" / "model.safetensors").stat().st_mtime_ns == before


def _tofu_columns(items) -> dict[str, list]:
    """TOFU's upstream columns for organism items: sentences as answers, the town perturbed."""
    rows: dict[str, list] = {k: [] for k in ("question", "answer", "paraphrased_answer", "perturbed_answer",
                                             "paraphrased_question")}
    for it in items:
        name = it.subject
        rows["question"].append(f"where was {name} born ?")
        rows["answer"].append(f"{name} was born in {it.answer} .")
        rows["paraphrased_answer"].append(f"the birth town of {name} is {it.answer} .")
        rows["perturbed_answer"].append([f"the birth town of {name} is {d} ." for d in it.distractors])
        rows["paraphrased_question"].append(f"what is the birth town of {name} ?")
    return rows


@pytest.fixture(scope="module")
def tofu_dir(open_suite, open_manifest, tmp_path_factory) -> Path:
    """The open suite's items as TOFU's ``forget10_perturbed`` / ``retain_perturbed`` JSON files."""
    tofu = tmp_path_factory.mktemp("tofu")
    for split, key in (("forget10_perturbed", "forget"), ("retain_perturbed", "retain")):
        items = load_items(open_suite / open_manifest[key])
        datasets.Dataset.from_dict(_tofu_columns(items)).to_json(tofu / f"{split}.json")
    return tofu


def _run_tofu(open_suite: Path, tofu: Path, unlearned: str, out: Path, reference: str = "reference_a",
              ) -> tuple[dict, int, str]:
    args = ["run", "--base", str(open_suite / "base"), "--unlearned", str(open_suite / unlearned),
            "--reference", str(open_suite / reference), "--forget", str(tofu), "--retain", str(tofu),
            "--qa-template", "question : {question} answer :", "--out", str(out),
            "--lenses", "behavior,linear_probe,logit_lens"]
    res = runner.invoke(app, args)
    assert res.exit_code in (0, 1), res.output
    log = json.loads((out / "audit_log.json").read_text())
    assert log["status"] == "success" and log["error"] is None, res.output
    assert log["items"]["forget"]["format"] == "tofu" and log["items"]["forget"]["n_items"] == 40
    assert log["items"]["forget"]["split"] == "forget10_perturbed"
    assert {n: lr["error"] for n, lr in log["lenses"].items()} == {"behavior": None, "linear_probe": None,
                                                                   "logit_lens": None}
    label = log["verdicts"][0]["label"]
    assert res.exit_code == (0 if label == "DELETED" else 1), (label, res.output)  # the default policy
    assert log["lenses"]["linear_probe"]["data"].get("read_out"), log["lenses"]["linear_probe"]["notes"]
    return log, res.exit_code, label


@pytest.fixture(scope="module")
def head_only_tofu_log(open_suite, tofu_dir, tmp_path_factory) -> dict:
    return _run_tofu(open_suite, tofu_dir, "head_only", tmp_path_factory.mktemp("run_head_only"))[0]


def test_tofu_layout_open_answers_run_end_to_end(head_only_tofu_log):
    # completes, exit code as the verdict says, no lens error (asserted in _run_tofu); U's
    # behaviour is unlearned (the construction) while B knows every answer
    beh = head_only_tofu_log["lenses"]["behavior"]
    assert beh["recoveries"] and beh["recoveries"][0]["score_base"] >= 0.9
    assert beh["recoveries"][0]["score_unlearned"] <= 0.5
    assert head_only_tofu_log["lenses"]["linear_probe"]["data"]["read_out"] == "truth_probe"


def _base_head(log: dict) -> list[dict]:
    return [r for r in log["lenses"]["logit_lens"]["recoveries"] if r["reading"].startswith("base head")]


def test_base_head_readings_do_not_count_against_a_reference_outside_bs_basis(head_only_tofu_log):
    # the truth probe reads these organisms at chance (B 0.27 vs N 0.23 at 183a613; see
    # docs/calibration.md): their knowledge sits at the prompt's last token along B's
    # unembedding rows, which only B's head reads. reference_a, trained from another
    # initialisation, is not in B's basis (B's head ranks its retain answers at chance), so
    # it is no knowledge-free end point for that reading: shown, not counted, and the note
    # says why. head_only is then not DELETED (its construction truth is SUPPRESSED).
    ll = head_only_tofu_log["lenses"]["logit_lens"]
    basis = ll["data"]["base_head_basis"]
    assert basis["unlearned"]["in_basis"] and not basis["reference"]["in_basis"], basis
    assert basis["reference"]["base_head"] <= basis["reference"]["chance"] + 0.15, basis
    rows = _base_head(head_only_tofu_log)
    assert rows and not any(r["informative"] for r in rows), rows
    assert max(r["score_unlearned"] - r["score_reference"] for r in rows) >= 0.5, rows  # what it would have said
    assert any("not in B's basis" in n for n in ll["notes"]), ll["notes"]
    assert head_only_tofu_log["verdicts"][0]["label"] != "DELETED", head_only_tofu_log["verdicts"][0]["reason"]
    # and the logit lens cannot stand in for the uninformative probe (docs/verdict.md): U's
    # every layer is B's, so a head changed to hide the facts could leave them in its trunk
    assert basis["unlearned"]["outside_every_layer"] is False, basis
    assert "cannot stand in" in head_only_tofu_log["verdicts"][0]["reason"]


def test_base_head_readings_count_against_a_reference_in_bs_basis(open_suite, tofu_dir, tmp_path):
    # lineage (a retain-only retrain from B's initialisation) never saw a forget fact and is in
    # B's basis: against it, head_only (B's trunk under a retrained head) reads as B through
    # B's head, SUPPRESSED, its construction truth
    log, _, label = _run_tofu(open_suite, tofu_dir, "head_only", tmp_path / "run", reference="lineage")
    basis = log["lenses"]["logit_lens"]["data"]["base_head_basis"]
    assert basis["unlearned"]["in_basis"] and basis["reference"]["in_basis"], basis
    informative = [r for r in _base_head(log) if r["informative"]]
    assert informative, _base_head(log)
    assert max(r["score_base"] - r["score_reference"] for r in informative) >= 0.5, informative
    assert max(r["ci_low"] for r in informative) > 0.3, informative
    assert label == "SUPPRESSED", log["verdicts"][0]["reason"]


def test_a_u_from_bs_lineage_is_not_suppressed_through_bs_head(open_suite, tofu_dir, tmp_path):
    # the false SUPPRESSED of docs/calibration.md: U in B's basis that never learned the facts,
    # N outside it. Whatever B's head reads from U, it does not count
    log, _, label = _run_tofu(open_suite, tofu_dir, "lineage", tmp_path / "run")
    assert log["lenses"]["logit_lens"]["data"]["base_head_basis"]["unlearned"]["in_basis"]
    assert not any(r["informative"] for r in _base_head(log)), _base_head(log)
    assert label != "SUPPRESSED", log["verdicts"][0]["reason"]


def test_tofu_layout_never_trained_u_recovers_nothing(open_suite, tofu_dir, tmp_path):
    # a never-trained U (reference_b) is no false alarm: the representation reading's CI covers
    # 0 (measured: crossfit truth probe -0.25, CI -1.42 to 0.24) and the verdict is not SUPPRESSED
    log, _, label = _run_tofu(open_suite, tofu_dir, "reference_b", tmp_path / "run")
    for lens in ("linear_probe", "logit_lens"):
        primary = [r for r in log["lenses"][lens]["recoveries"] if r["kind"] == "primary" and r["informative"]]
        assert all(r["ci_low"] <= 0 <= r["ci_high"] for r in primary), (lens, primary)
    assert any(r["informative"] for r in log["lenses"]["logit_lens"]["recoveries"])
    assert label in ("DELETED", "INCONCLUSIVE"), log["verdicts"][0]["reason"]
    # trained on its own, it shares no layer with B (B's head reads its retain answers near
    # chance at every layer), so the logit lens stands in for the probe, which cannot read B
    # here; DELETED then waits only on the attacks this run did not try
    basis = log["lenses"]["logit_lens"]["data"]["base_head_basis"]["unlearned"]
    assert basis["outside_every_layer"] is True, basis
    reason = log["verdicts"][0]["reason"]
    assert "cannot stand in" not in reason, reason
    assert "no informative result from relearn, quantization, which DELETED requires" in reason, reason
