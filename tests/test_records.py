"""LLaVA JSON / JSONL reading: every bad record is named with its reason; images are normalised as LLaVA does."""

import json

import pytest

from llava_platform.data.records import BadRecord, Record, parse_record, read_records


def rec(rid="a", image="img.png", convs=None, **extra):
    convs = convs if convs is not None else [{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."}]
    out = {"id": rid, "conversations": convs, **extra}
    if image is not None:
        out["image"] = image
    return out


def test_single_image_placeholder_moves_to_front():
    r = parse_record(rec())
    assert r.images == ["img.png"] and r.messages[0].content == "<image>\nWhat is it?"
    # no placeholder in the text: added to the first human turn
    r = parse_record(rec(convs=[{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "x"}]))
    assert r.messages[0].content == "<image>\nDescribe."


def test_text_only_and_multi_image_records():
    r = parse_record(rec(image=None, convs=[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]))
    assert r.images == [] and r.messages[0].content == "Hi"
    convs = [{"from": "human", "value": "<image> vs <image>: same?"}, {"from": "gpt", "value": "no"}]
    r = parse_record(rec(image=["a.png", "b.png"], convs=convs))
    assert r.images == ["a.png", "b.png"] and r.messages[0].content == "<image> vs <image>: same?"


def test_extra_fields_are_kept():
    assert parse_record(rec(answer="cat")).extra == {"answer": "cat"}


@pytest.mark.parametrize(
    "raw, reason",
    [
        (rec(convs=[]), "'conversations' must be a non-empty list"),
        ({"id": "a"}, "'conversations' must be a non-empty list"),
        (rec(convs=[{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]), "'from' is 'bot'; use 'human' or 'gpt'"),
        (rec(convs=[{"from": "human"}, {"from": "gpt", "value": "y"}]), r"turn 0: expected \{'from': ..., 'value': <text>\}"),
        (rec(convs=[{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]), "turn 0 is from 'assistant', expected 'user'"),
        (rec(convs=[{"from": "human", "value": "<image>x"}]), "must end with gpt"),
        (rec(image=["a.png", "b.png"]), "the text has 1 <image> placeholders but the record has 2 images"),
        (rec(image=None), "the text has 1 <image> placeholders but the record has 0 images"),
        (rec(image=3), "'image' must be a path or a list of paths"),
    ],
)
def test_malformed_records_say_why(raw, reason):
    with pytest.raises(ValueError, match=reason) as e:
        parse_record(raw, 7)
    assert e.value.record_id == raw.get("id", "#7")


def test_read_json_names_every_bad_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([rec("good"), rec("bad-role", convs=[{"from": "x", "value": "y"}]), "junk", rec("good2")]))
    items = list(read_records(path))
    assert [type(i).__name__ for i in items] == ["Record", "BadRecord", "BadRecord", "Record"]
    assert [i.id for i in items if isinstance(i, BadRecord)] == ["bad-role", "#2"]


def test_read_jsonl_reports_malformed_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec("a")) + "\n{not json\n\n" + json.dumps(rec("b")) + "\n")
    items = list(read_records(path))
    assert [i.id for i in items] == ["a", "line 2", "b"]
    assert isinstance(items[1], BadRecord) and "malformed JSON" in items[1].reason
    assert all(isinstance(i, Record) for i in (items[0], items[2]))


def test_whole_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found.*check data.path"):
        list(read_records(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("[{]")
    with pytest.raises(ValueError, match=r"broken.json: malformed JSON at line 1 column 3"):
        list(read_records(tmp_path / "broken.json"))
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="expected a JSON list of records"):
        list(read_records(tmp_path / "obj.json"))
