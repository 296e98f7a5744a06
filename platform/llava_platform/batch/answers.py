"""Batch outputs: LLaVA's answers format, one row per question, and what a re-run may skip.

    answer_row(question, result, model_id)   -> {"question_id", "prompt", "text", "answer_id", "model_id",
                                                  "metadata", "prompt_tokens", "completion_tokens", "error": None}
    answer_row(refused_question, None, ...)   -> the same keys, "text": "" and "error": "missing_image: ..."
    written_ids(folder, storage)              -> question ids already in folder/*.jsonl (a re-run answers the rest)

The answers are JSON lines under the job's output folder, in part files (`*.jsonl`); a part whose name
starts with "." is one still being written (its writer renames it when whole) and is not read.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from llava_platform.batch.questions import Question
from llava_platform.inference.engine import GenerationResult
from llava_platform.storage import Storage

__all__ = ["answer_row", "written_ids", "PART_SUFFIX"]

PART_SUFFIX = ".jsonl"


def answer_row(question: Question, result: GenerationResult | None, model_id: str, error: str | None = None) -> dict[str, Any]:
    """One output row: the answer, or (no result) the question's own error or `error`."""
    error = error or question.error
    if result is None and error is None:
        raise ValueError(f"question {question.question_id}: no answer and no error to write")
    return {
        "question_id": question.question_id,
        "prompt": question.prompt,
        "text": result.text if result is not None and error is None else "",
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": question.metadata,
        "prompt_tokens": result.prompt_tokens if result is not None else 0,
        "completion_tokens": result.completion_tokens if result is not None else 0,
        "error": error,
    }


def written_ids(folder: str, storage: Storage) -> set[str]:
    """Question ids in the part files already under `folder` (none there: an empty set)."""
    ids: set[str] = set()
    for path in storage.list_files(folder):
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(PART_SUFFIX) or name.startswith("."):  # hidden: a part still being written
            continue
        for line in storage.read_bytes(path).decode().splitlines():
            if line.strip():
                ids.add(str(json.loads(line)["question_id"]))
    return ids
