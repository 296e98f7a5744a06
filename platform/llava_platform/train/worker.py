"""One Ray Train worker of a LLaVA training run (TorchTrainer's train_loop_per_worker).

    restore or start -> this worker's micro-batches from the plan, from its start step (index arithmetic:
    nothing skipped is read or decoded) -> those samples encoded by Ray Data tasks, in order -> steps ->
    every log step: ray.train.report(metrics); every checkpoint step and the last: report with a checkpoint

ray.train.report is a barrier: every worker reports at the same steps. The compute itself is
llava_platform.train.loop, which runs without Ray too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from llava_platform.cli import quiet_transformers
from llava_platform.config import TrainJobSpec
from llava_platform.data.pipeline import GoodSamples, row_to_sample, stream_samples
from llava_platform.data.samples import EncodedSample
from llava_platform.train.flops import peak_tflops_for
from llava_platform.train.loop import run_steps
from llava_platform.train.plan import DataPlan
from llava_platform.train.setup import build_training
from llava_platform.train.state import save_training_state

__all__ = ["train_worker", "quiet_report_log", "ENCODED_DATASET"]

# Ray Train's worker logger prints INFO records once (its patched print() would echo them twice)
log = logging.getLogger(__name__)


ENCODED_DATASET = "encoded"  # data.cache_encoded: every good sample, encoded once (launch.py); each worker keeps its own


def _samples(config: dict[str, Any], spec: TrainJobSpec, indices) -> Iterator[EncodedSample]:
    """The samples at these file indices, in this order: streamed from Ray Data tasks, or replayed from the
    encoded set (data.cache_encoded), of which this worker keeps only the rows it trains on."""
    if spec.data.cache_encoded:
        wanted = set(indices.tolist())
        rows = ray.train.get_dataset_shard(ENCODED_DATASET).iter_rows()
        cache = {int(row["index"]): row_to_sample(row) for row in rows if int(row["index"]) in wanted}
        return (cache[int(i)] for i in indices)
    return stream_samples(indices, config["shards"], config["encoder"], spec.data)


def _placement() -> dict[str, Any]:
    """Where every worker runs (rank order), for the log and the result."""
    here = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    if not (dist.is_available() and dist.is_initialized()):
        return {"node_ids": [here["node_id"]], "pids": [here["pid"]]}
    everyone: list[dict[str, Any]] = [{}] * dist.get_world_size()
    dist.all_gather_object(everyone, here)
    return {"node_ids": [w["node_id"] for w in everyone], "pids": [w["pid"] for w in everyone]}


def quiet_report_log() -> None:
    """No "Reporting training result N: TrainingReport(checkpoint=..., metrics={...})" line per ray.train.report.

    Ray Train (2.60) logs that at INFO on a logger named by its file path (logging.getLogger(__file__) in
    ray/train/v2/_internal/execution/context.py), which is outside "ray.train", so RunConfig's
    LoggingConfig(log_level="WARNING") does not reach it, and the worker's root logger passes INFO (our own
    [train] line needs it). That one logger is set to WARNING.
    """
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    quiet_transformers()
    quiet_report_log()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # this worker's own input pipeline: no per-run notices
    spec = TrainJobSpec.model_validate(config["spec"])
    plan = DataPlan(**config["plan"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(spec.scaling.torch_threads or max(1, int(spec.scaling.cpus_per_worker)))
    placement = _placement()

    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restored:
        setup = build_training(spec, plan, device, resume=Path(restored) if restored else None)
    if rank == 0:
        origin = f"resumed at step {setup.start_step}" if checkpoint else "starting"
        log.info(f"[train] {origin}: {plan.total_steps} steps of {plan.global_batch} samples ({plan.passes:.2f} passes over "
                 f"{plan.num_samples} records; {world} workers x "
                 f"{plan.micro_batch} x {plan.accumulation} accumulation), strategy {spec.train.strategy}, "
                 f"trainable {setup.frozen_summary}, worker nodes {placement['node_ids']} pids {placement['pids']}")  # fmt: skip

    good: GoodSamples = ray.get(config["good"])
    # (n, micro_batch) positions among the good samples, from the start step on -> their file indices
    batches = plan.micro_batches(rank, good.length, good.has_image, spec.train.length_grouping_window, setup.start_step)
    samples = _samples(config, spec, good.index[batches.ravel()])
    micro_batches = ([next(samples) for _ in range(plan.micro_batch)] for _ in range(len(batches)))
    every = spec.train.checkpoint_every_steps
    for metrics in run_steps(setup.runner, micro_batches, processor=setup.bundle.processor,
                             start_step=setup.start_step, total_steps=plan.total_steps,
                             accumulation=plan.accumulation, peak_tflops=peak_tflops_for(device, spec.train.peak_tflops)):  # fmt: skip
        last = metrics.step == plan.total_steps
        report = metrics.as_dict() | placement
        if last or (every and metrics.step % every == 0):
            with tempfile.TemporaryDirectory() as directory:
                save_training_state(Path(directory), setup.bundle, setup.runner, spec, plan, metrics.step, report, rank)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                                 checkpoint_dir_name=f"step_{metrics.step:06d}")  # fmt: skip
        elif metrics.step % spec.train.log_every_steps == 0:
            ray.train.report(report)
        if rank == 0 and (last or metrics.step % spec.train.log_every_steps == 0):
            log.info(f"[train] {metrics.line()}")
