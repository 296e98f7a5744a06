"""`python -m jobs.prepare_eval`: each benchmark's files, tiny but in their real formats, converted as a user runs it;
the errors a user can fix exit 2 naming the line; POPE's and VQAv2's outputs scored with the shipped task specs."""

from __future__ import annotations

import base64
import csv
import io
import json

from conftest import REPO, make_image, run_job
from llava_platform.config import load
from llava_platform.eval.spec import EvalJobSpec
from llava_platform.eval.tasks import load_annotations, score
from llava_platform.storage import Storage

SUFFIX = "\nAnswer the question using a single word or phrase."


def write_lines(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def task_of(name: str):
    return load(REPO / "jobs" / "configs" / "eval" / f"{name}.yaml", EvalJobSpec).task


def answer_row(question: dict, text: str) -> dict:
    """The batch job's answer row for a question line: the line's other fields kept as metadata."""
    metadata = {k: v for k, v in question.items() if k not in ("question_id", "image", "text")}
    return {"question_id": str(question["question_id"]), "prompt": question["text"], "text": text, "error": None,
            "metadata": metadata}  # fmt: skip


# --------------------------------------------------------------------------- POPE


def pope_files(tmp_path, swap_random: bool = False):
    """LLaVA's question file (categories interleaved, as ids 1.., 10000001.., 20000001.. are not) and POPE's three
    label files, JSON lines named .json."""
    questions = [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?" + SUFFIX,
         "category": "adversarial"},
        {"question_id": 10000001, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a car in the image?"
         + SUFFIX, "category": "random"},
        {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat in the image?" + SUFFIX,
         "category": "adversarial"},
        {"question_id": 20000001, "image": "COCO_val2014_000000000003.jpg", "text": "Is there a cup in the image?"
         + SUFFIX, "category": "popular"},
        {"question_id": 10000002, "image": "COCO_val2014_000000000004.jpg", "text": "Is there a bus in the image?"
         + SUFFIX, "category": "random"},
    ]  # fmt: skip
    labels = {
        "adversarial": [("COCO_val2014_000000000001.jpg", "yes"), ("COCO_val2014_000000000001.jpg", "no")],
        "popular": [("COCO_val2014_000000000003.jpg", "no")],
        "random": [("COCO_val2014_000000000002.jpg", "yes"), ("COCO_val2014_000000000004.jpg", "no")],
    }
    if swap_random:
        labels["random"].reverse()
    (tmp_path / "coco").mkdir()
    for category, pairs in labels.items():
        write_lines(tmp_path / "coco" / f"coco_pope_{category}.json",
                    [{"question_id": k, "image": image, "text": "Is there ...?", "label": label}
                     for k, (image, label) in enumerate(pairs, 1)])  # fmt: skip
    return questions, write_lines(tmp_path / "llava_pope_test.jsonl", questions)


def test_pope_pairs_each_category_in_order_and_its_labels_score(tmp_path):
    questions, question_file = pope_files(tmp_path)
    out = tmp_path / "pope_labels.jsonl"
    result = run_job("prepare_eval", "pope", "--questions", question_file, "--labels-dir", str(tmp_path / "coco"),
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 5 lines -> {out}\n"
    assert lines(out) == [
        '{"question_id": 1, "label": "yes"}',
        '{"question_id": 10000001, "label": "yes"}',
        '{"question_id": 2, "label": "no"}',
        '{"question_id": 20000001, "label": "no"}',
        '{"question_id": 10000002, "label": "no"}',
    ]

    task = task_of("pope")  # as shipped: the labels file as task.annotations, answer_field label
    annotations = load_annotations(str(out), Storage(), task.answer_field)
    answers = ["Yes, there is a dog.", "Yes.", "Yes", "No, there is not.", "There is no bus."]
    metrics = score([answer_row(q, a) for q, a in zip(questions, answers)], task, annotations)
    assert metrics["rows"] == 5 and metrics["missing_gold"] == 0
    scores = metrics["scores"]
    assert (scores["adversarial"]["tp"], scores["adversarial"]["fp"], scores["adversarial"]["accuracy"]) == (1, 1, 0.5)
    assert (scores["random"]["accuracy"], scores["popular"]["accuracy"], scores["all"]["accuracy"]) == (1.0, 1.0, 0.8)


def test_pope_pair_naming_different_images_exits_2_naming_both(tmp_path):
    _, question_file = pope_files(tmp_path, swap_random=True)
    out = tmp_path / "pope_labels.jsonl"
    result = run_job("prepare_eval", "pope", "--questions", question_file, "--labels-dir", str(tmp_path / "coco"),
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 2
    assert f"{question_file} line 2 asks about COCO_val2014_000000000002.jpg" in result.stderr
    assert "coco_pope_random.json line 1, labels COCO_val2014_000000000004.jpg" in result.stderr
    assert not out.exists() and not (tmp_path / "pope_labels.jsonl.tmp").exists()


def test_pope_more_labels_than_questions_exits_2(tmp_path):
    questions, _ = pope_files(tmp_path)
    question_file = write_lines(tmp_path / "short.jsonl", questions[:4])  # the second random question dropped
    result = run_job("prepare_eval", "pope", "--questions", question_file, "--labels-dir", str(tmp_path / "coco"),
                     "--out", str(tmp_path / "labels.jsonl"))  # fmt: skip
    assert result.returncode == 2
    assert "coco_pope_random.json line 2: more lines than" in result.stderr and "1 random questions" in result.stderr


# --------------------------------------------------------------------------- VQAv2


def test_vqav2_official_files_to_a_question_file_that_scores(tmp_path):
    def answers(*words):
        return [{"answer": w, "answer_confidence": "yes", "answer_id": i} for i, w in enumerate(words, 1)]

    (tmp_path / "q.json").write_text(json.dumps({"info": {}, "data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is the bus?", "question_id": 42000},
        {"image_id": 393225, "question": "Is it raining?", "question_id": 393225001},
    ]}))  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps({"info": {}, "annotations": [  # not in question order
        {"question_id": 393225001, "image_id": 393225, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "no", "answers": answers(*["no"] * 10)},
        {"question_id": 42000, "image_id": 42, "question_type": "what color is the", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": answers("red", *["blue"] * 9)},
    ]}))  # fmt: skip
    out = tmp_path / "vqav2" / "llava_vqav2_mscoco_val2014.jsonl"
    result = run_job("prepare_eval", "vqav2", "--questions", str(tmp_path / "q.json"), "--annotations",
                     str(tmp_path / "a.json"), "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 2 lines -> {out}\n"
    expected = [
        {"question_id": 42000, "image": "COCO_val2014_000000000042.jpg", "text": "What color is the bus?",
         "answers": [{"answer": "red"}] + [{"answer": "blue"}] * 9, "answer_type": "other"},
        {"question_id": 393225001, "image": "COCO_val2014_000000393225.jpg", "text": "Is it raining?",
         "answers": [{"answer": "no"}] * 10, "answer_type": "yes/no"},
    ]  # fmt: skip
    assert lines(out) == [json.dumps(e) for e in expected]

    # one human said red: 9 of the 10 leave-one-out subsets keep that match, min(1 / 3, 1) each
    metrics = score([answer_row(json.loads(line), a) for line, a in zip(lines(out), ["Red", "No"])], task_of("vqav2"))
    assert metrics["scores"] == {"all": {"accuracy": (0.3 + 1.0) / 2, "count": 2},
                                 "other": {"accuracy": 0.3, "count": 1}, "yes/no": {"accuracy": 1.0, "count": 1}}  # fmt: skip


# --------------------------------------------------------------------------- MMBench


def test_mmbench_tsv_to_questions_and_images(tmp_path):
    png = io.BytesIO()
    make_image(8, 6).save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "source",
              "comment"]  # fmt: skip
    rows = [
        [0, 'Which "shape" is red?', "Look at the left.", "circle", "square", "star", "moon", "B", "attribute",
         "finegrained_perception", image, "src", "nan"],
        [1000001, "How many, in all?", "nan", "one", "two", "three", "", "C", "counting", "finegrained_perception",
         image, "src", "nan"],
    ]  # fmt: skip
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    with open(tsv, "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([header, *rows])
    out_dir = tmp_path / "mmbench"
    result = run_job("prepare_eval", "mmbench", "--tsv", str(tsv), "--out-dir", str(out_dir))
    assert result.returncode == 0, result.stderr
    questions = out_dir / "mmbench_dev_20230712.jsonl"  # the name jobs/configs/eval/mmbench.yaml's batch.input reads
    assert result.stdout == f"wrote 2 lines -> {questions}\nimages: 2 -> {out_dir / 'images'}\n"
    expected = [
        {"question_id": 0, "image": "images/0.jpg",
         "text": 'Look at the left.\nWhich "shape" is red?\nA. circle\nB. square\nC. star\nD. moon',
         "options": ["circle", "square", "star", "moon"], "answer": "B", "category": "attribute",
         "l2_category": "finegrained_perception", "group": 0},
        {"question_id": 1000001, "image": "images/1000001.jpg", "text": "How many, in all?\nA. one\nB. two\nC. three",
         "options": ["one", "two", "three"], "answer": "C", "category": "counting",
         "l2_category": "finegrained_perception", "group": 1},
    ]  # fmt: skip
    assert lines(questions) == [json.dumps(e) for e in expected]
    assert (out_dir / "images" / "0.jpg").read_bytes() == png.getvalue()  # the bytes as MMBench stores them
    assert (out_dir / "images" / "1000001.jpg").read_bytes() == png.getvalue()


# --------------------------------------------------------------------------- LLaVA-Bench


def llava_bench_files(tmp_path, references: int = 3):
    questions = [
        {"question_id": 0, "image": "001.jpg", "text": "What is unusual about this image?", "category": "complex"},
        {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"},
        {"question_id": 2, "image": "002.jpg", "text": "What brand is the cup?", "category": "conv"},
    ]
    context = [{"id": "001", "image": "001.jpg", "caption": ["A man irons clothes.", "He stands on a taxi."]},
               {"id": "002", "image": "002.jpg", "caption": "A cup of coffee."}]  # fmt: skip
    answers = [{"question_id": i, "text": f"reference {i}", "answer_id": f"a{i}", "model_id": "gpt-4-0314",
                "metadata": {}} for i in range(references)]  # fmt: skip
    return [write_lines(tmp_path / f"{name}.jsonl", records)
            for name, records in [("questions", questions), ("context", context), ("answers_gpt4", answers)]]  # fmt: skip


def test_llava_bench_joins_caption_and_reference(tmp_path):
    questions, context, answers = llava_bench_files(tmp_path)
    out = tmp_path / "questions_review.jsonl"
    result = run_job("prepare_eval", "llava-bench", "--questions", questions, "--context", context, "--answers", answers,
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 3 lines -> {out}\n"
    caption = "A man irons clothes.\nHe stands on a taxi."
    assert lines(out) == [json.dumps(e) for e in [
        {"question_id": 0, "image": "001.jpg", "text": "What is unusual about this image?", "category": "complex",
         "caption": caption, "reference": "reference 0"},
        {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail",
         "caption": caption, "reference": "reference 1"},
        {"question_id": 2, "image": "002.jpg", "text": "What brand is the cup?", "category": "conv",
         "caption": "A cup of coffee.", "reference": "reference 2"},
    ]]  # fmt: skip


def test_llava_bench_question_without_reference_exits_2_naming_it(tmp_path):
    questions, context, answers = llava_bench_files(tmp_path, references=2)
    result = run_job("prepare_eval", "llava-bench", "--questions", questions, "--context", context, "--answers", answers,
                     "--out", str(tmp_path / "out.jsonl"))  # fmt: skip
    assert result.returncode == 2
    assert f"error: {questions} line 3: question 2 has no reference answer in {answers}" in result.stderr
