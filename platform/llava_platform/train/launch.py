"""The driver of a training job: check the data, plan it, run Ray Train, write final/.

    python -m jobs.finetune --config jobs/configs/tiny_finetune.yaml [dotted.key=value ...]

Order: the spec -> Ray (the cluster named by RAY_ADDRESS / `ray job submit`, else ray.init()'s
default) -> the dataset check on Ray Data (fails naming the bad ids, or skips
them with the report) -> the plan -> one Ray Dataset per worker -> TorchTrainer.fit() (a run
with the same name and storage restarts from its latest checkpoint) -> <output_dir>/final/.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import ray.data
import ray.train
from ray.data import ExecutionOptions
from ray.train.torch import TorchConfig, TorchTrainer

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import TrainJobSpec, load
from llava_platform.data.pipeline import EncoderConfig, check_on_ray, encoded_dataset
from llava_platform.data.records import read_records
from llava_platform.model.builder import build_processor_for
from llava_platform.train.final import export_final
from llava_platform.train.loggers import metric_loggers
from llava_platform.train.plan import DataPlan
from llava_platform.train.setup import training_template
from llava_platform.train.worker import dataset_name, train_worker

__all__ = ["TrainingResult", "run_training", "main"]


@dataclass
class TrainingResult:
    final: Path  # <output_dir>/final: a complete HF checkpoint (or adapters, with merge_lora: false)
    checkpoint: str  # the run's last Ray Train checkpoint (path or URI)
    metrics: dict  # the last step's metrics, as rank 0 reported them
    seconds: float  # trainer.fit() wall time


def _local(path: str | None) -> str | None:
    """An existing local path made absolute; hub ids and URIs are left as they are."""
    if path is None or "://" in path or not os.path.exists(os.path.expanduser(path)):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _absolute(spec: TrainJobSpec) -> TrainJobSpec:
    """Paths as the driver sees them: Ray's controller, workers and data tasks run elsewhere (another
    cwd, another node), so every local path in the spec is made absolute before it travels."""
    storage = spec.run.storage_path
    storage = storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))
    parts = spec.model.components
    if parts is not None:
        parts = parts.model_copy(update={"vision_tower": _local(parts.vision_tower), "llm": _local(parts.llm)})
    model = spec.model.model_copy(update={"checkpoint": _local(spec.model.checkpoint), "components": parts,
                                          "original_checkpoint": _local(spec.model.original_checkpoint)})  # fmt: skip
    return spec.model_copy(update={
        "model": model,
        "data": spec.data.model_copy(update={"path": _local(spec.data.path), "image_folder": _local(spec.data.image_folder)}),
        "train": spec.train.model_copy(update={"output_dir": os.path.abspath(spec.train.output_dir),
                                               "deepspeed_config": _local(spec.train.deepspeed_config)}),
        "run": spec.run.model_copy(update={"storage_path": storage}),
    })  # fmt: skip


def run_training(spec: TrainJobSpec, stage: str) -> TrainingResult:
    if spec.train.stage != stage:
        raise ValueError(f"train.stage is {spec.train.stage!r} but this is jobs.{stage}: run jobs.{spec.train.stage}, "
                         f"or set train.stage: {stage}")  # fmt: skip
    spec = _absolute(spec)
    # The workers rebuild the spec from this JSON: a spec that does not survive the trip fails here,
    # once, rather than in every restarted worker group.
    payload = spec.model_dump(mode="json")
    TrainJobSpec.model_validate(payload)
    if not ray.is_initialized():
        ray.init()
    quiet = ray.data.DataContext.get_current()  # carried to the workers by Ray Train
    quiet.enable_progress_bars = False
    quiet.print_on_execution_start = False

    processor = build_processor_for(spec.model)
    template = training_template(spec)
    encoder = EncoderConfig.for_data(spec.data, processor, template).shared()  # one copy in the object store
    if not Path(spec.data.path).is_file():
        raise FileNotFoundError(f"data.path: {spec.data.path} is not a file")
    checked = check_on_ray(list(read_records(spec.data.path)), encoder, spec.data)
    report = checked.report
    print(f"[data] template {template}\n{report.format()}", flush=True)
    report.enforce(spec.data.on_bad_record, spec.data.max_untrainable_fraction)
    if report.problems:
        print(f"[data] skipping {len(report.problems)} bad records (data.on_bad_record: skip): {', '.join(report.bad_ids)}")

    workers = spec.scaling.num_workers
    plan = DataPlan.for_spec(len(checked.good), spec.train, workers)
    datasets, replays = {}, {}
    for rank in range(workers):
        records = plan.worker_records(rank)  # positions in checked.good, in step order
        if checked.encoded is not None:  # data.cache_encoded: the check's rows, replayed by the worker in this order
            datasets[dataset_name(rank)] = checked.encoded
            replays[rank] = [checked.indices[p] for p in records]
        else:
            datasets[dataset_name(rank)] = encoded_dataset([checked.good[p] for p in records], encoder, spec.data)
            replays[rank] = None
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": payload, "plan": asdict(plan), "replays": replays},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=spec.scaling.ray_resources(),
            placement_strategy=spec.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=spec.run.name,
            storage_path=spec.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=spec.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
            callbacks=metric_loggers(spec),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # the workers print one line per log step
        ),
        datasets=datasets,
        # each worker reads its own dataset, in plan order: no split, order preserved
        dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
        torch_config=TorchConfig(backend="nccl" if spec.scaling.use_gpu else "gloo"),
    )
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"run {spec.run.name} finished without a checkpoint in {spec.run.storage_path}")
    final = export_final(result.checkpoint, spec)
    print(f"[train] done in {seconds:.0f}s: final model in {final}", flush=True)
    return TrainingResult(final, result.checkpoint.path, dict(result.metrics or {}), seconds)


def main(stage: str, doc: str) -> None:
    """Command line of jobs.pretrain / jobs.finetune: a bad spec, dataset or path exits 2 with its message."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="job spec YAML (see jobs/configs)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.lr=1e-4 scaling.num_workers=2")
    args = parser.parse_args()

    @user_errors_exit
    def run() -> None:
        quiet_transformers()
        run_training(load(args.config, TrainJobSpec, args.overrides), stage)

    run()
