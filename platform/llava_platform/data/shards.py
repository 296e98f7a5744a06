"""A records file as cached Parquet shards of raw records: converted once, streaming; then scanned by Ray
Data or read by index.

LLaVA ships its data as one JSON array (llava_v1_5_mix665k.json: 665k records, ~1 GB) that Ray Data's
JSON reader would parse whole in one task and that no driver should hold. `prepare_shards` reads a JSON
array, a JSONL file or a Parquet file, local or on object storage, once, in chunks:

    <cache_dir>/records/<key>/manifest.json                  what the shards hold; written last
    <cache_dir>/records/<key>/<writer>/part-00000.parquet    rows {index: int64, label: string, raw: string}
    key = sha1(source, size, mtime): a changed file gets new shards; an unchanged one is not read again

`raw` is each record's own JSON text (parsing and checking it is the Ray Data tasks' job); `label`
names an entry that may have no usable id ("#12": the 13th element of an array, "line 13" of a
JSONL file). Row groups are small (ROW_GROUP rows), so `ShardReader.fetch` reads one small group
per record: a training worker asks for its records in plan order without scanning the set.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llava_platform.storage import Storage

__all__ = ["RecordShards", "ShardReader", "prepare_shards", "iter_raw_entries", "SHARD_ROWS", "ROW_GROUP"]

SHARD_ROWS = 8192  # records per file: ~13 MB of LLaVA JSON, ~80 files (and parallel read tasks) for 665k records
ROW_GROUP = 128  # records per row group: what one random read decodes
CHUNK = 8 << 20  # bytes read at a time from the source
MAX_RECORD = 64 << 20  # a JSON array element longer than this is taken as a syntax error, not read on
FORMAT_VERSION = 2  # bumped when the shard layout changes: old caches are then ignored
SCHEMA = pa.schema([("index", pa.int64()), ("label", pa.string()), ("raw", pa.string())])


@dataclass(frozen=True)
class RecordShards:
    """The manifest of one converted file: where its shards are and what they came from."""

    source: str  # the records file (path or URI) as given
    size: int
    mtime_ns: int
    sha256: str  # of the source bytes: recorded with every model trained on them
    count: int  # entries (records, bad or good), indexed 0..count-1 in file order
    files: list[str]  # shard paths or URIs, in index order: file i holds indices [i * SHARD_ROWS, ...)

    def file_of(self, index: int) -> str:
        return self.files[index // SHARD_ROWS]


def _key(source: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(f"{FORMAT_VERSION}|{source}|{size}|{mtime_ns}".encode()).hexdigest()[:20]


def _format_of(source: str) -> str:
    name = source.lower().rsplit("/", 1)[-1]
    for suffix, kind in ((".jsonl", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return kind
    raise ValueError(f"data.path {source}: unknown records format; use a .json (a list of records), .jsonl "
                     "(one record per line) or .parquet file")  # fmt: skip


def prepare_shards(source: str, storage: Storage, cache_dir: str, log=print) -> RecordShards:
    """The shards of `source`, converting it on first use (one streaming pass: bounded memory whatever its size)."""
    stamp = storage.stat(source)
    if stamp is None:
        raise FileNotFoundError(f"data.path: {source} does not exist; check the path (and storage.* for a URI)")
    kind = _format_of(source)
    folder = Storage.join(cache_dir, f"records/{_key(source, stamp.size, stamp.mtime_ns)}")
    manifest = Storage.join(folder, "manifest.json")
    if storage.exists(manifest):
        return RecordShards(**json.loads(storage.read_bytes(manifest)))
    log(f"[data] converting {source} ({stamp.size / 1e6:.0f} MB) to shards in {folder} (once; later runs reuse them)")
    writer = _ShardWriter(storage, Storage.join(folder, uuid.uuid4().hex[:12]))
    digest = hashlib.sha256()
    for label, raw in iter_raw_entries(source, storage, kind, digest):
        writer.add(label, raw)
    shards = RecordShards(source, stamp.size, stamp.mtime_ns, digest.hexdigest(), writer.count, writer.close())
    storage.write_bytes(manifest, json.dumps(asdict(shards), indent=1).encode())
    return shards


class _ShardWriter:
    """Rows in index order -> part-NNNNN.parquet files of SHARD_ROWS rows, ROW_GROUP rows per group, lz4 (of zstd,
    snappy and lz4, the fastest to write and to read one group back; 1.3x zstd's size)."""

    def __init__(self, storage: Storage, folder: str):
        self.storage, self.folder = storage, folder
        self.labels: list[str] = []
        self.raws: list[str] = []
        self.files: list[str] = []
        self.count = 0

    def add(self, label: str, raw: str) -> None:
        self.labels.append(label)
        self.raws.append(raw)
        self.count += 1
        if len(self.raws) == SHARD_ROWS:
            self._flush()

    def _flush(self) -> None:
        start = self.count - len(self.raws)
        table = pa.table([pa.array(np.arange(start, self.count)), pa.array(self.labels), pa.array(self.raws)], schema=SCHEMA)
        path = Storage.join(self.folder, f"part-{len(self.files):05d}.parquet")
        with self.storage.open_output(path) as sink:
            pq.write_table(table, sink, row_group_size=ROW_GROUP, compression="lz4")
        self.files.append(path)
        self.labels, self.raws = [], []

    def close(self) -> list[str]:
        if self.raws or not self.files:
            self._flush()
        return self.files


# --------------------------------------------------------------------------- reading the source, streaming


def _text_chunks(source: str, storage: Storage, digest=None) -> Iterator[str]:
    """The file as UTF-8 text, CHUNK bytes at a time (a character split between chunks is kept whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with storage.open_input(source) as f:
        while chunk := f.read(CHUNK):
            if digest is not None:
                digest.update(chunk)
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def iter_raw_entries(source: str, storage: Storage | None = None, kind: str | None = None,
                     digest=None) -> Iterator[tuple[str, str]]:  # fmt: skip
    """(label, raw JSON text) of every entry of a records file, in order, without holding the file.

    A JSON array with a syntax error raises ValueError naming the line and column (the file has no
    usable structure after it); a JSONL line that is not JSON is yielded as it is, for the check to report.
    """
    storage = storage or Storage()
    kind = kind or _format_of(source)
    if kind == "json":
        yield from _json_array(source, _text_chunks(source, storage, digest), lambda at: _line_column(source, storage, at))
    elif kind == "jsonl":
        yield from _json_lines(_text_chunks(source, storage, digest))
    else:
        yield from _parquet_rows(source, storage, digest)


def _line_column(source: str, storage: Storage, offset: int) -> tuple[int, int]:
    """The 1-based (line, column) of the file's character at `offset` (read again: only an error needs it)."""
    line, column, seen = 1, 1, 0
    for chunk in _text_chunks(source, storage):
        part = chunk[: offset - seen]
        newlines = part.count("\n")
        line += newlines
        column = len(part) - part.rfind("\n") if newlines else column + len(part)
        seen += len(part)
        if seen >= offset:
            break
    return line, column


def _json_lines(chunks: Iterator[str]) -> Iterator[tuple[str, str]]:
    rest, line = "", 0
    for chunk in chunks:
        *lines, rest = (rest + chunk).split("\n")
        for text in lines:
            line += 1
            if text.strip():
                yield f"line {line}", text
    if rest.strip():
        yield f"line {line + 1}", rest


_SPACE = re.compile(r"[ \t\r\n]*")


def _json_array(source: str, chunks: Iterator[str], where: Callable[[int], tuple[int, int]]) -> Iterator[tuple[str, str]]:
    """The elements of a top-level JSON array, each as its own text, decoded one at a time (json's C scanner).
    `where(offset)`: the (line, column) of a character of the file, for an error message."""
    decoder = json.JSONDecoder()
    buffer, pos, done, dropped = "", 0, False, 0  # dropped: characters cut from the buffer's front so far

    def more() -> bool:
        nonlocal buffer, pos, done, dropped
        if done:
            return False
        chunk = next(chunks, None)
        if chunk is None:
            done = True
            return False
        buffer, pos, dropped = buffer[pos:] + chunk, 0, dropped + pos
        return True

    def skip_space() -> str:
        nonlocal pos
        while True:
            pos = _SPACE.match(buffer, pos).end()
            if pos < len(buffer) or not more():
                return buffer[pos] if pos < len(buffer) else ""

    def fail(message: str, at: int) -> ValueError:
        line, column = where(dropped + at)
        return ValueError(f"{source}: malformed JSON at line {line} column {column}: {message}; fix the file (a JSON "
                          "list of records), or convert it to JSONL, whose bad lines are reported one by one")  # fmt: skip

    if skip_space() != "[":
        raise ValueError(f"{source}: expected a JSON list of records (or use .jsonl with one record per line)")
    pos += 1
    index = 0
    if skip_space() == "]":
        return
    while True:
        if not skip_space():
            raise fail("the list is not closed", pos)
        while True:
            try:
                _, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as e:  # an element cut by the chunk boundary, or a real error
                if len(buffer) - pos > MAX_RECORD or not more():
                    raise fail(e.msg, e.pos) from e
                continue
            if end < len(buffer) or not more():  # a scalar that ends with the buffer may go on in the next chunk
                break
        yield f"#{index}", buffer[pos:end]
        index += 1
        pos = end
        separator = skip_space()
        if separator == "]":
            return
        if separator != ",":
            raise fail(f"expected ',' or ']' after element {index - 1}, found {separator!r}", pos)
        pos += 1


def _parquet_rows(source: str, storage: Storage, digest=None) -> Iterator[tuple[str, str]]:
    """Rows of a Parquet file of records (columns id, image, conversations ...), each as JSON text."""
    if digest is not None:
        for _ in _text_chunks(source, storage, digest):  # the hash is of the file's bytes, as for JSON
            pass
    index = 0
    with storage.open_input(source) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"#{index}", json.dumps({k: v for k, v in row.items() if v is not None}, default=str)
                index += 1


# --------------------------------------------------------------------------- random access


class ShardReader:
    """Raw records by index, reading one row group (ROW_GROUP records) per distinct group asked for.

    One per process: open Parquet files (their footers) are kept, so a worker's many small reads
    do not re-read metadata.
    """

    def __init__(self, shards: RecordShards, storage: Storage):
        self.shards, self.storage = shards, storage
        self._files: dict[str, pq.ParquetFile] = {}

    def _file(self, path: str) -> pq.ParquetFile:
        if path not in self._files:
            if len(self._files) >= 64:
                self._files.pop(next(iter(self._files)))
            self._files[path] = pq.ParquetFile(self.storage.open_input(path))
        return self._files[path]

    def fetch(self, indices) -> list[tuple[str, str]]:
        """(label, raw) for each index, in the order asked."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.shards.count]
        if bad:
            raise IndexError(f"record indices {bad[:5]} outside 0..{self.shards.count - 1} of {self.shards.source}")
        groups: dict[tuple[int, int], dict[str, list]] = {}
        for i in sorted(set(indices)):
            key = (i // SHARD_ROWS, i % SHARD_ROWS // ROW_GROUP)
            if key not in groups:
                groups[key] = self._file(self.shards.files[key[0]]).read_row_group(key[1], columns=["label", "raw"]).to_pydict()
        out = []
        for i in indices:
            group = groups[(i // SHARD_ROWS, i % SHARD_ROWS // ROW_GROUP)]
            row = i % ROW_GROUP
            out.append((group["label"][row], group["raw"][row]))
        return out
