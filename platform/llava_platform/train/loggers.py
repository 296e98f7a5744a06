"""Optional experiment trackers (train.loggers): TensorBoard, MLflow, Weights & Biases.

They run as a Ray Train callback on the controller, after every ray.train.report, with rank 0's
metrics; nothing in the workers changes. Each tracker's package is needed only when it is
named: `pip install tensorboard` / `mlflow` / `wandb`.

    tensorboard  event files in <output_dir>/tensorboard
    mlflow       the MLFLOW_TRACKING_URI server, else a file store in <output_dir>/mlruns
    wandb        project = run.name; WANDB_MODE=offline keeps it local

Steps trained again after a restart (from the last checkpoint, after a lost worker or a rerun of
a stopped job): TensorBoard shows each step once, with the values of the run that went on (a new
writer with purge_step hides what earlier writers logged from that step on); MLflow keeps both
values of such a step; W&B keeps the first within a job (it drops steps below its last), and a
rerun starts a new W&B run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from llava_platform.config import TrainJobSpec

__all__ = ["MetricLogger", "metric_loggers", "PACKAGES"]

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
LOGGED = ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu")


class MetricLogger(UserCallback):
    def __init__(self, kind: str, output_dir: str, run_name: str, params: dict[str, Any]):
        self.kind, self.output_dir, self.run_name, self.params = kind, Path(output_dir), run_name, params
        self._writer = None  # opened lazily, in the controller process
        self._last_step = 0

    def _open(self, first_step: int):
        if self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=first_step)
        if self.kind == "mlflow":
            import mlflow

            mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", (self.output_dir / "mlruns").as_uri()))
            mlflow.set_experiment(self.run_name)
            mlflow.start_run()
            mlflow.log_params(self.params)
            return mlflow
        import wandb

        return wandb.init(project=self.run_name, config=self.params, dir=str(self.output_dir))

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        values = {k: float(metrics[0][k]) for k in LOGGED if metrics and metrics[0].get(k) is not None}
        if not values:
            return
        step = int(metrics[0]["step"])
        if self.kind == "tensorboard" and self._writer is not None and step <= self._last_step:
            self._writer.close()  # the worker group restarted from a checkpoint: a new writer purges from here
            self._writer = None
        self._writer = self._writer or self._open(step)
        self._last_step = step
        if self.kind == "tensorboard":
            for key, value in values.items():
                self._writer.add_scalar(f"train/{key}", value, step)
            self._writer.flush()
        elif self.kind == "mlflow":
            self._writer.log_metrics(values, step=step)
        else:
            self._writer.log(values, step=step)


def metric_loggers(spec: TrainJobSpec) -> list[MetricLogger]:
    """One callback per tracker the spec names; a missing package is an error before training starts."""
    missing = [k for k in spec.train.loggers if importlib.util.find_spec(PACKAGES[k]) is None]
    if missing:
        raise ValueError(f"train.loggers: {missing} named but not installed; pip install {' '.join(PACKAGES[k] for k in missing)}")
    params = {"stage": spec.train.stage, "lr": spec.train.lr, "global_batch_size": spec.train.global_batch_size,
              "strategy": spec.train.strategy, "workers": spec.scaling.num_workers}  # fmt: skip
    return [MetricLogger(kind, spec.train.output_dir, spec.run.name, params) for kind in spec.train.loggers]
