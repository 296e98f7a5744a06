"""One path from data to a served model: stage 1, stage 2, evaluation, then Serve, only if the evaluation passes.

    python -m jobs.pipeline --config jobs/configs/tiny_pipeline.yaml

    pretrain:  {config: jobs/configs/tiny_pretrain.yaml, overrides: [...]}     -> its train.output_dir/final
    finetune:  {config: jobs/configs/tiny_finetune.yaml, overrides: [...]}     model.checkpoint = stage 1's final
    evaluate:  {config: jobs/configs/eval/scenes.yaml, metric: accuracy, threshold: 0.8}   on stage 2's final
    serve:     {config: serve_apps/tiny.yaml}                                  its first model = stage 2's final

Each step resumes where it stopped: a stage whose final/ exists is not run again (one stopped midway resumes from
its run's checkpoints, as jobs.finetune does), the evaluation's batch job answers only what it has not, and a model
is deployed (Serve's API, the app the Serve config names) only when the evaluation's overall score meets the
threshold; otherwise the job reports the score and fails (exit 1) with nothing deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import Field

from llava_platform.config import StrictModel, TrainJobSpec, load
from llava_platform.storage import Storage

__all__ = ["StageStep", "EvaluateStep", "ServeStep", "PipelineSpec", "PipelineFailed", "TrainedStages", "train_stages",
           "run_pipeline"]


class StageStep(StrictModel):
    """A training stage: a job spec and overrides to it (model.checkpoint of stage 2 is set to stage 1's final/)."""

    config: str = Field(description="the stage's job spec (jobs/configs/*_pretrain.yaml / *_finetune.yaml)")
    overrides: list[str] = Field(default_factory=list, description="dotted.key=value overrides of that spec")

    def spec(self, extra: Sequence[str] = ()) -> TrainJobSpec:
        """The stage's job spec with its overrides, then `extra`, applied."""
        return load(self.config, TrainJobSpec, [*self.overrides, *extra])


class EvaluateStep(StrictModel):
    """The gate before serving: an evaluation task on stage 2's model, and the score it must reach."""

    config: str = Field(description="the evaluation spec (jobs/configs/eval/*.yaml)")
    overrides: list[str] = Field(default_factory=list, description="dotted.key=value overrides of that spec")
    metric: str = Field("accuracy", description="the key of the task's overall scores compared (accuracy, f1, relative ...)")
    threshold: float = Field(description="the model is served only if that score is at least this")


class ServeStep(StrictModel):
    """Where the model goes: a Serve config whose first application's first model becomes stage 2's final/."""

    config: str = Field(description="a Serve config (serve_apps/*.yaml)")


class PipelineSpec(StrictModel):
    """`jobs.pipeline`: stage 1, stage 2, evaluation, deployment."""

    pretrain: StageStep
    finetune: StageStep
    evaluate: EvaluateStep
    serve: ServeStep


class PipelineFailed(RuntimeError):
    """The evaluation did not reach the threshold: nothing was deployed."""


def _final_done(spec: TrainJobSpec) -> str | None:
    """The stage's final/ if a run wrote it whole (its llava_platform.yaml is written last), else None."""
    final = Storage.join(spec.train.output_dir, "final")
    return final if Storage(spec.storage).exists(Storage.join(final, "llava_platform.yaml")) else None


@dataclass
class TrainedStages:
    first: str  # stage 1's final/ (a path, or a URI when its train.output_dir is one)
    final: str  # stage 2's final/: the model to evaluate and serve
    seconds: dict[str, float]  # {"pretrain": s, "finetune": s}: each stage's Ray Train fit time, 0 for one done before


def _stage(step: StageStep, stage: str, extra: list[str], log) -> tuple[str, float]:
    from llava_platform.train.launch import absolute_spec, run_training

    spec = absolute_spec(step.spec(extra))
    if (final := _final_done(spec)) is not None:
        log(f"[pipeline] {stage}: done before ({final})")
        return final, 0.0
    log(f"[pipeline] {stage}: {step.config}")
    result = run_training(spec, stage)
    return str(result.final), result.seconds


def train_stages(pretrain: StageStep, finetune: StageStep, log=print) -> TrainedStages:
    """Stage 1, then stage 2 from stage 1's final/ (its model.checkpoint); a stage whose final/ exists is not run
    again, one stopped midway resumes from its run's checkpoints."""
    first, first_seconds = _stage(pretrain, "pretrain", [], log)
    final, final_seconds = _stage(finetune, "finetune", [f"model.checkpoint={first}"], log)
    return TrainedStages(first, final, {"pretrain": first_seconds, "finetune": final_seconds})


def _serve_config(step: ServeStep, checkpoint: str) -> dict[str, Any]:
    config = yaml.safe_load(Path(step.config).read_text())
    app = config["applications"][0]
    app["args"]["models"][0]["checkpoint"] = checkpoint
    return config


def deploy(config: dict[str, Any]) -> None:
    """Deploy a Serve config's applications as `serve deploy` would, from this driver (Serve outlives it)."""
    from ray import serve

    from llava_platform.serve.app import build_app

    serve.start(http_options=config.get("http_options"), proxy_location=config.get("proxy_location"))
    for app in config["applications"]:
        serve.run(build_app(app["args"]), name=app["name"], route_prefix=app.get("route_prefix", "/"), blocking=False)


def run_pipeline(spec: PipelineSpec, log=print) -> dict[str, Any]:
    """Runs (or resumes) the four steps; returns {final, metrics, served}; PipelineFailed below the threshold."""
    # torch and the jobs' modules are imported before Ray is joined: importing torch after ray.init in a job's
    # driver was seen to fail ("oneMKL FATAL ERROR: Cannot load libtorch_cpu.so") or to lose the working directory
    from llava_platform.cluster import connect
    from llava_platform.eval.job import run_evaluation
    from llava_platform.eval.spec import EvalJobSpec
    from llava_platform.train import launch  # noqa: F401

    ray_of_its_own = connect().address == "local"  # no cluster to join: the served model ends with this job
    final = train_stages(spec.pretrain, spec.finetune, log).final
    log(f"[pipeline] evaluate: {spec.evaluate.config} on {final}")
    metrics = run_evaluation(load(spec.evaluate.config, EvalJobSpec, [*spec.evaluate.overrides, f"model.checkpoint={final}"]), log)
    score = metrics["scores"]["all"].get(spec.evaluate.metric)
    if score is None:
        raise ValueError(f"evaluate.metric: the task reports no {spec.evaluate.metric!r}; it has "
                         f"{sorted(metrics['scores']['all'])}")  # fmt: skip
    if score < spec.evaluate.threshold:
        raise PipelineFailed(f"[pipeline] not served: {spec.evaluate.metric} {score:.4g} < evaluate.threshold "
                             f"{spec.evaluate.threshold} (model {final})")  # fmt: skip
    config = _serve_config(spec.serve, final)
    deploy(config)
    name = config["applications"][0]["args"]["models"][0]["name"]
    log(f"[pipeline] served: {final} as model {name!r} ({spec.evaluate.metric} {score:.4g} >= {spec.evaluate.threshold})")
    if ray_of_its_own:
        log("[pipeline] this job started its own Ray, and Serve stops with it: run `ray start --head` first (or submit "
            "to a cluster) to keep the model served")
    return {"final": final, "metrics": metrics, "served": name}
