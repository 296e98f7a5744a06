"""What one worker builds before its first step, in order: model for the stage -> optimizer -> runner.

    setup = build_training(spec, plan, device, resume=checkpoint_dir_or_None)
    setup.bundle, setup.runner, setup.start_step

Precision: DDP keeps float32 master weights and autocasts to model.dtype; DeepSpeed holds the
weights in model.dtype itself (its optimizer keeps float32 copies). A QLoRA base stays 4-bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from llava_platform.config import TrainJobSpec
from llava_platform.model.builder import build_model, model_template
from llava_platform.model.bundle import DTYPES, ModelBundle
from llava_platform.model.freeze import apply_freeze
from llava_platform.model.lora import apply_lora, load_adapter_weights
from llava_platform.storage import Storage, is_uri
from llava_platform.train.loop import build_optimizer
from llava_platform.train.plan import DataPlan
from llava_platform.train.state import MODEL_DIR, read_trainer_state
from llava_platform.train.strategy import StepRunner, make_runner

__all__ = ["TrainingSetup", "build_training", "compile_layers", "training_template", "local_model_source"]

RESOLVED_FIELDS = ("template", "image_mode", "image_grid_pinpoints", "vision_feature_layer", "vision_feature_select_strategy")


@dataclass
class TrainingSetup:
    bundle: ModelBundle  # bundle.model: the (LoRA-wrapped) model being trained; bundle.spec: the job's model spec
    runner: StepRunner
    start_step: int  # optimizer steps already done (0, or the resumed checkpoint's step)
    frozen_summary: dict[str, str]  # component -> 'trainable/total' parameters, for the log


def _load_weights_dtype(spec: TrainJobSpec) -> str:
    if spec.train.strategy != "ddp" or spec.model.quantization != "none":
        return spec.model.dtype
    return "float32"


def training_template(spec: TrainJobSpec) -> str:
    """The template the job's records are encoded in: data.template, else the model's own."""
    return spec.data.template or model_template(spec.model)


def _answer_template(spec: TrainJobSpec) -> str | None:
    """The template the trained model answers in: a finetune's data.template (its processor's chat template
    and saved spec follow); otherwise the model's. Stage 1's `plain` is a captioning format, never kept."""
    if spec.train.stage == "finetune" and spec.data.template is not None:
        return spec.data.template
    return spec.model.template


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile every transformer layer in place (LLM decoder and vision encoder layers: the modules
    transformers checkpoints); the state dict keeps its keys. The layers of one model share their code,
    so each kind compiles once per set of input shapes."""
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.compile()


def local_model_source(spec: TrainJobSpec, weights: bool = True) -> TrainJobSpec:
    """The spec with a model.checkpoint on an object store (s3://, gs://: stage 1's final/ for stage 2) replaced by
    this node's copy of it (Storage.local_checkpoint, once per node); `weights=False`: its processor and spec files
    only (the driver's data check)."""
    if spec.model.checkpoint is None or not is_uri(spec.model.checkpoint):
        return spec
    local = Storage(spec.storage).local_checkpoint(spec.model.checkpoint, weights)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"checkpoint": local})})


def build_training(spec: TrainJobSpec, plan: DataPlan, device: torch.device, resume: Path | None = None) -> TrainingSetup:
    spec = local_model_source(spec)
    model_spec = spec.model.model_copy(update={"lora": None, "dtype": _load_weights_dtype(spec), "template": _answer_template(spec)})
    full_restore = resume is not None and spec.train.strategy == "ddp" and spec.model.lora is None
    if full_restore:  # the checkpoint's weights are the model (DeepSpeed restores its own module state below)
        model_spec = model_spec.model_copy(update={"checkpoint": str(resume / MODEL_DIR), "preset": None,
                                                   "components": None, "original_checkpoint": None, "init": "pretrained"})  # fmt: skip
    torch.manual_seed(spec.train.seed)  # the same random init (tiny, new projectors) on every worker
    bundle = build_model(model_spec, device=device)
    model = bundle.model
    if spec.model.lora is not None:
        model = apply_lora(model, spec.model.lora)
        if resume is not None and spec.train.strategy == "ddp":
            load_adapter_weights(model, resume / MODEL_DIR)
    summary = apply_freeze(model, spec.train.stage, spec.train.train_vision_tower, spec.train.trains_llm)
    if spec.train.gradient_checkpointing:
        # non-reentrant: works with a frozen LLM below a trained projector, and with DDP
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                              every_n_layers=spec.train.checkpoint_every_n_layers)  # fmt: skip
    if spec.train.compile:
        compile_layers(model)
    if spec.model.quantization == "none":
        model.to(device)
    optimizer, scheduler = build_optimizer(model, spec.train, plan.total_steps)
    runner = make_runner(model, optimizer, scheduler, spec.train, plan.accumulation, DTYPES[spec.model.dtype])
    start = 0
    if resume is not None:
        start = read_trainer_state(resume, plan, spec.train.optimizer)["step"]
        runner.load_state(resume)
    # saved with every checkpoint: the job's model spec (its source, LoRA, dtype) with the input handling resolved
    resolved = {k: getattr(bundle.spec, k) for k in RESOLVED_FIELDS}
    return TrainingSetup(replace(bundle, model=model, spec=spec.model.model_copy(update=resolved)), runner, start, summary)
