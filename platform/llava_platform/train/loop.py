"""The training loop of one worker, runnable in-process (tests, benchmarks, a GPU box without Ray).

    for metrics in run_steps(runner, micro_batches, ...):   # one StepMetrics per optimizer step
        ...                                                 # the caller logs, reports, checkpoints

Each optimizer step: `accumulation` micro-batches -> forward/backward -> clip -> optimizer and LR
schedule step. With several workers the step's loss, samples, tokens and FLOPs are summed over
all of them (one small all-reduce), so every worker reports the global figures.

`train()` is the whole thing on a list of samples in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from transformers import get_scheduler

from llava_platform.config import TrainSpec
from llava_platform.data.collate import collate
from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.samples import EncodedSample
from llava_platform.model.builder import ModelBundle, has_cls_token
from llava_platform.model.freeze import apply_freeze, param_groups
from llava_platform.train.flops import StepShape, mfu, training_flops
from llava_platform.train.muon import MuonWithAdamW
from llava_platform.train.plan import DataPlan, grouped_micro_batches
from llava_platform.train.strategy import DDPRunner, StepRunner, distributed_world, next_token_targets

__all__ = ["StepMetrics", "build_optimizer", "run_steps", "sample_batches", "train"]


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    loss: float  # mean over the step's micro-batches, on all workers
    lr: float  # the first optimizer group's learning rate after the step (the LLM's when it trains)
    grad_norm: float  # before clipping
    samples_per_s: float  # all workers
    tokens_per_s: float  # LLM positions (image tokens included), padding excluded, all workers
    mfu: float | None  # None without a peak FLOP/s to compare with

    def line(self) -> str:
        util = f" mfu {self.mfu:.1%}" if self.mfu is not None else ""
        return (f"step {self.step}/{self.total_steps} loss {self.loss:.4f} lr {self.lr:.2e} grad_norm {self.grad_norm:.3f} "
                f"{self.samples_per_s:.1f} samples/s {self.tokens_per_s:.0f} tokens/s{util}")  # fmt: skip

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def build_optimizer(model: torch.nn.Module, spec: TrainSpec, total_steps: int):
    """AdamW (or Muon + AdamW) over the trainable parameters (per-component lrs) and the spec's warmup + decay schedule."""
    muon = spec.optimizer == "muon"
    groups = param_groups(model, spec.lr, spec.projector_lr, spec.vision_lr, spec.weight_decay, muon=muon)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (check train.stage, train_llm, model.lora)")
    if muon:
        optimizer = MuonWithAdamW(groups, lr=spec.lr, betas=spec.adam_betas)
    else:  # on a GPU, fused: one kernel over all tensors; else torch's default (ZeRO-Offload steps on the CPU)
        on_gpu = next(model.parameters()).is_cuda and not spec.strategy.endswith("offload")
        optimizer = torch.optim.AdamW(groups, lr=spec.lr, betas=spec.adam_betas, fused=True if on_gpu else None)
    name = "constant_with_warmup" if spec.scheduler == "constant" else spec.scheduler
    decay = {"num_decay_steps": int(spec.decay_ratio * total_steps), "decay_type": "linear"}
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(spec.warmup_ratio * total_steps), num_training_steps=total_steps,
                              scheduler_specific_kwargs=decay if spec.scheduler == "warmup_stable_decay" else None)  # fmt: skip
    return optimizer, scheduler


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, pixel_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if device.type == "cuda":  # pinned: the copy runs asynchronously, behind the work already queued
        batch = {k: v.pin_memory() for k, v in batch.items()}
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(pixel_dtype)
    return out


def _shape(batch: dict[str, torch.Tensor], patches_per_image: int) -> StepShape:
    tokens = int(batch["attention_mask"].sum())
    images = 0
    if "pixel_values" in batch:
        pv = batch["pixel_values"]
        images = pv.shape[0] * (pv.shape[1] if pv.ndim == 5 else 1)  # anyres: every tile goes through the tower
    sequences = batch["input_ids"].shape[0]
    predicted = int((next_token_targets(batch["labels"]) != IGNORE_INDEX).sum())  # the LM head's positions
    return StepShape(sequences, tokens, tokens // sequences, images, patches_per_image, predicted)


def run_steps(runner: StepRunner, micro_batches: Iterator[list[EncodedSample]], *, pad_token_id: int,
              start_step: int, total_steps: int, accumulation: int,
              peak_tflops: float | None = None) -> Iterator[StepMetrics]:  # fmt: skip
    """Optimizer steps start_step+1 .. total_steps, each from `accumulation` micro-batches of this worker."""
    model = runner.module
    vision = model.config.vision_config
    patches_per_image = (vision.image_size // vision.patch_size) ** 2 + has_cls_token(vision)
    device = next(model.parameters()).device
    pixel_dtype = next(p for n, p in model.named_parameters() if "vision_tower" in n).dtype
    world = distributed_world()
    model.train()
    for step in range(start_step + 1, total_steps + 1):
        started = time.perf_counter()
        # The host never waits for the device inside a step: the loss is summed where it is computed, and
        # the counts come from the batch before it is copied, so the next micro-batch is collated and
        # queued while the device still runs this one.
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        counts = torch.zeros(4, dtype=torch.float64)  # micro-batches, samples, tokens, FLOPs
        for i in range(accumulation):
            try:
                samples = next(micro_batches)
            except StopIteration:
                raise RuntimeError(f"data ran out at step {step} of {total_steps}: the plan and the data disagree") from None
            batch = collate(samples, pad_token_id)
            shape = _shape(batch, patches_per_image)
            loss_sum += runner.forward_backward(_to_device(batch, device, pixel_dtype), last=i == accumulation - 1)
            counts += torch.tensor([1, shape.sequences, shape.text_tokens, training_flops(model, shape)], dtype=torch.float64)
        grad_norm = runner.step()
        # summed over micro-batches, then over workers: loss, micro-batches, samples, tokens, FLOPs
        totals = torch.cat([loss_sum.to("cpu", torch.float64).reshape(1), counts])
        if world > 1:
            totals = totals.to(device)  # nccl reduces GPU tensors only
            dist.all_reduce(totals)
        seconds = time.perf_counter() - started
        loss_sum, micro, samples_seen, tokens, flops = totals.tolist()
        yield StepMetrics(
            step=step,
            total_steps=total_steps,
            loss=loss_sum / micro,
            lr=runner.lr,
            grad_norm=grad_norm,
            samples_per_s=samples_seen / seconds,
            tokens_per_s=tokens / seconds,
            mfu=mfu(flops, seconds, world, peak_tflops) if peak_tflops else None,
        )
    model.eval()


def sample_batches(samples: list[EncodedSample], plan: DataPlan, rank: int, window: int,
                   start_step: int = 0) -> Iterator[list[EncodedSample]]:  # fmt: skip
    """This worker's micro-batches from an in-memory dataset (the Ray job streams the same order)."""
    order = plan.order()
    rows = (samples[order[p]] for p in plan.worker_positions(rank))
    return grouped_micro_batches(rows, plan, length=lambda s: len(s.input_ids), has_image=lambda s: s.pixel_values is not None,
                                 window_micro_batches=window, start_step=start_step)  # fmt: skip


def train(bundle: ModelBundle, samples: list[EncodedSample], spec: TrainSpec, *, peak_tflops: float | None = None,
          on_step: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:  # fmt: skip
    """Train bundle.model in place on one process; returns per-step metrics (on_step sees the logged ones)."""
    plan = DataPlan.for_spec(len(samples), spec, workers=1)
    apply_freeze(bundle.model, spec.stage, spec.train_vision_tower, spec.train_llm)
    optimizer, scheduler = build_optimizer(bundle.model, spec, plan.total_steps)
    runner = DDPRunner(bundle.model, optimizer, scheduler, plan.accumulation, spec.max_grad_norm, torch.float32)
    batches = sample_batches(samples, plan, rank=0, window=spec.length_grouping_window)
    history = []
    for metrics in run_steps(runner, batches, pad_token_id=bundle.tokenizer.pad_token_id, start_step=0,
                             total_steps=plan.total_steps, accumulation=plan.accumulation, peak_tflops=peak_tflops):  # fmt: skip
        history.append(metrics)
        if on_step is not None and (metrics.step % spec.log_every_steps == 0 or metrics.step == plan.total_steps):
            on_step(metrics)
    return history

