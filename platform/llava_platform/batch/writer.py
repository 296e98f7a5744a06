"""The driver's side of a batch job: answer rows -> part files, whole or not at all, and the job's tally.

    writer = PartWriter("s3://bucket/answers", storage, "jsonl", rows_per_part=1000, commit_every_s=60)
    writer.add(table)          # ANSWER_SCHEMA rows, as the pipeline yields them
    writer.close()             # the last part

A part is committed when it holds rows_per_part rows or is commit_every_s old: a local one is written under a
hidden name (".part-....jsonl.tmp") and renamed, an object is uploaded whole (a store shows it only once
complete). So a job killed at any moment leaves only whole parts, each row once: a re-run reads their ids
(answers.written_ids) and answers only the rest. Part names carry a per-run token, so runs never overwrite.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from llava_platform.storage import Storage, is_uri

__all__ = ["PartWriter", "Tally", "remove_unfinished_parts", "OutputLock", "check_same_run"]


@dataclass
class Tally:
    """What this run wrote: rows, errors by kind, tokens; its summary line and JSON."""

    rows: int = 0
    errors: Counter = field(default_factory=Counter)  # kind ("missing_image") -> rows
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for error in table.column("error").to_pylist():
            if error is not None:
                self.errors[error.split(":", 1)[0]] += 1
        self.prompt_tokens += sum(table.column("prompt_tokens").to_pylist())
        self.completion_tokens += sum(table.column("completion_tokens").to_pylist())


def _part_bytes(table: pa.Table, output_format: str) -> bytes:
    if output_format == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()
    lines = []
    for row in table.to_pylist():
        row["metadata"] = json.loads(row["metadata"])  # LLaVA's answers files hold it as an object
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


class PartWriter:
    def __init__(self, folder: str, storage: Storage, output_format: str = "jsonl", rows_per_part: int = 1000,
                 commit_every_s: float = 60.0):  # fmt: skip
        self.folder = folder
        self.storage = storage
        self.output_format = output_format
        self.rows_per_part = rows_per_part
        self.commit_every_s = commit_every_s
        self.run = uuid.uuid4().hex[:8]
        self.parts = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.oldest: float | None = None  # when the first pending row arrived

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.oldest = self.oldest or time.monotonic()
        while self.pending_rows >= self.rows_per_part:
            self._commit(self.rows_per_part)
        if self.pending_rows and time.monotonic() - self.oldest >= self.commit_every_s:
            self._commit(self.pending_rows)

    def close(self) -> None:
        if self.pending_rows:
            self._commit(self.pending_rows)

    def _commit(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        part, rest = table.slice(0, rows), table.slice(rows)
        name = f"part-{self.run}-{self.parts:05d}.{self.output_format}"
        data = _part_bytes(part, self.output_format)
        path = Storage.join(self.folder, name)
        if is_uri(path):
            self.storage.write_bytes(path, data)  # an object appears whole or not at all
        else:
            hidden = Storage.join(self.folder, f".{name}.tmp")
            self.storage.write_bytes(hidden, data)
            os.replace(hidden, path)
        self.parts += 1
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows
        self.oldest = time.monotonic() if rest.num_rows else None


def remove_unfinished_parts(folder: str, storage: Storage) -> int:
    """Delete the hidden parts a killed run left behind (local folders only: a store has none); returns how many."""
    if is_uri(folder) or not os.path.isdir(folder):
        return 0
    unfinished = [n for n in os.listdir(folder) if n.startswith(".part-") and n.endswith(".tmp")]
    for name in unfinished:
        os.remove(os.path.join(folder, name))
    return len(unfinished)


class OutputLock:
    """One job at a time writes a local output folder (`with OutputLock(folder):`): a second one would answer the same
    questions again and delete the first one's unfinished part. An flock on <folder>/.lock, released when the job's
    process ends however it ends. Object stores have no such lock: give concurrent jobs different outputs there."""

    def __init__(self, folder: str):
        self.folder = folder
        self.file = None

    def __enter__(self) -> OutputLock:
        if not is_uri(self.folder):
            os.makedirs(self.folder, exist_ok=True)
            self.file = open(os.path.join(self.folder, ".lock"), "a+")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.file.seek(0)
                holder = self.file.read().strip() or "another process"
                self.file.close()
                raise ValueError(f"batch.output {self.folder}: another batch job ({holder}) is writing there; wait for "
                                 "it, stop it, or give this one another batch.output") from None  # fmt: skip
            self.file.truncate(0)
            self.file.write(f"pid {os.getpid()}")
            self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock


def check_same_run(folder: str, storage: Storage, identity: dict) -> None:
    """<folder>/run.json records what the answers there come from (checkpoint, template, sampling, input ...); a job
    whose own differs may not add to them (its answers would be scored as the first's), so it stops naming the
    difference. The first run writes the file."""
    path = Storage.join(folder, "run.json")
    if storage.exists(path):
        recorded = json.loads(storage.read_bytes(path))
        changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        if changed:
            details = "; ".join(f"{k}: {recorded.get(k)!r} there, {identity.get(k)!r} now" for k in changed)
            raise ValueError(f"batch.output {folder} holds answers of another job ({details}); give this job another "
                             "batch.output, or delete that folder to start over")  # fmt: skip
    else:
        storage.write_bytes(path, json.dumps(identity, indent=1, sort_keys=True).encode())

