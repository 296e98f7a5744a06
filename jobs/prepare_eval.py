"""Convert a benchmark's files, as its authors ship them, to the question files and golds `jobs.evaluate` reads.

    python -m jobs.prepare_eval pope --questions data/eval/pope/llava_pope_test.jsonl \\
        --labels-dir data/eval/pope/coco --out data/eval/pope/pope_labels.jsonl
    python -m jobs.prepare_eval vqav2 --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --out data/eval/vqav2/llava_vqav2_mscoco_val2014.jsonl
    python -m jobs.prepare_eval mmbench --tsv data/eval/mmbench/mmbench_dev_20230712.tsv --out-dir data/eval/mmbench
    D=data/eval/llava-bench-in-the-wild; python -m jobs.prepare_eval llava-bench --questions $D/questions.jsonl \\
        --context $D/context.jsonl --answers $D/answers_gpt4.jsonl --out $D/questions_review.jsonl

Local paths only. Each writes JSON lines to <out>.tmp, renamed to <out> once complete (a failed run leaves no
half file behind), and prints how many lines it wrote; jobs/configs/eval/<task>.yaml names the paths it reads.
"""

import argparse
import base64
import binascii
import csv
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

from llava_platform.cli import user_errors_exit

POPE_CATEGORIES = ("adversarial", "popular", "random")
MMBENCH_COLUMNS = ("index", "question", "A", "B", "answer", "category", "l2-category", "image")
# model_vqa_mmbench.py reads the TSV with pandas.read_table, which turns these cells into NaN, then its is_none also
# drops "nan" and "none" in any case: an option list ends at the first such cell, a hint so read is left out
PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
             "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}  # fmt: skip


class JsonLinesOut:
    """A JSON-lines output: written to <path>.tmp, renamed to <path> when the block completes, removed if it fails."""

    def __init__(self, path: Path):
        self.path, self.partial, self.count = path, path.with_name(path.name + ".tmp"), 0

    def __enter__(self) -> "JsonLinesOut":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.partial, "w", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.count += 1

    def __exit__(self, error_type, *_) -> None:
        self.file.close()
        if error_type is not None:
            self.partial.unlink()
            return
        self.partial.replace(self.path)
        print(f"wrote {self.count} lines -> {self.path}")


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line of a JSON-lines file, read as it goes."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {number}: not JSON ({e.msg}); expected one JSON object a line") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def field(record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise ValueError(f"{where}: no {key!r} field (it has {sorted(record)}); is this the benchmark's own file?")
    return record[key]


def pope(questions: Path, labels_dir: Path, out: Path) -> None:
    """{question_id, label}: LLaVA's eval_pope.py pairs the k-th question of a category (question-file order) with the
    k-th line of coco_pope_<category>.json, so each pair must name the same image and the counts must agree."""
    label_files = {c: labels_dir / f"coco_pope_{c}.json" for c in POPE_CATEGORIES}
    labels = {c: json_lines(path) for c, path in label_files.items()}  # opened at their first question
    paired: Counter = Counter()
    with JsonLinesOut(out) as lines:
        for number, question in json_lines(questions):
            where = f"{questions} line {number}"
            category = field(question, "category", where)
            if category not in labels:
                raise ValueError(f"{where}: category {category!r} is not one of POPE's {', '.join(POPE_CATEGORIES)}")
            label_number, label = next(labels[category], (None, None))
            if label is None:
                raise ValueError(f"{where}: {label_files[category]} has only {paired[category]} lines for more "
                                 f"{category} questions; use POPE's output/coco files (docs/Evaluation.md)")
            label_where = f"{label_files[category]} line {label_number}"
            image, label_image = field(question, "image", where), field(label, "image", label_where)
            if PurePath(image).name != PurePath(label_image).name:
                raise ValueError(f"{where} asks about {image} but its pair, {label_where}, labels {label_image}; use "
                                 "the label files this question file was made from, in their order")  # fmt: skip
            lines.write({"question_id": field(question, "question_id", where),
                         "label": field(label, "label", label_where)})  # fmt: skip
            paired[category] += 1
        for category, rest in labels.items():
            extra, _ = next(rest, (None, None))
            if extra is not None:
                raise ValueError(f"{label_files[category]} line {extra}: more lines than {questions}'s "
                                 f"{paired[category]} {category} questions; use the question file they belong to")


def load_vqav2(path: Path, key: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f'{path}: expected VQAv2\'s {{"{key}": [...]}} (v2_OpenEnded_mscoco_*_questions.json, '
                         "v2_mscoco_*_annotations.json)")  # fmt: skip
    return data[key]


def vqav2(questions: Path, annotations: Path, out: Path, split: str) -> None:
    """One question line a VQAv2 question, with its annotation's 10 answers and answer_type."""
    golds = {}  # question_id -> (where, annotation)
    for i, annotation in enumerate(load_vqav2(annotations, "annotations")):
        where = f"{annotations} annotations[{i}]"
        golds[field(annotation, "question_id", where)] = (where, annotation)
    with JsonLinesOut(out) as lines:
        for i, question in enumerate(load_vqav2(questions, "questions")):
            where = f"{questions} questions[{i}]"
            question_id = field(question, "question_id", where)
            if question_id not in golds:
                raise ValueError(f"{where}: question {question_id} has no entry in {annotations}; give the "
                                 f"annotations of the questions' split ({split})")  # fmt: skip
            gold_where, gold = golds[question_id]
            image = f"COCO_{split}_{field(question, 'image_id', where):012d}.jpg"
            answers = [{"answer": field(a, "answer", gold_where)} for a in field(gold, "answers", gold_where)]
            lines.write({"question_id": question_id, "image": image, "text": field(question, "question", where),
                         "answers": answers, "answer_type": field(gold, "answer_type", gold_where)})  # fmt: skip


def missing(cell: str | None) -> bool:
    return cell is None or cell in PANDAS_NA or cell.lower() in ("nan", "none")


def mmbench(tsv: Path, out_dir: Path) -> None:
    """<out_dir>/<tsv stem>.jsonl and <out_dir>/images/<index>.jpg, one a row. The text follows model_vqa_mmbench.py
    (less the image token it puts first and the --single-pred-prompt suffix the spec adds): the hint, if any, before
    the question, joined by "\\n", then "\\n<letter>. <option>" for each option up to the first missing one."""
    csv.field_size_limit(2**31 - 1)  # the image column holds a whole image, base64, in one cell
    images, unanswerable = out_dir / "images", 0
    with open(tsv, encoding="utf-8", newline="") as f, JsonLinesOut(out_dir / f"{tsv.stem}.jsonl") as lines:
        images.mkdir(exist_ok=True)
        reader = csv.DictReader(f, delimiter="\t")
        absent = [c for c in MMBENCH_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{tsv}: no column {', '.join(absent)} (its header: {reader.fieldnames}); give MMBench's "
                             "own TSV, e.g. mmbench_dev_20230712.tsv")  # fmt: skip
        for number, row in enumerate(reader, 1):
            where = f"{tsv} row {number}"
            if not (row["index"] or "").isdigit():
                raise ValueError(f"{where}: index {row['index']!r} is not an integer; is the row cut short?")
            index = int(row["index"])
            options = list(itertools.takewhile(lambda cell: not missing(cell), (row.get(c) for c in "ABCD")))
            text = row["question"] if missing(row.get("hint")) else row["hint"] + "\n" + row["question"]
            text += "".join(f"\n{letter}. {option}" for letter, option in zip("ABCD", options))
            try:  # the bytes as stored (JPEG or PNG: images are read by their content)
                (images / f"{index}.jpg").write_bytes(base64.b64decode(row["image"] or ""))
            except binascii.Error as e:
                raise ValueError(f"{where} (index {index}): the image column is not base64 ({e})") from e
            unanswerable += row["answer"] not in tuple("ABCD"[: len(options)])
            lines.write({"question_id": index, "image": f"images/{index}.jpg", "text": text, "options": options,
                         "answer": row["answer"], "category": row["category"], "l2_category": row["l2-category"],
                         "group": index % 1000000})  # fmt: skip
    print(f"images: {lines.count} -> {images}")
    if unanswerable:
        print(f"note: {unanswerable} rows' answer is not among their options as LLaVA reads them: they score wrong")


def llava_bench(questions: Path, context: Path, answers: Path, out: Path) -> None:
    """Each question line plus `caption` (context.jsonl's, for its image) and `reference` (answers_gpt4.jsonl's text
    for its question_id): what eval_gpt_review_bench.py gives the judge besides the question and the answer."""
    captions, references = {}, {}
    for number, record in json_lines(context):
        where = f"{context} line {number}"
        caption = field(record, "caption", where)  # a string or a list of them, joined as eval_gpt_review_bench.py does
        captions[field(record, "image", where)] = "\n".join(caption) if isinstance(caption, list) else caption
    for number, record in json_lines(answers):
        where = f"{answers} line {number}"
        references[str(field(record, "question_id", where))] = field(record, "text", where)
    with JsonLinesOut(out) as lines:
        for number, question in json_lines(questions):
            where = f"{questions} line {number}"
            question_id, image = field(question, "question_id", where), field(question, "image", where)
            if image not in captions:
                raise ValueError(f"{where}: question {question_id}'s image {image!r} has no caption in {context}")
            if str(question_id) not in references:
                raise ValueError(f"{where}: question {question_id} has no reference answer in {answers}; use the "
                                 "answers_gpt4.jsonl of the same download")  # fmt: skip
            lines.write(question | {"caption": captions[image], "reference": references[str(question_id)]})


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="benchmark", required=True)
    p = commands.add_parser("pope", help="POPE's labels for LLaVA's llava_pope_test.jsonl")
    p.set_defaults(run=lambda a: pope(a.questions, a.labels_dir, a.out))
    p.add_argument("--questions", type=Path, required=True, help="LLaVA's llava_pope_test.jsonl")
    p.add_argument("--labels-dir", type=Path, required=True, help="POPE's output/coco: coco_pope_<category>.json")
    p.add_argument("--out", type=Path, required=True, help="the labels file (task.annotations)")
    p = commands.add_parser("vqav2", help="VQAv2's official questions and annotations -> a question file")
    p.set_defaults(run=lambda a: vqav2(a.questions, a.annotations, a.out, a.split))
    p.add_argument("--questions", type=Path, required=True, help="v2_OpenEnded_mscoco_<split>_questions.json")
    p.add_argument("--annotations", type=Path, required=True, help="v2_mscoco_<split>_annotations.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="val2014", help="the COCO split in image names: COCO_<split>_<id>.jpg")
    p = commands.add_parser("mmbench", help="MMBench's TSV -> a question file and its images")
    p.set_defaults(run=lambda a: mmbench(a.tsv, a.out_dir))
    p.add_argument("--tsv", type=Path, required=True, help="e.g. mmbench_dev_20230712.tsv")
    p.add_argument("--out-dir", type=Path, required=True, help="gets <tsv stem>.jsonl and images/")
    p = commands.add_parser("llava-bench", help="LLaVA-Bench's questions with their caption and reference answer")
    p.set_defaults(run=lambda a: llava_bench(a.questions, a.context, a.answers, a.out))
    p.add_argument("--questions", type=Path, required=True, help="questions.jsonl")
    p.add_argument("--context", type=Path, required=True, help="context.jsonl")
    p.add_argument("--answers", type=Path, required=True, help="answers_gpt4.jsonl (the reference answers)")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
