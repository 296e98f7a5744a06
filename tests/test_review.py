"""GPT-assisted review (eval/review.py): the judge's messages, score parsing, rule files, and a review against a real
OpenAI-compatible HTTP server (a stdlib one in a thread) whose replies are chosen by the question."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import REPO
from judge import CannedJudge
from llava_platform.eval.review import (SYSTEM_PROMPT, ReviewItem, Rule, judge_messages, load_rules, parse_scores,
                                        review)  # fmt: skip

RULES = {"conv": Rule("Assistant", "CONV PROMPT"), "default": Rule("Assistant", "DEFAULT PROMPT")}

# question -> the judge's reply (None: HTTP 500)
REPLIES = {
    "Q conv a": "8 6\nAssistant 1 names the dog's breed.",
    "Q conv b": "9,7\nboth fine",
    "Q detail a": "no score here",
    "Q detail b": None,
    "Q detail c": "6 3\nAssistant 2 misses the table.",
    "Q complex a": "I would rate them 7 and 5.",
    "Q ocr a": "10 5\n",  # no rule of its own: "default"
}


def item(question_id: str, category: str, question: str) -> ReviewItem:
    return ReviewItem(question_id, category, question, context=f"caption of {question_id}",
                      reference=f"reference {question_id}", answer=f"answer {question_id}")  # fmt: skip


@pytest.fixture(scope="module")
def judge():
    with CannedJudge(REPLIES) as canned:
        yield canned


@pytest.mark.parametrize("reply, expected", [
    ("8 7\nAssistant 1 is more precise.", (8.0, 7.0)), ("8,7", (8.0, 7.0)), ("8, 7\n", (8.0, 7.0)),
    ("8.5 9", (8.5, 9.0)), ("Score: 8 7", None), ("", None), ("8", None), ("8 7 6", None), ("\n8 7", None),
    ("nan 7", None),
])  # fmt: skip
def test_parse_scores(reply, expected):
    assert parse_scores(reply) == expected


def test_judge_messages_layout():
    system, user = judge_messages(item("1", "conv", "What breed is the dog?"), RULES)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user"
    assert user["content"] == (
        "[Context]\ncaption of 1\n\n[Question]\nWhat breed is the dog?\n\n"
        "[Assistant 1]\nreference 1\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nanswer 1\n\n[End of Assistant 2]\n\n[System]\nCONV PROMPT\n\n"
    )


def test_judge_messages_unknown_category_uses_default():
    content = judge_messages(item("2", "ocr", "What does the sign say?"), RULES)[1]["content"]
    assert content.endswith("[System]\nDEFAULT PROMPT\n\n")
    assert "CONV PROMPT" not in content
    with pytest.raises(ValueError, match=r"\"ocr\".*\['conv'\]"):
        judge_messages(item("2", "ocr", "What does the sign say?"), {"conv": RULES["conv"]})


def test_shipped_rules():
    rules = load_rules(str(REPO / "jobs/configs/eval/review_rules.json"))
    assert set(rules) == {"conv", "detail", "complex", "default"}
    for rule in rules.values():
        assert rule.role == "Assistant"
        assert "1 to 10" in rule.prompt and "first line" in rule.prompt and "order" in rule.prompt


def test_load_rules_errors(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"conv": {"role": "Assistant", "prompt": "p"}, "detail": {"role": "Assistant"}}))
    with pytest.raises(ValueError, match=r'rules\.json: entry "detail" needs string fields "role" and "prompt"'):
        load_rules(str(path))
    path.write_text(json.dumps([{"role": "Assistant", "prompt": "p"}]))
    with pytest.raises(ValueError, match=r"rules\.json holds a JSON list"):
        load_rules(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"rules\.json is not valid JSON"):
        load_rules(str(path))


def test_review_against_http_judge(judge):
    judge.requests.clear()
    items = [item("c1", "conv", "Q conv a"), item("d1", "detail", "Q detail a"), item("c2", "conv", "Q conv b"),
             item("d2", "detail", "Q detail b"), item("d3", "detail", "Q detail c"),
             item("x1", "complex", "Q complex a"), item("o1", "ocr", "Q ocr a")]  # fmt: skip
    client = openai.OpenAI(base_url=judge.url, api_key="x", max_retries=0)
    report = review(items, client, "judge-model", RULES, max_tokens=64, temperature=0.0, concurrency=3)

    assert [r.question_id for r in report.records] == ["c1", "d1", "c2", "d2", "d3", "x1", "o1"]
    by_id = {r.question_id: r for r in report.records}
    assert by_id["c1"].scores == (8.0, 6.0) and by_id["c1"].reply.startswith("8 6\n") and by_id["c1"].error is None
    assert by_id["d1"].scores is None and by_id["d1"].reply == "no score here" and by_id["d1"].error is None
    assert by_id["d2"].scores is None and by_id["d2"].reply == ""
    assert by_id["d2"].error.startswith("InternalServerError") and "500" in by_id["d2"].error

    assert len(judge.requests) == 7
    for body in judge.requests:
        assert (body["model"], body["max_tokens"], body["temperature"]) == ("judge-model", 64, 0.0)
    ocr = next(b for b in judge.requests if "[Question]\nQ ocr a" in b["messages"][1]["content"])
    assert "DEFAULT PROMPT" in ocr["messages"][1]["content"]

    summary = report.summary()
    assert list(summary) == ["all", "complex", "conv", "detail", "ocr"]
    assert summary["conv"] == {"count": 2, "scored": 2, "unscored": 0, "reference": 8.5, "answer": 6.5,
                               "relative": pytest.approx(100 * 6.5 / 8.5)}  # 76.47  # fmt: skip
    # d1 no score, d2 HTTP 500: both counted, neither in the means
    assert summary["detail"] == {"count": 3, "scored": 1, "unscored": 2, "reference": 6.0, "answer": 3.0,
                                 "relative": 50.0}  # fmt: skip
    assert summary["complex"] == {"count": 1, "scored": 0, "unscored": 1, "reference": None, "answer": None,
                                  "relative": None}  # fmt: skip
    assert summary["ocr"] == {"count": 1, "scored": 1, "unscored": 0, "reference": 10.0, "answer": 5.0,
                              "relative": 50.0}  # fmt: skip
    # scored: (8, 6), (9, 7), (6, 3), (10, 5) -> means 33/4 and 21/4
    assert summary["all"] == {"count": 7, "scored": 4, "unscored": 3, "reference": 8.25, "answer": 5.25,
                              "relative": pytest.approx(100 * 5.25 / 8.25)}  # 63.64  # fmt: skip


def test_review_missing_rule_fails_before_any_request(judge):
    judge.requests.clear()
    client = openai.OpenAI(base_url=judge.url, api_key="x", max_retries=0)
    with pytest.raises(ValueError, match='"ocr"'):
        review([item("c1", "conv", "Q conv a"), item("o1", "ocr", "Q ocr a")], client, "m", {"conv": RULES["conv"]})
    assert judge.requests == []
