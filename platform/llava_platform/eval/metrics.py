"""Answer metrics. Exact match compares normalised strings: case, surrounding space and final period ignored."""

from __future__ import annotations

import re

__all__ = ["normalize_answer", "exact_match", "accuracy"]


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
