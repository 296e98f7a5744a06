"""GPT-assisted review, LLaVA-Bench's (COCO / In-the-Wild) metric: a judge model behind any OpenAI-compatible endpoint
reads the image's caption, the question, a reference answer (Assistant 1) and the evaluated model's (Assistant 2), and
scores both 1-10 on its reply's first line; per category, relative = 100 * mean(answer) / mean(reference).

    rules = load_rules("jobs/configs/eval/review_rules.json")        # {"conv": Rule(role, prompt), ..., "default": ...}
    client = openai.OpenAI(base_url="http://judge:8000/v1", api_key=key)
    report = review(items, client, "gpt-4o", rules)                    # items: list[ReviewItem]
    report.summary()["conv"]   -> {"count": 20, "scored": 19, "unscored": 1, "reference": 8.2, "answer": 6.9,
                                   "relative": 84.1}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

__all__ = ["SYSTEM_PROMPT", "ReviewItem", "Rule", "ReviewRecord", "ReviewReport", "load_rules", "judge_messages",
           "parse_scores", "review"]  # fmt: skip

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."


@dataclass
class ReviewItem:
    question_id: str
    category: str  # "conv", "detail", "complex" (LLaVA-Bench's); picks the rule
    question: str
    context: str  # the image as text: its caption(s), the judge never sees the image
    reference: str  # Assistant 1, e.g. text-only GPT-4's answer
    answer: str  # Assistant 2, the evaluated model's


@dataclass(frozen=True)
class Rule:
    role: str  # names the answers: "[{role} 1]", "[{role} 2]"
    prompt: str  # the [System] instructions that close the judge's message


@dataclass
class ReviewRecord:
    question_id: str
    category: str
    reply: str  # the judge's text; "" when the request failed
    scores: tuple[float, float] | None  # (reference, answer); None: no score on the reply's first line, or no reply
    error: str | None = None  # the request's error, when it raised


def load_rules(path: str) -> dict[str, Rule]:
    """A rule file: a JSON object, category -> {"role": ..., "prompt": ...}; "default" serves unlisted categories."""
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"rule file {path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"rule file {path} holds a JSON {type(raw).__name__}; write an object: category -> "
                         '{"role": ..., "prompt": ...}')  # fmt: skip
    rules = {}
    for key, entry in raw.items():
        if not (isinstance(entry, dict) and all(isinstance(entry.get(f), str) for f in ("role", "prompt"))):
            raise ValueError(f'rule file {path}: entry "{key}" needs string fields "role" and "prompt", '
                             f"got {entry!r}")  # fmt: skip
        rules[key] = Rule(role=entry["role"], prompt=entry["prompt"])
    return rules


def judge_messages(item: ReviewItem, rules: dict[str, Rule]) -> list[dict[str, str]]:
    """System + user chat messages; the user content is LLaVA's layout: context, question, both answers, the rule."""
    rule = rules.get(item.category) or rules.get("default")
    if rule is None:
        raise ValueError(f'no review rule for category "{item.category}" (question {item.question_id}); the rules '
                         f'have {sorted(rules)}: add "{item.category}" or "default"')  # fmt: skip
    r = rule.role
    content = (f"[Context]\n{item.context}\n\n[Question]\n{item.question}\n\n"
               f"[{r} 1]\n{item.reference}\n\n[End of {r} 1]\n\n[{r} 2]\n{item.answer}\n\n[End of {r} 2]\n\n"
               f"[System]\n{rule.prompt}\n\n")  # fmt: skip
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def parse_scores(reply: str) -> tuple[float, float] | None:
    """'8 7\\nbecause ...' -> (8.0, 7.0); '8,7' too. LLaVA's rule: the first line, commas read as spaces, exactly two
    numbers; else None (counted as unscored, never guessed)."""
    fields = reply.split("\n", 1)[0].replace(",", " ").split()
    if len(fields) != 2:
        return None
    try:
        scores = (float(fields[0]), float(fields[1]))
    except ValueError:
        return None
    return scores if all(math.isfinite(s) for s in scores) else None  # "nan 7" parses as a float, but is no score


@dataclass
class ReviewReport:
    records: list[ReviewRecord]  # one per item, in the items' order

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per group, "all" then each category (sorted): count, scored, unscored, the mean reference and answer scores
        over the scored items, relative = 100 * answer / reference (means and relative None where nothing scored)."""
        groups = {"all": self.records}
        for category in sorted({r.category for r in self.records}):
            groups[category] = [r for r in self.records if r.category == category]
        return {name: _summarize(records) for name, records in groups.items()}


def _summarize(records: list[ReviewRecord]) -> dict[str, Any]:
    scored = [r.scores for r in records if r.scores is not None]
    reference = sum(s[0] for s in scored) / len(scored) if scored else None
    answer = sum(s[1] for s in scored) / len(scored) if scored else None
    relative = 100 * answer / reference if reference else None  # reference mean 0: no ratio
    return {"count": len(records), "scored": len(scored), "unscored": len(records) - len(scored),
            "reference": reference, "answer": answer, "relative": relative}  # fmt: skip


def review(items: Sequence[ReviewItem], client: Any, model: str, rules: dict[str, Rule], *, max_tokens: int = 256,
           temperature: float = 0.2, concurrency: int = 4) -> ReviewReport:  # fmt: skip
    """Ask the judge (`client`: an openai.OpenAI) once per item, `concurrency` requests at a time. A request that
    raises openai.APIError is recorded unscored with its error; the review goes on."""
    if concurrency < 1:
        raise ValueError(f"concurrency is {concurrency}; it must be at least 1")
    messages = [judge_messages(item, rules) for item in items]  # a missing rule fails here, before any request

    def ask(index: int) -> ReviewRecord:
        item = items[index]
        try:
            response = client.chat.completions.create(model=model, messages=messages[index], max_tokens=max_tokens,
                                                      temperature=temperature)  # fmt: skip
        except openai.APIError as e:
            return ReviewRecord(item.question_id, item.category, "", None, f"{type(e).__name__}: {e}")
        reply = response.choices[0].message.content or ""
        return ReviewRecord(item.question_id, item.category, reply, parse_scores(reply))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return ReviewReport(list(pool.map(ask, range(len(items)))))
