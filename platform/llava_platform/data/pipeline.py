"""Training input on Ray Data: the data check before the first step, and each worker's samples, streamed.

    data.path ──prepare_shards (once, streaming)──> Parquet shards {index, label, raw}       data/shards.py
      check:   shard files -> check_entries (a CPU task per file: headers and text, no pixels)
               -> rows {index, kind, reason, length, has_image, images + stamps}  -> the driver sums them up
                  (bounded: counts, lengths, the good samples' (index, length, has_image)) and caches them
               a later run: the cached rows -> re-check only records whose images changed
      train:   each worker, from the plan: its samples' file indices, in step order, from its start step
               -> from_numpy -> encode_indices (CPU tasks: ShardReader.fetch, decode, uint8 pixels)
               -> the worker, in order (data.cache_encoded: every good sample encoded once, replayed)

The driver holds no record: only the report and three arrays over the good samples (~9 bytes each).
The stages are plain functions, testable without a cluster (`check_entries`, `encode_indices`); the check's
tasks take a file each (its records, or its cached rows).
They run as Ray tasks (not actor pools): a job's idle worker processes are reused across the check
and every worker's input, so each process imports torch / transformers once, and builds its
SampleEncoder once per config (cached by `EncoderConfig.key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from transformers import ProcessorMixin

from llava_platform.config import DataSpec
from llava_platform.data.records import Record, parse_raw
from llava_platform.data.samples import EncodedSample, SampleEncoder
from llava_platform.data.shards import RecordShards, ShardReader, prepare_shards
from llava_platform.data.templates import get_template
from llava_platform.data.validate import CHECK_COLUMNS, CHECK_SCHEMA, Problem, ValidationReport, check_entries, problem_line
from llava_platform.storage import Storage

__all__ = [
    "EncoderConfig", "GoodSamples", "CheckedData", "check_dataset", "encode_indices", "row_to_sample", "stream_samples",
    "encode_all", "encoded_bytes", "check_cache_fits", "files_dataset",
]  # fmt: skip

PREPROCESS_BATCH = 32  # records per encode task: small, so the first training batch is not kept waiting
CHECK_BATCH = 512  # records per check call: one tokenizer call, one stat call for their images
CACHED_ROWS = 32_768  # rows per file of the check's cache: a later run re-checks them in parallel, a task per file
ENCODED_COLUMNS = ("index", "id", "input_ids", "labels", "pixel_values", "image_sizes")


@dataclass(frozen=True)
class EncoderConfig:
    """What a Ray Data task needs to build the same SampleEncoder as the driver.

    `processor` is the processor itself or, on a cluster, an ObjectRef to it: the config then
    travels small and each worker process fetches the processor once.
    """

    processor: Any  # ProcessorMixin | ray.ObjectRef
    template: str
    image_folder: str | None
    max_length: int
    max_image_pixels: int
    storage: Storage
    fingerprint: str  # what the check's results depend on: tokenizer, image processor, template, limits
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per job: the per-process cache key

    @classmethod
    def for_data(cls, data: DataSpec, processor: ProcessorMixin, template: str, storage: Storage) -> EncoderConfig:
        parts = [processor.tokenizer.backend_tokenizer.to_str(), processor.image_processor.to_json_string(), template,
                 str(data.image_folder), str(data.max_length), str(data.max_image_pixels)]  # fmt: skip
        fingerprint = hashlib.sha1("\0".join(parts).encode()).hexdigest()[:20]
        return cls(processor, template, data.image_folder, data.max_length, data.max_image_pixels, storage, fingerprint)

    def build(self) -> SampleEncoder:
        processor = self.processor
        if not isinstance(processor, ProcessorMixin):
            import ray

            processor = ray.get(processor)
        return SampleEncoder(processor, get_template(self.template), self.image_folder, self.max_length,
                             self.max_image_pixels, self.storage)  # fmt: skip

    def shared(self) -> EncoderConfig:
        """This config with the processor put in Ray's object store once."""
        import ray

        if not isinstance(self.processor, ProcessorMixin):
            return self
        return EncoderConfig(ray.put(self.processor), self.template, self.image_folder, self.max_length,
                             self.max_image_pixels, self.storage, self.fingerprint, self.key)  # fmt: skip


_ENCODERS: dict[str, SampleEncoder] = {}  # per process: config key -> encoder
_READERS: dict[str, ShardReader] = {}  # per process: shards -> reader (its open files)


def _encoder(config: EncoderConfig) -> SampleEncoder:
    if config.key not in _ENCODERS:
        # a task holds its share of the CPUs: the tokenizer's own threads would compete with the other tasks for
        # the rest (measured: 15% more CPU per record checked)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _ENCODERS[config.key] = config.build()
    return _ENCODERS[config.key]


def _reader(shards: RecordShards, storage: Storage) -> ShardReader:
    if shards.sha256 not in _READERS:
        _READERS[shards.sha256] = ShardReader(shards, storage)
    return _READERS[shards.sha256]


def _tasks(data: DataSpec, batch_size: int, blocks: int, tasks: int | None = None, **fn_kwargs) -> dict[str, Any]:
    """map_batches' arguments: at most `tasks` (default data.preprocess_workers) Ray tasks of data.preprocess_cpus,
    and no more than the input's `blocks` (Ray Data warns of a pool larger than its input)."""
    import ray.data

    size = max(1, min(tasks or data.preprocess_workers, blocks))
    return dict(fn_kwargs=fn_kwargs, compute=ray.data.TaskPoolStrategy(size=size), num_cpus=data.preprocess_cpus,
                batch_size=batch_size)  # fmt: skip


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class GoodSamples:
    """The records training may use, in file order: what the plan and the workers need of the check."""

    index: np.ndarray  # (N,) int64 position in the records file
    length: np.ndarray  # (N,) int32 tokens, images expanded
    has_image: np.ndarray  # (N,) bool


@dataclass
class CheckedData:
    report: ValidationReport
    shards: RecordShards
    good: GoodSamples
    seconds: float
    cached: bool  # the results came from the cache (only records whose images changed were checked again)


def _file_batches(path: str, storage: Storage, columns: list[str], size: int) -> Iterator[pa.RecordBatch]:
    with storage.open_input(path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=size, columns=columns)


def check_file(batch: dict[str, np.ndarray], config: EncoderConfig) -> Iterator[pa.Table]:
    """Ray Data stage: a shard file's path -> CHECK_SCHEMA rows of its records, CHECK_BATCH at a time."""
    encoder = _encoder(config)
    for part in _file_batches(str(batch["file"][0]), encoder.storage, ["index", "label", "raw"], CHECK_BATCH):
        yield check_entries(*(part.column(k).to_pylist() for k in ("index", "label", "raw")), encoder)


def recheck_file(batch: dict[str, np.ndarray], config: EncoderConfig, shards: RecordShards) -> Iterator[pa.Table]:
    """Ray Data stage: a cached check file's path -> its rows through recheck_batch, a few thousand at a time."""
    encoder = _encoder(config)
    for part in _file_batches(str(batch["file"][0]), encoder.storage, list(CHECK_COLUMNS), 4 * CHECK_BATCH):
        yield recheck_batch(pa.Table.from_batches([part]), config, shards)


def recheck_batch(batch: pa.Table, config: EncoderConfig, shards: RecordShards) -> pa.Table:
    """Cached CHECK_SCHEMA rows -> the same rows, checked again where an image's size or modification time differs
    from the cached stamp (the cache's key per image: path, size, mtime), with a "changed" column. A batch whose
    images are all as they were passes through as it is."""
    encoder = _encoder(config)
    batch = batch.combine_chunks()  # one chunk: list_parent_indices below count rows from the batch's start
    images = batch.column("images")
    stamps = encoder.storage.stat_many(pc.list_flatten(images).to_pylist())
    now = np.array([(s.size, s.mtime_ns) if s else (-1, -1) for s in stamps], dtype=np.int64).reshape(-1, 2)
    cached = np.stack([pc.list_flatten(batch.column(k)).to_numpy() for k in ("image_sizes", "image_mtimes")], axis=1)
    owner = pc.list_parent_indices(images).to_numpy()  # the row of each image
    changed = np.unique(owner[(now != cached).any(axis=1)])
    flags = np.zeros(batch.num_rows, dtype=bool)
    flags[changed] = True
    if len(changed):
        indices = batch.column("index").to_numpy()[changed].tolist()
        fetched = _reader(shards, encoder.storage).fetch(indices)
        fresh = check_entries(indices, [label for label, _ in fetched], [raw for _, raw in fetched], encoder)
        keep = batch.filter(pa.array(~flags)).select(list(CHECK_COLUMNS)).cast(CHECK_SCHEMA)
        batch = pa.concat_tables([keep, fresh])  # the order of rows does not matter: the driver sorts by index
        flags = np.concatenate([np.zeros(keep.num_rows, dtype=bool), np.ones(fresh.num_rows, dtype=bool)])
    return batch.select(list(CHECK_COLUMNS)).append_column("changed", pa.array(flags))


def _check_folder(cache_dir: str, shards: RecordShards, config: EncoderConfig) -> str:
    key = hashlib.sha1(f"{shards.sha256}|{shards.source}|{config.fingerprint}".encode()).hexdigest()[:20]
    return Storage.join(cache_dir, f"checks/{key}")


def files_dataset(files: list[str]):
    """File paths as a Ray Dataset of one row per block: a task per file, run in parallel. (read_parquet sizes its
    read tasks by bytes, and reads the 80 shards of a 665k-record set in one task when few columns are read.)"""
    import ray.data

    return ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))


def check_dataset(data: DataSpec, config: EncoderConfig, cache_dir: str, tasks: int | None = None, log=print) -> CheckedData:
    """The data check over the whole dataset on Ray Data, cached: the report and the good samples. `tasks`: how many
    run at once (a training job: data.preprocess_workers x its workers, the CPUs its preprocessing will have)."""
    started = time.perf_counter()
    storage = config.storage
    shards = prepare_shards(data.path, storage, cache_dir, log)
    folder = _check_folder(cache_dir, shards, config)
    current = Storage.join(folder, "current.json")
    previous = json.loads(storage.read_bytes(current)) if storage.exists(current) else None
    if previous is None:
        files = shards.files
        rows = files_dataset(files).map_batches(check_file, **_tasks(data, 1, len(files), tasks, config=config))
    else:
        files = previous["files"]
        rows = files_dataset(files).map_batches(recheck_file, **_tasks(data, 1, len(files), tasks, config=config, shards=shards))
    summary = _Summary(data.path, storage, Storage.join(folder, uuid.uuid4().hex[:12]))
    for batch in rows.iter_batches(batch_size=None, batch_format="pyarrow"):  # as the tasks made them: no re-batching
        summary.add(batch)
    summary.close()
    if previous is None or summary.changed:  # the new rows become the cache
        storage.write_bytes(current, json.dumps({"folder": summary.folder, "files": summary.files,
                                                 "problems": summary.report.problems_file}).encode())  # fmt: skip
        if previous is not None:
            storage.delete_dir(previous["folder"])
    else:  # nothing changed: the cached rows stay
        storage.delete_dir(summary.folder)
        summary.report.problems_file = previous["problems"]
    seconds = time.perf_counter() - started
    if previous is None:
        how = "checked"
    elif summary.changed:
        how = f"from the cache ({summary.changed} checked again: their images changed)"
    else:
        how = "from the cache (no image changed)"
    log(f"[data] {shards.count} records {how} in {seconds:.1f}s")
    return CheckedData(summary.report, shards, summary.good(), seconds, previous is not None)


class _Summary:
    """The driver's side of the check: rows in (pyarrow batches, any order) -> the report, the good samples'
    arrays, and the rows written again as the new cache version (with every problem in problems.jsonl)."""

    def __init__(self, path: str, storage: Storage, folder: str):
        self.report = ValidationReport(path)
        self.storage, self.folder = storage, folder
        self.files: list[str] = []
        self.changed = 0
        self._good: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._problems = None
        self._writer = None
        self._rows_in_file = 0

    def add(self, batch: pa.Table) -> None:
        if "changed" in batch.schema.names:
            self.changed += int(np.asarray(batch.column("changed")).sum())
            batch = batch.select(list(CHECK_COLUMNS))
        self._write(batch)
        columns = {k: batch.column(k).to_numpy(zero_copy_only=False) for k in ("index", "kind", "length", "truncated", "has_image")}
        good = columns["kind"] == ""
        self._good.append((columns["index"][good], columns["length"][good], columns["has_image"][good]))
        self.report.add_good(columns["length"][good], columns["truncated"][good])
        if not good.all():
            for row in batch.filter(pa.array(~good)).select(["index", "id", "kind", "reason"]).to_pylist():
                self.report.add(Problem(row["id"], row["kind"], row["reason"]))
                self._problem(problem_line(row))

    def _write(self, table: pa.Table) -> None:
        if self._writer is None or self._rows_in_file >= CACHED_ROWS:
            self._close_file()
            self.files.append(Storage.join(self.folder, f"part-{len(self.files):05d}.parquet"))
            self._sink = self.storage.open_output(self.files[-1])
            self._writer = pq.ParquetWriter(self._sink, CHECK_SCHEMA, compression="lz4")
            self._rows_in_file = 0
        self._writer.write_table(table.cast(CHECK_SCHEMA))
        self._rows_in_file += table.num_rows

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()

    def _problem(self, line: str) -> None:
        if self._problems is None:
            self.report.problems_file = Storage.join(self.folder, "problems.jsonl")
            self._problems = self.storage.open_output(self.report.problems_file)
        self._problems.write((line + "\n").encode())

    def close(self) -> None:
        self._close_file()
        if self._problems is not None:
            self._problems.close()

    def good(self) -> GoodSamples:
        """The good samples in file order (the plan's sample numbering)."""
        parts = self._good or [(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool))]
        index, length, has_image = (np.concatenate([p[k] for p in parts]) for k in range(3))
        order = np.argsort(index, kind="stable")
        return GoodSamples(index[order].astype(np.int64), length[order].astype(np.int32), has_image[order].astype(bool))


# --------------------------------------------------------------------------- encoding for training


def _no_pixels(processor: ProcessorMixin) -> np.ndarray:
    """A text-only row's pixels: no image, with an image row's number of dimensions (a Ray Data tensor column
    takes arrays of one ndim): (0, 3, S, S), anyres (0, 1, 3, S, S)."""
    image_processor = processor.image_processor
    side = image_processor.crop_size["height"]
    anyres = getattr(image_processor, "image_grid_pinpoints", None)
    return np.zeros((0, 1, 3, side, side) if anyres else (0, 3, side, side), np.uint8)


def _append_encoded(out: dict[str, list], index: int, sample: EncodedSample, no_pixels: np.ndarray) -> None:
    """One encoded row; a text-only sample gets empty arrays (Arrow columns cannot hold None tensors)."""
    out["index"].append(index)
    out["id"].append(sample.id)
    out["input_ids"].append(np.asarray(sample.input_ids, dtype=np.int32))
    out["labels"].append(np.asarray(sample.labels, dtype=np.int32))
    pixels = sample.pixel_values
    out["pixel_values"].append(pixels.numpy() if pixels is not None else no_pixels)
    sizes = sample.image_sizes
    out["image_sizes"].append(sizes.numpy() if sizes is not None else np.zeros((0, 2), np.int64))


def encode_indices(batch: dict[str, np.ndarray], config: EncoderConfig, shards: RecordShards) -> dict[str, list]:
    """Ray Data stage: file indices (column "data") -> encoded rows, in the same order."""
    encoder = _encoder(config)
    indices = [int(i) for i in batch["data"]]
    out: dict[str, list] = {k: [] for k in ENCODED_COLUMNS}
    no_pixels = _no_pixels(encoder.processor)
    for index, (label, raw) in zip(indices, _reader(shards, encoder.storage).fetch(indices)):
        record = parse_raw(raw, label)
        if not isinstance(record, Record):
            raise RuntimeError(f"{shards.source}: record {record.id} passed the data check but does not parse now "
                               f"({record.reason}); was the file's cache changed by hand?")  # fmt: skip
        try:
            sample = encoder.encode(record)
        except ValueError as e:  # e.g. corrupt data inside an image whose header and end marker are intact
            raise RuntimeError(
                f"{e}: the data check reads image headers and end markers, not every pixel; fix or remove this "
                "image and resubmit (the job resumes from its last checkpoint)"
            ) from e
        _append_encoded(out, index, sample, no_pixels)
    return out


def row_to_sample(row: dict[str, Any]) -> EncodedSample:
    """An encoded row, as the training worker receives it, back into an EncodedSample."""
    pixels, sizes = row["pixel_values"], row["image_sizes"]
    return EncodedSample(
        id=row["id"],
        input_ids=row["input_ids"].tolist(),
        labels=row["labels"].tolist(),
        pixel_values=torch.from_numpy(np.array(pixels)) if pixels.size else None,  # a copy: Arrow buffers are read-only
        image_sizes=torch.from_numpy(np.array(sizes)) if sizes.size else None,
    )


def _index_blocks(indices: np.ndarray) -> list[np.ndarray]:
    """File indices cut into small blocks for a Ray Dataset (each one encode task, which streams out a batch at a
    time: parallel from the first rows)."""
    blocks = max(1, -(-len(indices) // (4 * PREPROCESS_BATCH)))
    return np.array_split(np.asarray(indices, dtype=np.int64), blocks)


def stream_samples(indices: np.ndarray, shards: RecordShards, config: EncoderConfig, data: DataSpec) -> Iterator[EncodedSample]:
    """These records encoded by Ray Data tasks, yielded in the order given (a training worker's plan)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    if not len(indices):
        return
    blocks = _index_blocks(indices)
    encode = _tasks(data, PREPROCESS_BATCH, len(blocks), config=config, shards=shards)
    encoded = ray.data.from_numpy(blocks).map_batches(encode_indices, **encode)
    for row in encoded.iter_rows():
        yield row_to_sample(row)


def encoded_bytes(good: GoodSamples, processor: ProcessorMixin) -> int:
    """What encoding every good sample takes in Ray's object store (data.cache_encoded): uint8 pixels at the
    largest tile count anyres can give, plus int32 ids and labels."""
    image_processor = processor.image_processor
    side = image_processor.crop_size["height"]
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    tiles = 1 + max(h * w for h, w in pinpoints) // side**2 if pinpoints else 1
    return int(good.has_image.sum()) * 3 * side * side * tiles + 8 * int(good.length.astype(np.int64).sum())


def check_cache_fits(good: GoodSamples, processor: ProcessorMixin, capacity: float, path: str) -> None:
    """data.cache_encoded: refuse a set whose encoding would take more than half of the object store (`capacity`
    bytes): past that Ray spills to disk, and every worker reads the whole set."""
    need = encoded_bytes(good, processor)
    if need > capacity / 2:
        raise ValueError(
            f"data.cache_encoded: the {len(good.index)} samples of {path} encode to ~{need / 1e9:.1f} GB, more than half "
            f"of this Ray cluster's object store ({capacity / 1e9:.1f} GB), which would spill to disk and be read whole "
            "by every worker; set data.cache_encoded: false to stream them"
        )


def encode_all(good: GoodSamples, shards: RecordShards, config: EncoderConfig, data: DataSpec, tasks: int):
    """data.cache_encoded: every good sample encoded once (`tasks` at once), materialized in Ray's object store."""
    import ray.data

    blocks = _index_blocks(good.index)
    encode = _tasks(data, PREPROCESS_BATCH, len(blocks), tasks, config=config, shards=shards)
    return ray.data.from_numpy(blocks).map_batches(encode_indices, **encode).materialize()
