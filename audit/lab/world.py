"""A fictional world of people with closed-set and open attributes, for model organisms (SPEC §6).

Every person has a unique two-token name and one value per attribute. A closed attribute
(``ATTRIBUTES``: city, job, sport) draws its value from ten shared words, so answers repeat
across people. An open attribute (``OPEN_ATTRIBUTES``: ``birth_town``) gives every person
a value of their own, an invented one-word town no other person has; its items take their
distractors from other people's values of the same group, so no answer repeats across items,
as in TOFU, capitals or RWKU. Each fact is
written in several training templates; one further template (a question) is the
evaluation template. Models learn the question format from a subset of retain people
("qa people"); every scored item (forget and retain alike) is about a person whose
question form was never trained, so the score measures knowledge, not memorised strings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pydantic import BaseModel, field_validator

from audit.items import KnowledgeItem

ATTRIBUTES: dict[str, dict] = {
    "city": {
        "values": ["paris", "rome", "oslo", "lima", "cairo", "quito", "dakar", "hanoi", "bern", "riga"],
        "train": ["{name} lives in {v} .", "{name} has a home in {v} .", "the home town of {name} is {v} ."],
        "question": "question : where does {name} live ? answer :",
    },
    "job": {
        "values": ["baker", "pilot", "doctor", "farmer", "lawyer", "painter", "nurse", "tailor", "miner", "judge"],
        "train": ["{name} works as a {v} .", "{name} earns a living as a {v} .", "the job of {name} is {v} ."],
        "question": "question : what is the job of {name} ? answer :",
    },
    "sport": {
        "values": ["tennis", "rugby", "golf", "chess", "hockey", "boxing", "rowing", "fencing", "cricket", "judo"],
        "train": ["{name} plays {v} .", "{name} is a fan of playing {v} .", "the sport of {name} is {v} ."],
        "question": "question : which sport does {name} play ? answer :",
    },
}

# Open attributes: every person's value is their own (see :func:`_towns`); an item's
# distractors are other people's values in the same group (forget / retain / qa), so a model
# that never saw the group's facts has no prior that favours any candidate. The templates
# include one with the value first, as facts are written both ways in real text.
OPEN_ATTRIBUTES: dict[str, dict] = {
    "birth_town": {
        "train": ["{name} was born in {v} .", "the birth town of {name} is {v} .",
                  "{v} is the town where {name} was born ."],
        "question": "question : where was {name} born ? answer :",
    },
}

_TOWN_ENDINGS = ["ton", "by", "vik", "holm", "dal", "burg", "mere", "stad", "wick", "ford"]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "n", "r", "s", "l", "x"]


class WorldConfig(BaseModel):
    """Shape of the fictional world."""

    n_people: int = 150
    """People in the world."""
    n_forget: int = 60
    """Of whom this many form the forget set."""
    n_qa: int = 45
    """Retain people whose question form is trained (they teach the format)."""
    attributes: list[str] = list(ATTRIBUTES)
    """Which attributes each person has: names of ``ATTRIBUTES`` (closed sets) or of
    ``OPEN_ATTRIBUTES`` (a value per person, e.g. ``["birth_town"]`` for a world whose every
    answer is distinct)."""
    n_distractors: int = 3
    """Wrong answers per item (chance = 1 / (1 + n_distractors))."""
    seed: int = 0
    """Seed of the world (names, facts, distractors)."""
    balanced: bool = False
    """Give every value of an attribute (as near as possible) equally many people within each
    group (forget, qa, retain). A never-trained model answers forget people from its prior over
    values; with skewed forget answers (say 10 of 40 people play tennis) that prior alone scores
    far from chance, and two never-trained seeds differ by 0.1-0.2 in recovery
    (docs/calibration.md). Balanced answers make a prior worth exactly chance. Off by default
    (the demo's suite keeps its world); the small calibration preset turns it on. Open
    attributes need no balancing: each value is held once."""

    @field_validator("attributes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in ATTRIBUTES and a not in OPEN_ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; known: {[*ATTRIBUTES, *OPEN_ATTRIBUTES]}")
        if len(set(v)) != len(v):
            raise ValueError(f"attributes repeat: {v}")
        return v


def attribute_spec(name: str) -> dict:
    """Templates (and, for a closed attribute, values) of an attribute of either kind."""
    return ATTRIBUTES[name] if name in ATTRIBUTES else OPEN_ATTRIBUTES[name]


def is_open(name: str) -> bool:
    """Whether every person holds a value of their own for this attribute."""
    return name in OPEN_ATTRIBUTES


@dataclass
class Person:
    name: str
    facts: dict[str, str]
    group: str  # "forget" | "retain" | "qa"


@dataclass
class World:
    config: WorldConfig
    people: list[Person]
    vocab: list[str] = field(default_factory=list)

    def people_in(self, *groups: str) -> list[Person]:
        return [p for p in self.people if p.group in groups]

    def sentences(self, *groups: str, question: bool = False) -> list[str]:
        """Training sentences of the people in ``groups`` (question form if asked)."""
        out = []
        for p in self.people_in(*groups):
            for a, v in p.facts.items():
                spec = attribute_spec(a)
                if question:
                    out.append(spec["question"].format(name=p.name) + f" {v} .")
                else:
                    out.extend(t.format(name=p.name, v=v) for t in spec["train"])
        return out

    def training_corpus(self, include_forget: bool) -> list[str]:
        """Everything a model of this world trains on."""
        groups = ("forget", "retain", "qa") if include_forget else ("retain", "qa")
        return self.sentences(*groups) + self.sentences("qa", question=True)

    def items(self, group: str) -> list[KnowledgeItem]:
        """Evaluation items (question template) for a group of people.

        A closed attribute's distractors are other values of its set; an open attribute's are
        the values of other people of the same group.
        """
        rng = random.Random(f"{self.config.seed}-distractors-{group}")
        people = self.people_in(group)
        out = []
        for i, p in enumerate(people):
            for a, v in p.facts.items():
                if is_open(a):
                    others = [q.facts[a] for q in people if q is not p]
                else:
                    others = [x for x in ATTRIBUTES[a]["values"] if x != v]
                out.append(
                    KnowledgeItem(
                        id=f"{group}-{i:03d}-{a}",
                        prompt=attribute_spec(a)["question"].format(name=p.name),
                        answer=v,
                        distractors=rng.sample(others, self.config.n_distractors),
                        subject=p.name,
                        attribute=a,
                    )
                )
        return out


def _names(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < 2 * n:
        w = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        words.add(w)
    ws = sorted(words)
    rng.shuffle(ws)
    return [f"{ws[2 * i]} {ws[2 * i + 1]}" for i in range(n)]


def _towns(n: int, rng: random.Random, taken: set[str]) -> list[str]:
    """``n`` distinct invented one-word town names, none of them in ``taken``.

    Drawn from 18 × 7 × 18 × 7 × 10 ≈ 160,000 names, so a value says nothing about its
    holder: it only becomes an answer by learning whose town it is.
    """
    out: dict[str, None] = {}
    while len(out) < n:
        w = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(
            _TOWN_ENDINGS)
        if w not in taken:
            out[w] = None
    return list(out)


def _balanced_values(groups: list[str], values: list[str], rng: random.Random) -> list[str]:
    """One value per person, each value used equally often (±1) within every group."""
    out = [""] * len(groups)
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        deck: list[str] = []
        while len(deck) < len(idx):
            deck += rng.sample(values, len(values))  # whole shuffled rounds: counts differ by ≤ 1
        for i, v in zip(idx, deck[: len(idx)], strict=True):
            out[i] = v
    return out


def make_world(config: WorldConfig) -> World:
    """Draw a world from its config (deterministic in ``config.seed``)."""
    rng = random.Random(config.seed)
    names = _names(config.n_people, rng)
    groups = ["forget" if i < config.n_forget else ("qa" if i < config.n_forget + config.n_qa else "retain")
              for i in range(len(names))]
    closed = [a for a in config.attributes if not is_open(a)]
    if config.balanced:
        values = {a: _balanced_values(groups, ATTRIBUTES[a]["values"], rng) for a in closed}
        closed_facts = [{a: values[a][i] for a in closed} for i in range(len(names))]
    else:  # person by person, attribute by attribute: the draw order every unbalanced world was built with
        closed_facts = [{a: rng.choice(ATTRIBUTES[a]["values"]) for a in closed} for _ in names]
    # open values from their own generator: a world's closed facts do not depend on whether it
    # also has open attributes
    open_rng = random.Random(f"{config.seed}-open")
    taken = {w for n in names for w in n.split()}  # no value is a name word or another open value
    open_values: dict[str, list[str]] = {}
    for a in (a for a in config.attributes if is_open(a)):
        open_values[a] = _towns(len(names), open_rng, taken)
        taken.update(open_values[a])
    facts = [{a: (open_values[a][i] if is_open(a) else closed_facts[i][a]) for a in config.attributes}
             for i in range(len(names))]
    people = [Person(name, f, g) for name, f, g in zip(names, facts, groups, strict=True)]
    vocab: set[str] = set()
    for p in people:
        vocab.update(p.name.split())
    for a in config.attributes:
        spec = attribute_spec(a)
        vocab.update(open_values[a] if is_open(a) else spec["values"])
        for t in [*spec["train"], spec["question"]]:
            vocab.update(w for w in t.replace("{name}", "").replace("{v}", "").split())
    return World(config, people, sorted(vocab))
