"""Training input on Ray Data: records are checked and encoded by CPU tasks, in parallel, and
streamed into the training workers (or, with data.cache_encoded, encoded once by the check and
replayed there).

    driver: read_records() -> Record / BadRecord (malformed entries are reported here)
    record rows  {index, id, roles, contents, images}                     plain Arrow columns
      -> CheckRecords   {index, kind, reason, length, truncated}          the dataset check, before the first step
                        (+ the EncodeRecords columns with data.cache_encoded: kept in the object store)
      -> EncodeRecords  {id, input_ids, labels, pixel_values, image_sizes}  one dataset per worker, in plan order

The stages are plain functions, testable without a cluster: `encode_records(rows, config)`.
They run as Ray tasks (not actor pools): a job's idle worker processes are reused across the
check and every worker's input, so each process imports torch / transformers once, and builds
its SampleEncoder once per config (cached by `EncoderConfig.key`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import ProcessorMixin

from llava_platform.config import DataSpec
from llava_platform.data.records import BadRecord, Record
from llava_platform.data.samples import EncodedSample, SampleEncoder
from llava_platform.data.templates import Message, get_template
from llava_platform.data.validate import MALFORMED, Problem, ValidationReport, check_record

__all__ = [
    "EncoderConfig", "CheckedData", "check_records", "encode_records", "record_rows", "row_to_sample", "check_on_ray",
    "encoded_dataset",
]  # fmt: skip

PREPROCESS_BATCH = 32  # records per task: small, so the first training batch is not kept waiting


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
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per job: the per-process cache key

    @classmethod
    def for_data(cls, data: DataSpec, processor: ProcessorMixin, template: str) -> EncoderConfig:
        return cls(processor, template, data.image_folder, data.max_length, data.max_image_pixels)

    def build(self) -> SampleEncoder:
        processor = self.processor
        if not isinstance(processor, ProcessorMixin):
            import ray

            processor = ray.get(processor)
        return SampleEncoder(processor, get_template(self.template), self.image_folder, self.max_length,
                             self.max_image_pixels)  # fmt: skip

    def shared(self) -> EncoderConfig:
        """This config with the processor put in Ray's object store once."""
        import ray

        return self if not isinstance(self.processor, ProcessorMixin) else EncoderConfig(
            ray.put(self.processor), self.template, self.image_folder, self.max_length, self.max_image_pixels, self.key)


_ENCODERS: dict[str, SampleEncoder] = {}  # per process: key -> encoder


def _encoder(config: EncoderConfig) -> SampleEncoder:
    if config.key not in _ENCODERS:
        _ENCODERS[config.key] = config.build()
    return _ENCODERS[config.key]


def record_rows(records: list[Record], indices: list[int] | None = None) -> list[dict[str, Any]]:
    """Records as rows of plain columns (Arrow stores them natively; no pickled objects)."""
    indices = indices if indices is not None else list(range(len(records)))
    return [{"index": i, "id": r.id, "roles": [m.role for m in r.messages], "contents": [m.content for m in r.messages],
             "images": list(r.images)} for i, r in zip(indices, records)]  # fmt: skip


def _records(batch: dict[str, Any]) -> list[Record]:
    return [
        Record(str(rid), [Message(str(role), str(text)) for role, text in zip(roles, contents)], [str(p) for p in images])
        for rid, roles, contents, images in zip(batch["id"], batch["roles"], batch["contents"], batch["images"])
    ]


CHECK_COLUMNS = ("index", "kind", "reason", "length", "truncated")
ENCODED_COLUMNS = ("id", "input_ids", "labels", "pixel_values", "image_sizes")


def _append_encoded(out: dict[str, list], record_id: str, sample: EncodedSample | None) -> None:
    """One EncodeRecords row; a bad record (no sample) or a text-only one gets empty arrays."""
    out["id"].append(record_id)
    out["input_ids"].append(np.asarray(sample.input_ids if sample else [], dtype=np.int32))
    out["labels"].append(np.asarray(sample.labels if sample else [], dtype=np.int32))
    pixels = sample.pixel_values if sample else None
    out["pixel_values"].append(pixels.numpy() if pixels is not None else np.zeros((0,), np.float32))
    sizes = sample.image_sizes if sample else None
    out["image_sizes"].append(sizes.numpy() if sizes is not None else np.zeros((0, 2), np.int64))


def check_records(batch: dict[str, Any], config: EncoderConfig, keep_encoded: bool = False) -> dict[str, list]:
    """Ray Data stage: each record's problem (kind, reason) or its token length. The check encodes every
    record anyway; with `keep_encoded` its rows also carry the encoded sample, else no pixels leave the task."""
    encoder = _encoder(config)
    out: dict[str, list] = {k: [] for k in CHECK_COLUMNS + (ENCODED_COLUMNS if keep_encoded else ())}
    for index, record in zip(batch["index"], _records(batch)):
        problem, sample = check_record(encoder, record)
        out["index"].append(int(index))
        out["kind"].append(problem.kind if problem else "")
        out["reason"].append(problem.reason if problem else "")
        out["length"].append(len(sample.input_ids) if sample else 0)
        out["truncated"].append(bool(sample and sample.truncated))
        if keep_encoded:
            _append_encoded(out, record.id, sample)
    return out


def encode_records(batch: dict[str, Any], config: EncoderConfig) -> dict[str, list]:
    """Ray Data stage: records -> token ids, labels, pixel values (text-only rows get empty pixel arrays)."""
    encoder = _encoder(config)
    out: dict[str, list] = {k: [] for k in ENCODED_COLUMNS}
    for record in _records(batch):
        _append_encoded(out, record.id, encoder.encode(record))  # checked before training: a failure is a changed file
    return out


def row_to_sample(row: dict[str, Any]) -> EncodedSample:
    """An EncodeRecords row, as the training worker receives it, back into an EncodedSample."""
    pixels, sizes = row["pixel_values"], row["image_sizes"]
    return EncodedSample(
        id=row["id"],
        input_ids=row["input_ids"].tolist(),
        labels=row["labels"].tolist(),
        pixel_values=torch.from_numpy(np.array(pixels)) if pixels.size else None,  # a copy: Arrow buffers are read-only
        image_sizes=torch.from_numpy(np.array(sizes)) if sizes.size else None,
    )


def _tasks(config: EncoderConfig, data: DataSpec) -> dict[str, Any]:
    import ray.data

    return dict(fn_kwargs={"config": config}, compute=ray.data.TaskPoolStrategy(size=data.preprocess_workers),
                num_cpus=data.preprocess_cpus, batch_size=PREPROCESS_BATCH)  # fmt: skip


@dataclass
class CheckedData:
    """The dataset after the check: its report, the records without a problem and (data.cache_encoded)
    what the check encoded, materialized in Ray's object store."""

    report: ValidationReport
    good: list[Record]
    indices: list[int]  # good[p]'s position in the file: the rows' "index"
    # ray.data.Dataset of CheckRecords rows with the encoded columns (bad records' too), in no particular
    # order, or None. A worker reads it whole and keeps the rows it replays: reading a materialized
    # dataset as it is costs no task, and a select or filter of its ~750 MB (6800 96-px samples) would
    # cost ~6 s of tasks in every worker.
    encoded: Any = None


def check_on_ray(items: list[Record | BadRecord], config: EncoderConfig, data: DataSpec) -> CheckedData:
    """jobs.validate_data's checks over the whole dataset, run as Ray Data tasks: the report (in file
    order), the records without a problem and, with data.cache_encoded, what their check encoded."""
    import ray.data

    records = [(i, item) for i, item in enumerate(items) if isinstance(item, Record)]
    checked: dict[int, dict[str, Any]] = {}
    encoded = None
    if records:
        rows = ray.data.from_items(record_rows([r for _, r in records], [i for i, _ in records]))
        tasks = _tasks(config, data)
        tasks["fn_kwargs"] = tasks["fn_kwargs"] | {"keep_encoded": data.cache_encoded}
        results = rows.map_batches(check_records, **tasks)
        if data.cache_encoded:
            encoded = results = results.materialize()
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):  # the blocks as they are: no task
            checked |= {row["index"]: row for row in batch.select(list(CHECK_COLUMNS)).to_pylist()}
    report, good, indices = ValidationReport(data.path), [], []
    for i, item in enumerate(items):
        if isinstance(item, BadRecord):
            report.add(Problem(item.id, MALFORMED, item.reason))
            continue
        row = checked[i]
        problem = Problem(item.id, row["kind"], row["reason"]) if row["kind"] else None
        report.add(problem, int(row["length"]), bool(row["truncated"]))
        if problem is None:
            good.append(item)
            indices.append(i)
    return CheckedData(report, good, indices, encoded)


def encoded_dataset(records: list[Record], config: EncoderConfig, data: DataSpec):
    """A lazy Ray Dataset of encoded rows, in the order of `records` (one worker's plan)."""
    import ray.data

    return ray.data.from_items(record_rows(records)).map_batches(encode_records, **_tasks(config, data))
