"""The driver of a training job: check the data, plan it, run Ray Train, write final/.

    python -m jobs.finetune --config jobs/configs/tiny_finetune.yaml [dotted.key=value ...]

Order: the spec -> Ray (the cluster named by RAY_ADDRESS / `ray job submit`, else this machine's running
cluster, else a local one: llava_platform.cluster) -> room for preprocessing next to the workers -> the
dataset check on Ray Data, cached (fails naming the bad ids, or skips them with the report) -> the plan
-> TorchTrainer.fit(): each worker streams its own samples (a run with the same name and storage
restarts from its latest checkpoint) -> <output_dir>/final/ with provenance.json (the spec, the data's
hash, the code).

The driver holds no record: the check's report and three arrays over the good samples.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import ray.data
import ray.train
from ray.data import ExecutionOptions
from ray.train.torch import TorchConfig, TorchTrainer
from transformers import ProcessorMixin

from llava_platform.cli import spec_job
from llava_platform.cluster import connect, quiet_ray_data
from llava_platform.config import TrainJobSpec
from llava_platform.data.pipeline import CheckedData, EncoderConfig, check_cache_fits, check_dataset, encode_all
from llava_platform.model.builder import build_processor_for
from llava_platform.storage import Storage, is_uri
from llava_platform.train.final import export_final
from llava_platform.train.loggers import metric_loggers
from llava_platform.train.plan import DataPlan
from llava_platform.train.preflight import check_preprocessing_room, code_version
from llava_platform.train.setup import local_model_source, training_template
from llava_platform.train.worker import ENCODED_DATASET, train_worker

__all__ = ["TrainingResult", "run_training", "check_data", "connect_ray", "absolute_spec", "main"]


@dataclass
class TrainingResult:
    final: Path | str  # <output_dir>/final: a complete HF checkpoint (or adapters, with merge_lora: false); a URI
    # when train.output_dir is one
    checkpoint: str  # the run's last Ray Train checkpoint (path or URI)
    metrics: dict  # the last step's metrics, as rank 0 reported them
    seconds: float  # trainer.fit() wall time


def _local(path: str | None) -> str | None:
    """An existing local path made absolute; hub ids and URIs are left as they are."""
    if path is None or is_uri(path) or not os.path.exists(os.path.expanduser(path)):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _absolute_path(path: str) -> str:
    """A local path (existing or not) made absolute; a URI as it is."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def absolute_spec(spec: TrainJobSpec) -> TrainJobSpec:
    """Paths as the driver sees them: Ray's controller, workers and data tasks run elsewhere (another
    cwd, another node), so every local path in the spec is made absolute before it travels."""
    storage = _absolute_path(spec.run.storage_path)
    parts = spec.model.components
    if parts is not None:
        parts = parts.model_copy(update={"vision_tower": _local(parts.vision_tower), "llm": _local(parts.llm)})
    model = spec.model.model_copy(update={"checkpoint": _local(spec.model.checkpoint), "components": parts,
                                          "original_checkpoint": _local(spec.model.original_checkpoint)})  # fmt: skip
    return spec.model_copy(update={
        "model": model,
        "data": spec.data.model_copy(update={"path": _local(spec.data.path), "image_folder": _local(spec.data.image_folder),
                                             "cache_dir": _absolute_path(spec.data.cache_dir or Storage.join(storage, "data_cache"))}),
        "train": spec.train.model_copy(update={"output_dir": _absolute_path(spec.train.output_dir),
                                               "deepspeed_config": _local(spec.train.deepspeed_config)}),
        "run": spec.run.model_copy(update={"storage_path": storage}),
    })  # fmt: skip


def _encoded(checked: CheckedData, encoder: EncoderConfig, spec: TrainJobSpec, processor):
    """data.cache_encoded: every good sample encoded once into Ray's object store, if it fits."""
    check_cache_fits(checked.good, processor, ray.cluster_resources().get("object_store_memory", 0), spec.data.path)
    started = time.perf_counter()
    encoded = encode_all(checked.good, checked.shards, encoder, spec.data, _preprocess_tasks(spec))
    print(f"[data] {len(checked.good.index)} samples encoded into the object store in {time.perf_counter() - started:.1f}s "
          f"({encoded.size_bytes() / 1e6:.0f} MB)", flush=True)  # fmt: skip
    return encoded


def _provenance(spec: TrainJobSpec, payload: dict, checked: CheckedData, plan: DataPlan, checkpoint: str) -> dict:
    """What made a final/: the resolved spec, the data file (its hash, what the check kept), the code, the run."""
    data = {"path": spec.data.path, "sha256": checked.shards.sha256, "records": checked.shards.count,
            "trained_records": int(len(checked.good.index)), "skipped": dict(checked.report.counts)}  # fmt: skip
    return {"job_spec": payload, "data": data, "code": code_version(), "checkpoint": checkpoint,
            "steps": plan.total_steps, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


def _preprocess_tasks(spec: TrainJobSpec) -> int:
    """Ray Data tasks at once before training (the check; data.cache_encoded's encoding): what the workers' input
    pipelines will have during training, data.preprocess_workers each."""
    return spec.data.preprocess_workers * spec.scaling.num_workers


def connect_ray() -> None:
    """The cluster RAY_ADDRESS names (`ray job submit` sets it), else this machine's running cluster, else a new
    local Ray, never a wait on a cluster that is gone (llava_platform.cluster); Ray Data quiet on the console
    (the context is carried to the workers by Ray Train)."""
    connect()
    quiet_ray_data()


def check_data(spec: TrainJobSpec) -> tuple[CheckedData, EncoderConfig, ProcessorMixin]:
    """The job's data check (cached under data.cache_dir), its report printed; the encoder config the workers
    use and the processor. `spec` has absolute paths (absolute_spec)."""
    spec = local_model_source(spec, weights=False)
    processor = build_processor_for(spec.model)
    template = training_template(spec)
    encoder = EncoderConfig.for_data(spec.data, processor, template, Storage(spec.storage)).shared()  # one copy in the object store
    checked = check_dataset(spec.data, encoder, spec.data.cache_dir, _preprocess_tasks(spec))
    print(f"[data] template {template}\n{checked.report.format()}", flush=True)
    return checked, encoder, processor


def run_training(spec: TrainJobSpec, stage: str) -> TrainingResult:
    if spec.train.stage != stage:
        raise ValueError(f"train.stage is {spec.train.stage!r} but this is jobs.{stage}: run jobs.{spec.train.stage}, "
                         f"or set train.stage: {stage}")  # fmt: skip
    spec = absolute_spec(spec)
    # The workers rebuild the spec from this JSON: a spec that does not survive the trip fails here,
    # once, rather than in every restarted worker group.
    payload = spec.model_dump(mode="json")
    TrainJobSpec.model_validate(payload)
    connect_ray()
    check_preprocessing_room(spec)
    checked, encoder, processor = check_data(spec)
    report = checked.report
    report.enforce(spec.data.on_bad_record, spec.data.max_untrainable_fraction)
    if report.bad:
        print(f"[data] skipping {report.bad} bad records (data.on_bad_record: skip)")

    workers = spec.scaling.num_workers
    plan = DataPlan.for_spec(len(checked.good.index), spec.train, workers)
    datasets = {ENCODED_DATASET: _encoded(checked, encoder, spec, processor)} if spec.data.cache_encoded else {}
    # s3:// and gs:// go through storage.* (e.g. an S3-compatible endpoint); a local path as it is
    storage_fs, storage_path = (Storage(spec.storage).filesystem(spec.run.storage_path) if is_uri(spec.run.storage_path)
                                else (None, spec.run.storage_path))  # fmt: skip
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": payload, "plan": asdict(plan), "good": ray.put(checked.good), "shards": checked.shards,
                           "encoder": encoder},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=spec.scaling.ray_resources(),
            placement_strategy=spec.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=spec.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=spec.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
            callbacks=metric_loggers(spec),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # the workers print one line per log step
        ),
        datasets=datasets,
        # data.cache_encoded: every worker reads the encoded set whole and keeps its own samples
        dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
        torch_config=TorchConfig(backend="nccl" if spec.scaling.use_gpu else "gloo"),
    )
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"run {spec.run.name} finished without a checkpoint in {spec.run.storage_path}")
    final = export_final(result.checkpoint, spec, _provenance(spec, payload, checked, plan, result.checkpoint.path))
    print(f"[train] done in {seconds:.0f}s: final model in {final}", flush=True)
    return TrainingResult(final, result.checkpoint.path, dict(result.metrics or {}), seconds)


def main(stage: str, doc: str) -> None:
    """Command line of jobs.pretrain / jobs.finetune: a bad spec, dataset or path exits 2 with its message."""
    spec_job(doc, TrainJobSpec, lambda spec: run_training(spec, stage), "job spec YAML (see jobs/configs)",
             "train.lr=1e-4 scaling.num_workers=2")
