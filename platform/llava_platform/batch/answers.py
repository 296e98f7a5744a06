"""Batch outputs: LLaVA's answers format, one row per question, and what a re-run may skip.

    answer_row(row, result, model_id)     -> {"question_id", "prompt", "text", "answer_id", "model_id", "metadata",
                                              "prompt_tokens", "completion_tokens", "finish_reason", "error": None}
    answer_row(refused_row, None, ...)    -> the same keys, "text": "" and "error": "missing_image: ..."
    written_ids(folder, storage)          -> question ids already in the folder's part files (a re-run answers the rest)

`row` is a question as the pipeline carries it (question_id, prompt, metadata as JSON text, error).
The answers are part files directly under the job's output folder (`*.jsonl`, or `*.parquet`); a part
whose name starts with "." is one still being written (its writer renames it when whole) and is not
read, nor is anything in a sub-folder (the job's .cache).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llava_platform.inference.engine import GenerationResult
from llava_platform.storage import Storage

__all__ = ["ANSWER_SCHEMA", "answer_row", "written_ids", "part_files", "read_answers"]

ANSWER_SCHEMA = pa.schema([
    ("question_id", pa.string()),
    ("prompt", pa.string()),
    ("text", pa.string()),
    ("answer_id", pa.string()),
    ("model_id", pa.string()),
    ("metadata", pa.string()),  # JSON object (a JSON lines part holds it as an object)
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("finish_reason", pa.string()),  # stop or length; null for an error row
    ("error", pa.string()),
])  # fmt: skip


def answer_row(row: Mapping[str, Any], result: GenerationResult | None, model_id: str) -> dict[str, Any]:
    """One output row: the answer, or (no result) the row's own error."""
    error = row["error"]
    if result is None and error is None:
        raise ValueError(f"question {row['question_id']}: no answer and no error to write")
    answered = result is not None and error is None
    return {
        "question_id": row["question_id"],
        "prompt": row["prompt"],
        "text": result.text if answered else "",
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": row["metadata"],
        "prompt_tokens": result.prompt_tokens if answered else 0,
        "completion_tokens": result.completion_tokens if answered else 0,
        "finish_reason": result.finish_reason if answered else None,
        "error": error,
    }


def part_files(folder: str, storage: Storage) -> list[str]:
    """The finished part files (.jsonl, .parquet) directly under `folder`, sorted."""
    root = storage.filesystem(folder)[1].rstrip("/")
    parts = []
    for path in storage.list_files(folder):
        inner = storage.filesystem(path)[1]
        name = inner.rsplit("/", 1)[-1]
        if inner.rsplit("/", 1)[0] == root and name.endswith((".jsonl", ".parquet")) and not name.startswith("."):
            parts.append(path)
    return parts


def read_answers(folder: str, storage: Storage | None = None, columns: list[str] | None = None):
    """Every answer row under `folder`, part by part (one part in memory at a time), metadata as a dict."""
    storage = storage or Storage()
    for path in part_files(folder, storage):
        if path.endswith(".parquet"):
            with storage.open_input(path) as f:
                rows = pq.read_table(f, columns=columns).to_pylist()
            for row in rows:
                if "metadata" in row:
                    row["metadata"] = json.loads(row["metadata"])
                yield row
        else:
            for line in storage.read_bytes(path).decode().splitlines():
                if line.strip():
                    row = json.loads(line)
                    yield {k: row[k] for k in columns} if columns else row


def written_ids(folder: str, storage: Storage) -> set[str]:
    """Question ids in the part files already under `folder` (none there: an empty set)."""
    return {str(row["question_id"]) for row in read_answers(folder, storage, ["question_id"])}
