"""Scoring a batch job's answers for an evaluation task: rows in LLaVA's answers format -> a metrics dict.

    metrics = score(read_answers(output, storage), task)               # task: TaskSpec
    metrics["scores"]["all"]    -> {"accuracy": 0.87, "count": 200}    (exact_match, vqa_accuracy, multiple_choice)
    metrics["scores"]["adversarial"] -> {"accuracy", "precision", "recall", "f1", "yes_ratio", ...}   (pope)

The gold answer of a row is its question's `task.answer_field` (kept in the answer's metadata), or the
task's annotations file's. A row the job could not answer (its `error`) scores as wrong and is counted
under "errors" (POPE reads it as the opposite of its label; a review does not send it to the judge); a row
with no gold (absent, "" or []) is left out and counted under "missing_gold".
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from llava_platform.eval.answers import OPTION_LETTERS, option_letter
from llava_platform.eval.metrics import (
    by_category,
    circular_accuracy,
    exact_match,
    pope_scores,
    vqa_accuracy,
)
from llava_platform.eval.review import ReviewItem, load_rules, review
from llava_platform.eval.spec import TaskSpec
from llava_platform.storage import Storage

__all__ = ["score", "load_annotations", "Scored"]

ALL = "all"


def load_annotations(path: str, storage: Storage, answer_field: str) -> dict[str, Any]:
    """{question_id: gold} from a JSON list, a JSON object keyed by question id, or JSON lines."""
    text = storage.read_bytes(path).decode()
    if path.endswith(".jsonl"):  # read by lines: a one-line file is one entry, not an object keyed by field names
        data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    try:
        if isinstance(data, dict):
            return {str(k): v[answer_field] if isinstance(v, dict) else v for k, v in data.items()}
        return {str(r["question_id"]): r[answer_field] for r in data}
    except (KeyError, TypeError) as e:
        raise ValueError(f"task.annotations {path}: every entry needs question_id and {answer_field!r} ({e!r})") from e


class Scored:
    """The rows of one evaluation, gathered: per row its category, the answer, the gold, the record."""

    def __init__(self, rows: Iterable[dict[str, Any]], task: TaskSpec, annotations: dict[str, Any] | None = None):
        self.rows: list[dict[str, Any]] = []
        self.errors: Counter = Counter()
        self.missing_gold = 0
        self.duplicates = 0  # rows of a question id already scored (an input that repeats an id): not scored twice
        seen: set[str] = set()
        for row in rows:
            if str(row["question_id"]) in seen:
                self.duplicates += 1
                continue
            seen.add(str(row["question_id"]))
            metadata = row["metadata"] if isinstance(row["metadata"], dict) else json.loads(row["metadata"])
            gold = annotations.get(str(row["question_id"])) if annotations is not None else metadata.get(task.answer_field)
            if gold in (None, "", []) and task.metric != "review":
                self.missing_gold += 1
                continue
            if row["error"] is not None:
                self.errors[row["error"].split(":", 1)[0]] += 1
            category = str(metadata.get(task.category_field, ALL)) if task.category_field else ALL
            text = "" if row["error"] is not None else row["text"]
            self.rows.append({"id": str(row["question_id"]), "text": text, "gold": gold, "category": category,
                              "metadata": metadata, "prompt": row["prompt"], "error": row["error"]})  # fmt: skip
        if not self.rows:
            raise ValueError(f"task {task.name}: no answer has a gold {task.answer_field!r} to score against; set "
                             "task.answer_field or task.annotations")  # fmt: skip

    def categories(self) -> list[str]:
        return [r["category"] for r in self.rows]


def _golds(gold: Any) -> list[str]:
    """A gold answer or a list of them (VQAv2 annotations: [{"answer": ...}, ...]) as strings."""
    golds = gold if isinstance(gold, list) else [gold]
    return [str(g["answer"] if isinstance(g, dict) else g) for g in golds]


def _letter_of(gold: Any) -> str:
    """A multiple-choice gold: a letter ("B"), or an option index (1 -> "B", ScienceQA's "answer")."""
    if isinstance(gold, int) and not isinstance(gold, bool):
        return OPTION_LETTERS[gold] if 0 <= gold < len(OPTION_LETTERS) else ""  # "": no letter equals it
    return str(gold).strip().upper()


def _mean_by_category(scores: list[float], scored: Scored, name: str) -> dict[str, dict[str, float]]:
    return {c: {name: v["score"], "count": v["count"]} for c, v in by_category(scores, scored.categories()).items()}


def _picked(scored: Scored, task: TaskSpec) -> tuple[list[str | None], list[bool]]:
    letters, correct = [], []
    for r in scored.rows:
        options = r["metadata"].get(task.options_field)
        letter = option_letter(r["text"], len(options) if isinstance(options, list) else len(OPTION_LETTERS))
        letters.append(letter)
        correct.append(letter is not None and letter == _letter_of(r["gold"]))
    return letters, correct


def _circular(scored: Scored, task: TaskSpec, correct: list[bool]) -> dict[str, dict[str, float]]:
    groups: dict[str, dict[Any, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r, right in zip(scored.rows, correct):
        group = r["metadata"].get(task.group_field, r["id"])
        groups[r["category"]][group].append(right)
        groups[ALL][group].append(right)
    return {c: {"circular_accuracy": circular_accuracy(g), "questions": len(g)} for c, g in sorted(groups.items())}


def _pope(scored: Scored) -> dict[str, dict[str, float]]:
    groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for r in scored.rows:
        # a row never answered is wrong: read as the opposite of its label (its "" would read as "yes")
        text = r["text"] if r["error"] is None else ("no" if str(r["gold"]).strip().lower() == "yes" else "yes")
        for category in {r["category"], ALL}:
            groups[category][0].append(text)
            groups[category][1].append(str(r["gold"]))
    return {c: {**pope_scores(*g), "count": len(g[0])} for c, g in sorted(groups.items())}


def _review(scored: Scored, task: TaskSpec, client) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The judge's summary per category, and its every reply (question_id, category, reply, scores, error)."""
    judge = task.judge
    items = [ReviewItem(r["id"], r["category"], r["prompt"], str(r["metadata"].get(judge.context_field, "")),
                        str(r["metadata"].get(judge.reference_field, "")), r["text"])
             for r in scored.rows if r["error"] is None]  # rows never answered are not judged: they are under "errors"
    report = review(items, client, judge.model, load_rules(judge.rules), max_tokens=judge.max_tokens,
                    temperature=judge.temperature, concurrency=judge.concurrency)  # fmt: skip
    return report.summary(), [asdict(record) for record in report.records]


def score(rows: Iterable[dict[str, Any]], task: TaskSpec, annotations: dict[str, Any] | None = None,
          judge_client=None) -> dict[str, Any]:  # fmt: skip
    """The task's metrics over answer rows (`judge_client`: an openai.OpenAI, for review)."""
    scored = Scored(rows, task, annotations)
    extra: dict[str, Any] = {}
    if task.metric == "exact_match":
        values = [float(r["error"] is None and any(exact_match(r["text"], g) for g in _golds(r["gold"])))
                  for r in scored.rows]  # fmt: skip
        scores = _mean_by_category(values, scored, "accuracy")
    elif task.metric == "vqa_accuracy":
        values = [vqa_accuracy(r["text"], _golds(r["gold"])) if r["error"] is None else 0.0 for r in scored.rows]
        scores = _mean_by_category(values, scored, "accuracy")
    elif task.metric == "pope":
        scores = _pope(scored)
    elif task.metric in ("multiple_choice", "circular"):
        letters, correct = _picked(scored, task)
        scores = _mean_by_category([float(c) for c in correct], scored, "accuracy")
        # answers that name no option (rows never answered are under "errors")
        scores[ALL]["no_letter"] = sum(letter is None and r["error"] is None for letter, r in zip(letters, scored.rows))
        if task.metric == "circular":
            for category, circular in _circular(scored, task, correct).items():
                scores[category] |= circular
    else:
        scores, extra["judged"] = _review(scored, task, judge_client)
    return {"task": task.name, "metric": task.metric, "rows": len(scored.rows), "errors": dict(scored.errors),
            "missing_gold": scored.missing_gold, "duplicate_ids": scored.duplicates, "scores": scores, **extra}  # fmt: skip
