"""Answer metrics. Exact match compares normalised strings: case, surrounding space and final period ignored.

    vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7)          -> 0.9     (VQAv2's soft score, answers normalised)
    pope_scores(["yes", "no"], ["yes", "yes"])          -> {"accuracy": 0.5, "precision": 1.0, "recall": 0.5, ...}
    circular_accuracy({"q1": [True, True], "q2": [True, False]}) -> 0.5   (MMBench's circular evaluation)
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Sequence

from llava_platform.eval.answers import vqa_normalize, yes_no

__all__ = ["normalize_answer", "exact_match", "accuracy", "vqa_accuracy", "pope_scores", "circular_accuracy",
           "by_category"]  # fmt: skip


def normalize_answer(text: str) -> str:
    """'  Top Left. ' -> 'top left'"""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!").strip()


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def accuracy(predictions: list[str], golds: list[str]) -> float:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    if not golds:
        raise ValueError("no answers to score")
    return sum(exact_match(p, g) for p, g in zip(predictions, golds)) / len(golds)


def vqa_accuracy(prediction: str, gold_answers: Sequence[str]) -> float:
    """VQAv2's soft score: over each leave-one-out subset of the (usually 10) human answers, min(matches / 3, 1),
    averaged; prediction and answers compared after vqa_normalize."""
    if not gold_answers:
        raise ValueError("no gold answers to score against")
    predicted = vqa_normalize(prediction)
    golds = [vqa_normalize(a) for a in gold_answers]
    matches = sum(g == predicted for g in golds)
    # leaving out a matching answer leaves matches - 1 others, any other leaves all of them
    scores = [min((matches - (g == predicted)) / 3, 1.0) for g in golds]
    return sum(scores) / len(scores)


def pope_scores(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float | int]:
    """POPE: answers read as yes/no (answers.yes_no), "yes" the positive class. Precision, recall and F1 are 0 where
    their denominators are (no "yes" predicted, no "yes" label)."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} labels")
    if not labels:
        raise ValueError("no answers to score")
    predicted = [yes_no(a) == "yes" for a in answers]
    positive = [label.strip().lower() == "yes" for label in labels]
    tp = sum(p and g for p, g in zip(predicted, positive))
    fp = sum(p and not g for p, g in zip(predicted, positive))
    tn = sum(not p and not g for p, g in zip(predicted, positive))
    fn = sum(not p and g for p, g in zip(predicted, positive))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(predicted) / len(labels), "tp": tp, "fp": fp, "tn": tn, "fn": fn}  # fmt: skip


def circular_accuracy(correct_by_question: dict[Hashable, Sequence[bool]]) -> float:
    """MMBench's circular evaluation: a question is passed only if every circular shift of its options was answered
    correctly."""
    if not correct_by_question:
        raise ValueError("no questions to score")
    return sum(all(shifts) for shifts in correct_by_question.values()) / len(correct_by_question)


def by_category(scores: Sequence[float], categories: Sequence[str]) -> dict[str, dict[str, float]]:
    """{category: {"score": mean, "count": n}} for per-category breakdowns, plus "all"."""
    groups: dict[str, list[float]] = defaultdict(list)
    for score, category in zip(scores, categories, strict=True):
        groups[category].append(score)
    groups["all"] = list(scores)
    return {c: {"score": sum(v) / len(v), "count": len(v)} for c, v in sorted(groups.items()) if v}
