"""Scoring answer rows (eval/tasks.py `score`) against hand-computed metrics, one metric at a time: rows built in
memory in LLaVA's answers format, no Ray, no model; the review asks a real OpenAI-compatible HTTP server (a stdlib
one in a thread)."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import REPO
from judge import CannedJudge
from llava_platform.eval.spec import JudgeSpec, TaskSpec
from llava_platform.eval.tasks import load_annotations, score
from llava_platform.storage import Storage


def row(question_id, text: str, error: str | None = None, prompt: str = "q", **metadata) -> dict:
    """One answer row as the batch job writes it (metadata: the question record's other fields)."""
    return {"question_id": str(question_id), "prompt": prompt, "text": text, "answer_id": f"a{question_id}",
            "model_id": "m", "metadata": metadata, "prompt_tokens": 40, "completion_tokens": 2,
            "finish_reason": None if error else "stop", "error": error}  # fmt: skip


def task(metric: str, **fields) -> TaskSpec:
    return TaskSpec(name="t", metric=metric, **fields)


# --------------------------------------------------------------------------- exact match, errors, missing golds


def test_exact_match_by_category_with_an_error_row_and_a_missing_gold():
    rows = [
        row(1, "Yes.", answer="yes", category="a"),  # case and final period ignored
        row(2, "  top   left ", answer="Top Left", category="a"),  # surrounding and inner runs of space
        row(3, "no", answer="yes", category="b"),
        row(4, "cat", "missing_image: 4.jpg not found", answer="cat", category="b"),  # its text is never read
        row(5, "two", answer=["2", "two"], category="b"),  # a list of golds: any one
        row(6, "whatever", category="b"),  # no gold: left out, counted
    ]
    metrics = score(rows, task("exact_match"))
    assert (metrics["task"], metrics["metric"], metrics["rows"]) == ("t", "exact_match", 5)
    assert metrics["errors"] == {"missing_image": 1} and metrics["missing_gold"] == 1
    assert metrics["scores"] == {"all": {"accuracy": 3 / 5, "count": 5}, "a": {"accuracy": 1.0, "count": 2},
                                 "b": {"accuracy": 1 / 3, "count": 3}}  # fmt: skip


def test_metadata_as_a_json_string_and_no_categories():
    """Parquet output keeps metadata as JSON text; category_field null scores everything under "all"."""
    rows = [row(1, "Red", answer="red"), row(2, "blue", answer="red")]
    rows[0]["metadata"] = json.dumps(rows[0]["metadata"] | {"category": "x"})
    metrics = score(rows, task("exact_match", category_field=None))
    assert metrics["scores"] == {"all": {"accuracy": 0.5, "count": 2}}


def test_no_gold_anywhere_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"task t: no answer has a gold 'label'"):
        score([row(1, "yes", answer="yes")], task("pope", answer_field="label"))


# --------------------------------------------------------------------------- VQAv2 soft accuracy


def test_vqa_accuracy_over_ten_answers_and_vqav2_answer_dicts():
    rows = [
        # "Two" -> "2": 3 of 10 match; leave one of the 3 out: 2/3, one of the 7: 3/3 -> (3 * 2/3 + 7) / 10
        row(1, "Two", answers=["2"] * 3 + ["3"] * 7, answer_type="number"),
        # VQAv2 annotations' form: 2 of 10 "yes" -> (2 * 1/3 + 8 * 2/3) / 10
        row(2, "yes", answers=[{"answer": "yes", "answer_confidence": "yes"}] * 2 + [{"answer": "no"}] * 8,
            answer_type="yes/no"),  # fmt: skip
        row(3, "A dog.", answers=["dog"] * 10, answer_type="other"),  # article and period dropped: 10 of 10
        row(4, "cat", answers=["dog"] * 10, answer_type="other"),
    ]
    metrics = score(rows, task("vqa_accuracy", answer_field="answers", category_field="answer_type"))
    scores = metrics["scores"]
    assert scores["number"] == {"accuracy": pytest.approx(0.9), "count": 1}
    assert scores["yes/no"] == {"accuracy": pytest.approx(0.6), "count": 1}
    assert scores["other"] == {"accuracy": 0.5, "count": 2}
    assert scores["all"] == {"accuracy": pytest.approx(2.5 / 4), "count": 4}
    assert set(scores) == {"all", "number", "yes/no", "other"}


# --------------------------------------------------------------------------- POPE


POPE_ROWS = [  # (answer, label): how POPE reads the answer -> the confusion-matrix cell
    row("a1", "Yes, there is a dog.", label="yes", category="adversarial"),  # yes -> TP
    row("a2", "No.", label="no", category="adversarial"),  # no -> TN
    row("a3", "Yes", label="no", category="adversarial"),  # yes -> FP
    row("a4", "There is no cat in the image. Yes.", label="yes", category="adversarial"),  # first sentence: no -> FN
    row("a5", "yes", label="yes", category="adversarial"),  # TP
    row("r1", "yes", label="yes", category="random"),  # TP
    row("r2", "not at all", label="no", category="random"),  # "not" -> no: TN
    row("r3", "No, the image shows a street", label="no", category="random"),  # "No," -> No: TN
    row("r4", "Not at all", label="no", category="random"),  # LLaVA's words are No, no, not: "Not" -> yes: FP
]


def test_pope_confusion_matrix_per_category():
    metrics = score(POPE_ROWS, task("pope", answer_field="label"))
    s = metrics["scores"]
    assert list(s) == ["adversarial", "all", "random"]
    # adversarial: TP 2, FP 1, TN 1, FN 1
    assert s["adversarial"] == {"accuracy": 3 / 5, "precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3),
                                "yes_ratio": 3 / 5, "tp": 2, "fp": 1, "tn": 1, "fn": 1, "count": 5}  # fmt: skip
    # random: TP 1, FP 1, TN 2
    assert s["random"] == {"accuracy": 3 / 4, "precision": 1 / 2, "recall": 1.0, "f1": pytest.approx(2 / 3),
                           "yes_ratio": 2 / 4, "tp": 1, "fp": 1, "tn": 2, "fn": 0, "count": 4}  # fmt: skip
    # all: TP 3, FP 2, TN 3, FN 1
    assert s["all"] == {"accuracy": 6 / 9, "precision": 3 / 5, "recall": 3 / 4, "f1": pytest.approx(2 / 3),
                        "yes_ratio": 5 / 9, "tp": 3, "fp": 2, "tn": 3, "fn": 1, "count": 9}  # fmt: skip
    assert (metrics["rows"], metrics["errors"], metrics["missing_gold"]) == (9, {}, 0)


def test_pope_labels_from_annotations_file(tmp_path):
    """POPE's golds apart from the questions (task.annotations, JSON lines keyed by question_id); a row whose id
    the annotations lack is counted as missing its gold."""
    path = tmp_path / "pope_labels.jsonl"
    path.write_text("".join(json.dumps({"question_id": qid, "label": label}) + "\n"
                            for qid, label in [("a1", "yes"), ("a2", "no"), ("a3", "no")]))  # fmt: skip
    annotations = load_annotations(str(path), Storage(), "label")
    assert annotations == {"a1": "yes", "a2": "no", "a3": "no"}
    rows = [row(r["question_id"], r["text"], category=r["metadata"]["category"]) for r in POPE_ROWS[:4]]
    metrics = score(rows, task("pope", answer_field="label"), annotations)
    assert metrics["missing_gold"] == 1 and metrics["rows"] == 3
    assert metrics["scores"]["all"] | {"f1": None} == {"accuracy": 2 / 3, "precision": 1 / 2, "recall": 1.0,
                                                       "f1": None, "yes_ratio": 2 / 3, "tp": 1, "fp": 1, "tn": 1,
                                                       "fn": 0, "count": 3}  # fmt: skip
    assert metrics["scores"]["all"]["f1"] == pytest.approx(2 / 3)


def test_pope_error_row_scores_as_wrong():
    rows = [row(1, "No", label="no"), row(2, "", "missing_image: 2.jpg not found", label="yes")]
    metrics = score(rows, task("pope", answer_field="label", category_field=None))
    assert metrics["errors"] == {"missing_image": 1}
    assert (metrics["scores"]["all"]["accuracy"], metrics["scores"]["all"]["tp"]) == (0.5, 0)


# --------------------------------------------------------------------------- multiple choice, circular


def test_multiple_choice_letters_and_an_unreadable_answer():
    options = ["red", "green", "blue", "grey"]
    rows = [
        row(1, "A", answer="A", options=options, category="x"),
        row(2, "The answer is B.", answer="B", options=options, category="x"),
        row(3, "C. blue", answer="D", options=options, category="x"),  # read as C: wrong
        row(4, "I think it is the second one", answer="B", options=options, category="y"),  # no letter
        row(5, "B", answer=1, options=options, category="y"),  # gold an option index (ScienceQA's): 1 -> B
        row(6, "E", answer="A", options=options, category="y"),  # E is not among 4 options: no letter
    ]
    metrics = score(rows, task("multiple_choice"))
    assert metrics["scores"] == {"all": {"accuracy": 3 / 6, "count": 6, "no_letter": 2},
                                 "x": {"accuracy": 2 / 3, "count": 3},
                                 "y": {"accuracy": 1 / 3, "count": 3}}  # fmt: skip


def test_multiple_choice_without_options_reads_letters_a_to_j():
    rows = [row(1, "E", answer="e"), row(2, "J. the last", answer="J"), row(3, "K", answer="K")]
    metrics = score(rows, task("multiple_choice", category_field=None))
    assert metrics["scores"] == {"all": {"accuracy": 2 / 3, "count": 3, "no_letter": 1}}


def test_circular_two_groups_one_all_right():
    rows = [
        row("1", "A", answer="A", options=["x", "y", "z"], group=1, category="c1"),
        row("1000001", "B", answer="B", options=["z", "x", "y"], group=1, category="c1"),
        row("2000001", "The answer is C.", answer="C", options=["y", "z", "x"], group=1, category="c1"),
        row("2", "A", answer="A", options=["p", "q"], group=2, category="c2"),
        row("1000002", "A", answer="B", options=["q", "p"], group=2, category="c2"),  # one order wrong: group fails
    ]
    metrics = score(rows, task("circular"))
    assert metrics["scores"] == {
        "all": {"accuracy": 4 / 5, "count": 5, "no_letter": 0, "circular_accuracy": 1 / 2, "questions": 2},
        "c1": {"accuracy": 1.0, "count": 3, "circular_accuracy": 1.0, "questions": 1},
        "c2": {"accuracy": 1 / 2, "count": 2, "circular_accuracy": 0.0, "questions": 1},
    }


# --------------------------------------------------------------------------- annotations files


def test_load_annotations_json_object_list_and_lines(tmp_path):
    storage = Storage()
    gqa = tmp_path / "testdev_balanced_questions.json"  # GQA's: an object keyed by question id
    gqa.write_text(json.dumps({"201307251": {"answer": "no", "types": {"structural": "verify"}},
                               "2062325": {"answer": "yes"}}))  # fmt: skip
    assert load_annotations(str(gqa), storage, "answer") == {"201307251": "no", "2062325": "yes"}
    problems = tmp_path / "problems.json"  # ScienceQA's: option indices
    problems.write_text(json.dumps({"4": {"answer": 1, "choices": ["a", "b"]}, "5": {"answer": 0}}))
    assert load_annotations(str(problems), storage, "answer") == {"4": 1, "5": 0}
    listed = tmp_path / "golds.json"
    listed.write_text(json.dumps([{"question_id": 7, "answer": "x"}, {"question_id": "8", "answer": ["y", "z"]}]))
    assert load_annotations(str(listed), storage, "answer") == {"7": "x", "8": ["y", "z"]}
    lines = tmp_path / "golds.jsonl"
    lines.write_text('{"question_id": 1, "label": "yes"}\n\n{"question_id": 2, "label": "no"}\n')
    assert load_annotations(str(lines), storage, "label") == {"1": "yes", "2": "no"}
    with pytest.raises(ValueError, match=r"every entry needs question_id and 'answer'"):
        load_annotations(str(lines), storage, "answer")


def test_annotations_take_over_from_the_records_golds(tmp_path):
    """With task.annotations the question records' own field is not read: the file's gold wins."""
    path = tmp_path / "problems.json"
    path.write_text(json.dumps({"4": {"answer": 1}, "5": {"answer": 0}}))
    rows = [row("4", "B", answer="A", modality="image"), row("5", "A", modality="text"),
            row("6", "A", answer="A", modality="text")]  # fmt: skip
    annotations = load_annotations(str(path), Storage(), "answer")
    metrics = score(rows, task("multiple_choice", category_field="modality"), annotations)
    assert metrics["missing_gold"] == 1
    assert metrics["scores"] == {"all": {"accuracy": 1.0, "count": 2, "no_letter": 0},
                                 "image": {"accuracy": 1.0, "count": 1},
                                 "text": {"accuracy": 1.0, "count": 1}}  # fmt: skip


def test_load_annotations_one_line_jsonl(tmp_path):
    path = tmp_path / "golds.jsonl"
    path.write_text('{"question_id": 1, "label": "yes"}\n')
    assert load_annotations(str(path), Storage(), "label") == {"1": "yes"}


# --------------------------------------------------------------------------- review against a real HTTP judge


REPLIES = {  # the question asked -> the judge's reply
    "Q1": "8 6\nAssistant 1 names the breed.",
    "Q2": "no score",
    "Q3": "9 9\nboth complete",
    "Q4": "10 2\nAssistant 2 gave no answer.",
}


@pytest.fixture
def canned():
    with CannedJudge(REPLIES) as judge:
        yield judge


def test_review_scores_relative_to_the_reference(canned):
    judge = JudgeSpec(base_url=canned.url, model="judge-1", api_key_env=None, rules=str(REPO / "jobs/configs/eval/"
                      "review_rules.json"), max_tokens=64, temperature=0.0, concurrency=2)  # fmt: skip
    spec = task("review", judge=judge)
    rows = [
        row(1, "a labrador", prompt="Q1", category="conv", caption="a dog on grass", reference="a golden retriever"),
        row(2, "red", prompt="Q2", category="conv", caption="a red car", reference="red"),
        row(3, "a kitchen", prompt="Q3", category="detail", caption="a kitchen", reference="a kitchen with a stove"),
        row(4, "", "missing_image: 4.jpg not found", prompt="Q4", category="detail", caption="a street",
            reference="a busy street"),  # fmt: skip
    ]
    client = openai.OpenAI(base_url=canned.url, api_key="x", max_retries=0)
    metrics = score(rows, spec, judge_client=client)
    assert (metrics["rows"], metrics["errors"], metrics["missing_gold"]) == (4, {"missing_image": 1}, 0)
    s = metrics["scores"]
    assert list(s) == ["all", "conv", "detail"]
    # all: (8, 6), (9, 9) scored; Q2's reply holds no score; Q4 was never answered, so it is not judged
    assert s["all"] == {"count": 3, "scored": 2, "unscored": 1, "reference": 8.5, "answer": 7.5,
                        "relative": pytest.approx(100 * 7.5 / 8.5)}  # fmt: skip
    assert s["conv"] == {"count": 2, "scored": 1, "unscored": 1, "reference": 8.0, "answer": 6.0, "relative": 75.0}
    assert s["detail"] == {"count": 1, "scored": 1, "unscored": 0, "reference": 9.0, "answer": 9.0, "relative": 100.0}
    # what the judge was sent: the spec's model and sampling, the record's caption and reference, the answer
    # and the category's rule; nothing for the row the job could not answer
    by_question = {r["messages"][1]["content"].split("[Question]\n", 1)[1].split("\n\n", 1)[0]: r
                   for r in canned.requests}  # fmt: skip
    assert sorted(by_question) == ["Q1", "Q2", "Q3"]
    first = by_question["Q1"]
    assert (first["model"], first["max_tokens"], first["temperature"]) == ("judge-1", 64, 0.0)
    content = first["messages"][1]["content"]
    assert content.startswith("[Context]\na dog on grass\n\n[Question]\nQ1\n\n[Assistant 1]\na golden retriever\n\n"
                              "[End of Assistant 1]\n\n[Assistant 2]\na labrador\n\n[End of Assistant 2]\n\n[System]\n")
    assert "in a conversation about an image" in content  # review_rules.json's conv rule
    assert "for a detailed description" in by_question["Q3"]["messages"][1]["content"]  # and its detail rule


def test_unanswered_rows_score_wrong_and_empty_or_out_of_range_golds_are_missing():
    rows = [row(1, "", "missing_image: a", answer="x"), row(2, "", "missing_image: b", answer=""),
            row(3, "yes", answer="yes"), row(4, "", answer=[]), row(3, "no", answer="yes")]  # fmt: skip
    metrics = score(rows, task("exact_match", category_field=None))
    assert (metrics["scores"]["all"], metrics["missing_gold"]) == ({"accuracy": 0.5, "count": 2}, 2)
    assert metrics["duplicate_ids"] == 1  # the second answer to question 3 is not scored
    choices = [row(1, "A", answer=12, options=["a", "b"]), row(2, "B", answer=1, options=["a", "b"])]
    assert score(choices, task("multiple_choice", category_field=None))["scores"]["all"]["accuracy"] == 0.5
