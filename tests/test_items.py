"""Item loading: every malformed input gets a message naming the line and the problem."""

from __future__ import annotations

import json

import pytest

from audit.errors import InputError
from audit.items import items_hash, parse_items
from audit.sources import load_items

GOOD = {"id": "a", "prompt": "x lives in", "answer": "paris", "distractors": ["rome", "oslo", "lima"]}


def line(**kw) -> str:
    return json.dumps({**GOOD, **kw})


def test_good_items_parse_with_tags():
    items = parse_items([line(subject="x", attribute="city"), "", line(id="b")])
    assert [i.id for i in items] == ["a", "b"]
    assert items[0].candidates == ["paris", "rome", "oslo", "lima"]
    assert items[0].subject == "x" and items[1].subject is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([line(), "{not json"], r"<items>:2: not valid JSON"),
        (["[1, 2]"], r"<items>:1: expected a JSON object, got list"),
        ([json.dumps({"id": "a", "prompt": "p", "distractors": ["b", "c", "d"]})], r"<items>:1: field 'answer': missing"),
        ([line(distractors=["rome", "oslo"])], r"<items>:1: item 'a' has 2 distractors; at least 3 are needed"),
        ([line(distractors=["rome", "Paris", "lima"])], r"<items>:1: item 'a': the answer 'paris' is among its distractors"),
        ([line(), line()], r"<items>:2: duplicate id 'a' \(first seen on line 1\)"),
        ([line(answer="  ")], r"<items>:1: field 'answer' is empty"),
        ([line(distractors="rome")], r"<items>:1: field 'distractors': Input should be a valid list"),
        ([line(id=3)], r"<items>:1: field 'id': Input should be a valid string"),
        ([line(distractors=["rome", "rome", "lima"])], r"item 'a' repeats a distractor"),
        ([], r"<items>: no items \(the file is empty\)"),
        (["", "  "], r"no items"),
    ],
)
def test_malformed_items_are_rejected_with_a_clear_message(lines, message):
    with pytest.raises(InputError, match=message):
        parse_items(lines)


def test_load_items_file_errors(tmp_path):
    with pytest.raises(InputError, match="item file not found"):
        load_items(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty\.jsonl: no items"):
        load_items(empty)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="cannot read item file"):
        load_items(binary)


def test_items_hash_changes_with_content():
    a = parse_items([line()])
    b = parse_items([line(answer="cairo")])
    assert items_hash(a) == items_hash(parse_items([line()]))
    assert items_hash(a) != items_hash(b)
