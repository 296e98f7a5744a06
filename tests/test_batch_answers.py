"""Batch output rows in LLaVA's answers format, and the ids a re-run skips."""

import json

import pytest

from llava_platform.batch.answers import answer_row, written_ids
from llava_platform.batch.questions import from_question_line
from llava_platform.inference.engine import GenerationResult
from llava_platform.storage import Storage


def test_an_answer_row_and_a_refused_row_have_the_same_keys():
    question = from_question_line({"question_id": 7, "image": "a.jpg", "text": "What?", "category": "c"}, 0)
    row = answer_row(question, GenerationResult("Red", 40, 2, "stop"), "tiny")
    assert row["question_id"] == "7" and row["text"] == "Red" and row["prompt"] == "What?" and row["error"] is None
    assert (row["prompt_tokens"], row["completion_tokens"], row["model_id"], row["metadata"]) == (40, 2, "tiny", {"category": "c"})
    missing = answer_row(question, None, "tiny", error="missing_image: a.jpg not found")
    assert set(missing) == set(row) and missing["text"] == "" and missing["error"].startswith("missing_image")
    empty = from_question_line({"question_id": 8, "text": ""}, 1)
    assert answer_row(empty, None, "tiny")["error"] == "empty_question"
    with pytest.raises(ValueError, match="no answer and no error"):
        answer_row(question, None, "tiny")


def test_written_ids_reads_whole_parts_and_skips_hidden_ones(tmp_path):
    storage = Storage()
    assert written_ids(str(tmp_path / "nothing yet"), storage) == set()
    (tmp_path / "part-0.jsonl").write_text("\n".join(json.dumps({"question_id": q}) for q in ["1", "2"]) + "\n")
    (tmp_path / "part-1.jsonl").write_text(json.dumps({"question_id": 3}) + "\n")
    (tmp_path / ".part-2.jsonl").write_text(json.dumps({"question_id": "4"}) + "\n")  # still being written
    (tmp_path / "summary.json").write_text("{}")
    assert written_ids(str(tmp_path), storage) == {"1", "2", "3"}
