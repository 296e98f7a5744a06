"""A batch inference job on Ray Data, end to end: `run_batch(spec)`.

    input ──read (tasks)──> questions ──encode_questions (CPU tasks)──> model inputs | error
          ──BatchPredictor (actor pool: batch.actors x {cpus,gpus}_per_actor, batch.batch_size rows a call)──>
          answers ──the driver──> part files under batch.output (PartWriter), progress, tally

Streaming: Ray Data runs the stages at once with bounded queues between them, so the read and the CPU
encoding overlap the model and memory does not grow with the input. The driver holds the ids already
written (a re-run skips them), one block of answers at a time and the tally.
The summary (also <output>/summary.json): rows, errors by kind, rows/s, tokens/s, seconds to the first answer.
One job at a time writes a local output (OutputLock), and a job adds only to answers of the same checkpoint,
template, sampling and input (<output>/run.json, writer.check_same_run).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass

from transformers import AutoConfig

from llava_platform.batch.answers import written_ids
from llava_platform.batch.inputs import open_input
from llava_platform.batch.predictor import BatchPredictor, model_id_of
from llava_platform.batch.preprocess import QuestionEncoder, encode_questions
from llava_platform.batch.progress import Progress, duration
from llava_platform.batch.spec import BatchJobSpec
from llava_platform.batch.writer import OutputLock, PartWriter, Tally, check_same_run, remove_unfinished_parts
from llava_platform.cluster import connect, quiet_ray_data
from llava_platform.model.builder import build_processor_for, model_template
from llava_platform.storage import Storage, is_uri

__all__ = ["BatchSummary", "run_batch", "absolute_batch_spec", "prompt_limit"]


@dataclass
class BatchSummary:
    rows: int  # answered (or refused) by this run
    already_written: int  # skipped: in the output before this run
    errors: dict[str, int]  # kind -> rows
    seconds: float
    first_row_s: float | None  # start-up: from the job's start to its first answer written
    rows_per_s: float
    completion_tokens_per_s: float
    prompt_tokens: int
    completion_tokens: int

    def lines(self) -> list[str]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        start = f", first answer after {duration(self.first_row_s)}" if self.first_row_s is not None else ""
        return [
            f"[batch] done: {self.rows} rows in {duration(self.seconds)} ({self.already_written} already written)",
            f"[batch] errors: {errors}",
            f"[batch] {self.rows_per_s:.2f} rows/s, {self.completion_tokens_per_s:.1f} generated tokens/s{start}",
        ]


def absolute_batch_spec(spec: BatchJobSpec) -> BatchJobSpec:
    """Local paths as the driver sees them, absolute (Ray's tasks run in other folders, on other nodes); URIs, and a
    checkpoint that is a hub id (no such local path), as they are."""
    batch = spec.batch
    updates = {k: getattr(batch, k) for k in ("input", "image_folder", "output", "cache_dir")}
    updates = {k: v if v is None or is_uri(v) else os.path.abspath(os.path.expanduser(v)) for k, v in updates.items()}
    checkpoint = spec.model.checkpoint
    if checkpoint and not is_uri(checkpoint) and os.path.exists(os.path.expanduser(checkpoint)):
        checkpoint = os.path.abspath(os.path.expanduser(checkpoint))
    return spec.model_copy(update={"batch": batch.model_copy(update=updates),
                                   "model": spec.model.model_copy(update={"checkpoint": checkpoint})})  # fmt: skip


def prompt_limit(spec: BatchJobSpec, checkpoint: str) -> int:
    """batch.max_prompt_tokens, else the LLM's context (max_position_embeddings) less sampling.max_new_tokens."""
    if spec.batch.max_prompt_tokens is not None:
        return spec.batch.max_prompt_tokens
    try:
        config = AutoConfig.from_pretrained(checkpoint)  # a directory, or a hub id's config.json
    except (OSError, ValueError):
        return 1 << 31  # an adapter checkpoint (its base's config is elsewhere): no limit of ours
    context = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    return max(1, context - spec.sampling.max_new_tokens) if context else 1 << 31


def run_batch(spec: BatchJobSpec, log=print) -> BatchSummary:
    # Ray Data's notice that a stage got fewer blocks than its task limit: a small input's normal case, not a problem
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)
    started = time.monotonic()
    spec = absolute_batch_spec(spec)
    storage = Storage(spec.storage)
    connect()
    quiet_ray_data()

    with OutputLock(spec.batch.output):
        return _run(spec, storage, started, log)


def _identity(spec: BatchJobSpec, template: str) -> dict:
    """What a job's answers depend on: a re-run must match it to add to them (writer.check_same_run)."""
    batch = spec.batch
    return {"checkpoint": spec.model.checkpoint, "template": template, "dtype": spec.model.dtype,
            "quantization": spec.model.quantization, "sampling": spec.sampling.model_dump(mode="json"),
            "input": batch.input, "format": batch.format, "image_folder": batch.image_folder, "prompt": batch.prompt,
            "prompt_suffix": batch.prompt_suffix, "max_image_side": batch.max_image_side}  # fmt: skip


def _run(spec: BatchJobSpec, storage: Storage, started: float, log) -> BatchSummary:
    import ray
    import ray.data

    batch = spec.batch
    local = storage.local_checkpoint(spec.model.checkpoint, weights=False)  # the driver runs no model
    model = spec.model.model_copy(update={"checkpoint": local})
    processor = build_processor_for(model)
    template = model_template(model)
    check_same_run(batch.output, storage, _identity(spec, template))
    removed = remove_unfinished_parts(batch.output, storage)
    written = written_ids(batch.output, storage)
    log(f"[batch] output {batch.output}: {len(written)} rows already written"
        + (f", {removed} unfinished parts of a stopped run removed" if removed else ""))  # fmt: skip
    tasks = dict(compute=ray.data.TaskPoolStrategy(size=batch.preprocess_workers), num_cpus=batch.preprocess_cpus)
    source = open_input(batch, storage, batch.cache_dir or Storage.join(batch.output, ".cache"), ray.put(written), log)
    encoder = QuestionEncoder(ray.put(processor), template, source.image_folder, storage, batch.max_image_pixels,
                              prompt_limit(spec, local), batch.max_image_side)  # fmt: skip
    log(f"[batch] input {batch.input}: {source.format}, {source.entries} entries; template {template}")

    gpu = batch.gpus_per_actor > 0
    # blocks of batch_size rows: a shard file's 8192 questions are encoded by many tasks, not by its reader alone
    answers = source.dataset.repartition(target_num_rows_per_block=batch.batch_size).map_batches(
        encode_questions, batch_format="pyarrow", batch_size=batch.batch_size, fn_kwargs=dict(encoder=encoder), **tasks
    ).map_batches(
        BatchPredictor,
        batch_format="pyarrow",
        batch_size=batch.batch_size,
        compute=ray.data.ActorPoolStrategy(size=batch.actors),
        num_cpus=batch.cpus_per_actor,
        num_gpus=batch.gpus_per_actor or None,
        fn_constructor_kwargs=dict(model=spec.model, sampling=spec.sampling, storage=spec.storage, gpu=gpu,
                                   model_id=batch.model_id or model_id_of(spec.model.checkpoint),
                                   threads=None if gpu else max(1, int(batch.cpus_per_actor))),
    )  # fmt: skip

    total = source.entries if source.questions_known else None
    progress = Progress(total, len(written), batch.progress_every_s, started=started)
    writer = PartWriter(batch.output, storage, batch.output_format, batch.rows_per_part, batch.commit_every_s)
    tally = Tally()
    for table in answers.iter_batches(batch_format="pyarrow", batch_size=None):
        writer.add(table)
        tally.add(table)
        progress.add(table.num_rows)
    writer.close()
    progress.close()

    seconds = time.monotonic() - started
    summary = BatchSummary(tally.rows, len(written), dict(tally.errors), seconds, progress.first_row_s,
                           tally.rows / seconds, tally.completion_tokens / seconds, tally.prompt_tokens,
                           tally.completion_tokens)  # fmt: skip
    storage.write_bytes(Storage.join(batch.output, "summary.json"), json.dumps(summary.__dict__, indent=1).encode())
    for line in summary.lines():
        log(line)
    return summary

