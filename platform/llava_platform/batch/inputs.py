"""A batch job's input as a Ray Dataset of questions, read in Ray Data tasks, never whole in the driver.

    question file (.jsonl)      prepare_shards (one streaming pass, cached) -> a task per shard file
    conversations (.json/.jsonl)   -> questions_from_shard: each line / record -> Question rows
    image folder or glob        the driver lists the paths -> questions_from_paths (one question per image)
    Parquet with image bytes    read_parquet -> questions_from_parquet (the bytes travel with the row)

Every stage yields QUESTION_SCHEMA rows, one or more per input entry; a question already in the output
(`written`, a set of ids in the object store) is dropped here, before its images are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llava_platform.batch.questions import Question, from_conversation, from_image, from_question_line
from llava_platform.batch.spec import BatchSpec
from llava_platform.data.pipeline import files_dataset
from llava_platform.data.shards import iter_raw_entries, prepare_shards
from llava_platform.storage import Storage

__all__ = ["QUESTION_SCHEMA", "BatchInput", "open_input", "input_format", "question_table", "IMAGE_SUFFIXES", "image_paths"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PATHS_PER_BLOCK = 256  # image paths per Ray Data block (a task's share of the listing)

QUESTION_SCHEMA = pa.schema([
    ("question_id", pa.string()),
    ("messages", pa.string()),  # JSON [[role, content], ...], the asked user turn last
    ("images", pa.list_(pa.string())),  # paths or URIs as given (relative to image_folder)
    ("image_bytes", pa.binary()),  # parquet input: the encoded image; else null
    ("prompt", pa.string()),
    ("metadata", pa.string()),  # JSON object: the record's other fields (gold answers, category ...)
    ("error", pa.string()),  # null, or why this row is not asked ("bad_record: ...")
])  # fmt: skip


def question_table(questions: list[Question], image_bytes: list[bytes | None] | None = None) -> pa.Table:
    """Questions as QUESTION_SCHEMA rows."""
    return pa.table({
        "question_id": [q.question_id for q in questions],
        "messages": [json.dumps([[m.role, m.content] for m in q.messages]) for q in questions],
        "images": [q.images for q in questions],
        "image_bytes": image_bytes or [None] * len(questions),
        "prompt": [q.prompt for q in questions],
        "metadata": [json.dumps(q.metadata, default=str) for q in questions],
        "error": [q.error for q in questions],
    }, schema=QUESTION_SCHEMA)  # fmt: skip


_WRITTEN: dict[str, frozenset[str]] = {}  # per process: the written-ids object's hex -> the ids


def _written(ref: tuple | None) -> frozenset[str]:
    """The ids already answered: (ObjectRef,) fetched once per process (a 1-tuple, so Ray passes the ref as it is)."""
    if ref is None:
        return frozenset()
    key = ref[0].hex()
    if key not in _WRITTEN:
        import ray

        _WRITTEN[key] = frozenset(ray.get(ref[0]))
    return _WRITTEN[key]


def _unwritten(questions: list[Question], written: tuple | None) -> list[Question]:
    done = _written(written)
    return [q for q in questions if q.question_id not in done]


# --------------------------------------------------------------------------- stages (Ray Data tasks)


def questions_from_shard(batch: dict[str, np.ndarray], kind: str, suffix: str | None, storage: Storage,
                         written: tuple | None) -> Iterator[pa.Table]:  # fmt: skip
    """A shard file of a question or conversation file -> its questions, a row group at a time."""
    with storage.open_input(str(batch["file"][0])) as f:
        for part in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=["label", "raw"]):
            questions: list[Question] = []
            for label, raw in zip(part.column("label").to_pylist(), part.column("raw").to_pylist()):
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as e:
                    questions.append(Question(label, [], [], "", {}, f"bad_record: not JSON ({e.msg} at column {e.colno})"))
                    continue
                if kind == "questions":
                    questions.append(from_question_line(value, label, suffix))
                else:
                    questions.extend(from_conversation(value, label, suffix))
            yield question_table(_unwritten(questions, written))


def questions_from_paths(batch: dict[str, np.ndarray], prompt: str, written: tuple | None) -> pa.Table:
    """Image paths -> one question each, the job's prompt about that image."""
    return question_table(_unwritten([from_image(str(p), prompt) for p in batch["path"]], written))


def questions_from_parquet(batch: pa.Table, columns: dict[str, str], prompt: str, suffix: str | None,
                           written: tuple | None) -> pa.Table:  # fmt: skip
    """Parquet rows (id, image bytes, optional text) -> questions carrying their image's bytes; the row's other
    columns (gold answers, category ...) are its metadata, as a question line's other fields are."""
    ids = [str(v) for v in batch.column(columns["id"]).to_pylist()]
    texts = batch.column(columns["text"]).to_pylist() if columns["text"] in batch.column_names else [None] * len(ids)
    images = batch.column(columns["image"]).to_pylist()
    others = [c for c in batch.column_names if c not in columns.values()]
    extra = batch.select(others).to_pylist()
    done = _written(written)
    questions, image_bytes = [], []
    for question_id, text, data, fields in zip(ids, texts, images, extra):
        if question_id in done:
            continue
        if isinstance(data, dict):  # Hugging Face datasets' Image feature: {bytes, path}
            data = data.get("bytes")
        line = {**fields, "question_id": question_id, "text": prompt if text is None else text, "image": "<bytes>"}
        question = from_question_line(line, question_id, suffix)
        if question.error is None and not isinstance(data, (bytes, bytearray)):
            question.error = f"missing_image: the {columns['image']!r} column holds no bytes for this row"
        questions.append(question)
        image_bytes.append(data if isinstance(data, (bytes, bytearray)) else None)
    return question_table(questions, image_bytes)


# --------------------------------------------------------------------------- the driver's side


def input_format(spec: BatchSpec, storage: Storage) -> str:
    """questions, conversations, images or parquet: batch.format, or what `auto` finds (see BatchSpec.format)."""
    if spec.format != "auto":
        return spec.format
    source = spec.input
    name = source.rstrip("/").rsplit("/", 1)[-1].lower()
    if any(c in source for c in "*?") or not name.endswith((".json", ".jsonl", ".parquet")):
        return "images"
    if name.endswith(".parquet"):
        return "parquet"
    if not storage.exists(source):
        raise FileNotFoundError(f"batch.input: {source} does not exist; check the path (and storage.* for a URI)")
    for _, raw in iter_raw_entries(source, storage):
        try:
            first = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a bad first line: decided by the next one
        return "conversations" if isinstance(first, dict) and "conversations" in first else "questions"
    return "questions"


def image_paths(source: str, storage: Storage) -> tuple[str, list[str]]:
    """The images of a folder (recursively) or of a glob ("imgs/*.png", "s3://b/x/**/*.jpg"): the folder listed, and
    the images' paths relative to it, sorted (a question's id is its image's relative path)."""
    wild = [source.index(c) for c in "*?" if c in source]
    folder = source[: min(wild)].rsplit("/", 1)[0] if wild else source.rstrip("/")
    files = storage.list_files(folder)
    root = storage.filesystem(folder)[1].rstrip("/") + "/"  # how the listing names the folder
    relative = [storage.filesystem(f)[1].removeprefix(root) for f in files]
    if wild:
        pattern = _glob_regex(source.removeprefix(folder).lstrip("/"))
        relative = [r for r in relative if pattern.match(r)]
    return folder, [r for r in relative if r.lower().endswith(IMAGE_SUFFIXES)]


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob as shells read it: * and ? within one folder name, **/ any folders (none included)."""
    out, i = "", 0
    while i < len(pattern):
        for glob, regex in (("**/", "(?:.*/)?"), ("**", ".*"), ("*", "[^/]*"), ("?", "[^/]")):
            if pattern.startswith(glob, i):
                out, i = out + regex, i + len(glob)
                break
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@dataclass
class BatchInput:
    """The questions as a Dataset, and what the progress line needs."""

    dataset: Any  # ray.data.Dataset of QUESTION_SCHEMA rows
    format: str
    entries: int  # input entries (lines, records, images, Parquet rows), those already answered included
    questions_known: bool  # one question per entry (all formats but conversations): `entries` is the total to answer
    image_folder: str | None  # what the questions' image paths are relative to (images: the folder listed)


def _read_tasks(spec: BatchSpec, blocks: int) -> dict[str, Any]:
    """map_batches' compute and CPUs for a read stage: batch.preprocess_workers tasks, no more than its input's blocks."""
    import ray.data

    size = max(1, min(spec.preprocess_workers, blocks))
    return dict(compute=ray.data.TaskPoolStrategy(size=size), num_cpus=spec.preprocess_cpus)


def open_input(spec: BatchSpec, storage: Storage, cache_dir: str, written_ref: Any, log=print) -> BatchInput:
    """The job's input as questions (`written_ref`: the ids to skip, in the object store)."""
    import ray.data

    kind = input_format(spec, storage)
    written = (written_ref,)
    if kind in ("questions", "conversations"):
        shards = prepare_shards(spec.input, storage, cache_dir, log=log)
        kwargs = dict(kind=kind, suffix=spec.prompt_suffix, storage=storage, written=written)
        tasks = _read_tasks(spec, len(shards.files))
        ds = files_dataset(shards.files).map_batches(questions_from_shard, batch_size=1, fn_kwargs=kwargs, **tasks)
        return BatchInput(ds, kind, shards.count, kind == "questions", spec.image_folder)
    if kind == "images":
        folder, paths = image_paths(spec.input, storage)
        if not paths:
            raise FileNotFoundError(f"batch.input: no images ({', '.join(IMAGE_SUFFIXES)}) found at {spec.input}")
        blocks = max(1, len(paths) // PATHS_PER_BLOCK)
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        tasks = _read_tasks(spec, blocks)
        ds = ds.map_batches(questions_from_paths, fn_kwargs=dict(prompt=spec.prompt, written=written), **tasks)
        return BatchInput(ds, kind, len(paths), True, folder)
    fs, inner = storage.filesystem(spec.input)
    columns = {"id": spec.id_column, "image": spec.image_column, "text": spec.text_column}
    ds = ray.data.read_parquet(inner, filesystem=fs)
    names, rows = ds.schema().names, ds.count()  # both from the files' metadata
    for field, column in (("id_column", spec.id_column), ("image_column", spec.image_column)):
        if column not in names:
            raise ValueError(f"batch.{field}: {spec.input} has no column {column!r}; its columns: {', '.join(names)}")
    kwargs = dict(columns=columns, prompt=spec.prompt, suffix=spec.prompt_suffix, written=written)
    tasks = _read_tasks(spec, spec.preprocess_workers)
    ds = ds.map_batches(questions_from_parquet, batch_format="pyarrow", fn_kwargs=kwargs, **tasks)
    return BatchInput(ds, kind, rows, True, spec.image_folder)
