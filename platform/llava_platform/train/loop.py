"""The training loop of one worker, runnable in-process (tests, benchmarks, a GPU box without Ray).

    for metrics in run_steps(runner, micro_batches, ...):   # one StepMetrics per optimizer step
        ...                                                 # the caller logs, reports, checkpoints

Each optimizer step: `accumulation` micro-batches, collated first so the step's labelled tokens are
known (summed over the workers: one small all-reduce) -> forward/backward of each, its summed loss
scaled by workers / labelled tokens (train/strategy.py) -> clip -> optimizer and LR schedule step.
Pixels arrive as uint8 and are normalised on the device. The step's loss, samples, tokens and FLOPs
are summed over all workers (a second small all-reduce), so every worker reports the global figures.

`train()` is the whole thing on a list of samples in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from transformers import ProcessorMixin, get_scheduler

from llava_platform.config import TrainSpec
from llava_platform.data.collate import collate
from llava_platform.data.images import PixelNormalizer
from llava_platform.data.samples import EncodedSample, blank_sample
from llava_platform.model.assemble import has_cls_token
from llava_platform.model.bundle import ModelBundle
from llava_platform.model.freeze import apply_freeze, param_groups
from llava_platform.train.flops import StepShape, mfu, training_flops
from llava_platform.train.muon import MuonWithAdamW
from llava_platform.train.plan import DataPlan
from llava_platform.train.strategy import DDPRunner, StepRunner, distributed_world, labelled_tokens

__all__ = ["StepMetrics", "build_optimizer", "run_steps", "sample_batches", "train"]


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    loss: float  # mean over the step's labelled tokens, on all workers
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


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, normalize: PixelNormalizer,
               pixel_dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    if device.type == "cuda":  # pinned: the copy runs asynchronously, behind the work already queued
        batch = {k: v.pin_memory() for k, v in batch.items()}
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "pixel_values" in out:
        out["pixel_values"] = normalize(out["pixel_values"], pixel_dtype)
    return out


def _shape(batch: dict[str, torch.Tensor], patches_per_image: int) -> StepShape:
    tokens = int(batch["attention_mask"].sum())
    images = 0
    if "pixel_values" in batch:
        pv = batch["pixel_values"]
        images = pv.shape[0] * (pv.shape[1] if pv.ndim == 5 else 1)  # anyres: every tile goes through the tower
    sequences = batch["input_ids"].shape[0]
    predicted = labelled_tokens(batch["labels"])  # the LM head's positions
    return StepShape(sequences, tokens, tokens // sequences, images, patches_per_image, predicted)


def _step_tokens(batches: list[dict[str, torch.Tensor]], device: torch.device, world: int) -> torch.Tensor:
    """Labelled tokens of the whole step, all workers (float32, on `device`: nccl reduces GPU tensors, and the
    host need not wait for it)."""
    total = torch.tensor([float(sum(labelled_tokens(b["labels"]) for b in batches))], device=device)
    if world > 1:
        dist.all_reduce(total)
    return total.clamp(min=1)


def run_steps(runner: StepRunner, micro_batches: Iterator[list[EncodedSample]], *, processor: ProcessorMixin,
              start_step: int, total_steps: int, accumulation: int,
              peak_tflops: float | None = None) -> Iterator[StepMetrics]:  # fmt: skip
    """Optimizer steps start_step+1 .. total_steps, each from `accumulation` micro-batches of this worker."""
    model = runner.module
    vision = model.config.vision_config
    patches_per_image = (vision.image_size // vision.patch_size) ** 2 + has_cls_token(vision)
    device = next(model.parameters()).device
    pixel_dtype = next(p for n, p in model.named_parameters() if "vision_tower" in n).dtype
    normalize, filler = PixelNormalizer(processor.image_processor), blank_sample(processor)
    pad_token_id = processor.tokenizer.pad_token_id
    world = distributed_world()
    model.train()
    for step in range(start_step + 1, total_steps + 1):
        started = time.perf_counter()
        # The host never waits for the device inside a step: the loss is summed where it is computed, and
        # the counts come from the batches before they are copied, so the next micro-batch is queued
        # while the device still runs this one.
        batches, counts = [], torch.zeros(3, dtype=torch.float64)  # samples, tokens, FLOPs
        for _ in range(accumulation):
            try:
                samples = next(micro_batches)
            except StopIteration:
                raise RuntimeError(f"data ran out at step {step} of {total_steps}: the plan and the data disagree") from None
            batches.append(collate(samples, pad_token_id, filler))
            shape = _shape(batches[-1], patches_per_image)
            counts += torch.tensor([len(samples), shape.text_tokens, training_flops(model, shape)], dtype=torch.float64)
        step_tokens = _step_tokens(batches, device, world)
        scale = world / step_tokens  # the summed loss of a micro-batch, scaled to the step's per-token mean
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        for i, batch in enumerate(batches):
            loss_sum += runner.forward_backward(_to_device(batch, device, normalize, pixel_dtype), scale,
                                                last=i == accumulation - 1)  # fmt: skip
        grad_norm = runner.step()
        # summed over workers: loss, samples, tokens, FLOPs
        totals = torch.cat([loss_sum.to("cpu", torch.float64).reshape(1), counts])
        if world > 1:
            totals = totals.to(device)  # nccl reduces GPU tensors only
            dist.all_reduce(totals)
        seconds = time.perf_counter() - started
        loss_total, samples_seen, tokens, flops = totals.tolist()
        yield StepMetrics(
            step=step,
            total_steps=total_steps,
            loss=loss_total / float(step_tokens),
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
    lengths = [len(s.input_ids) for s in samples]
    has_image = [s.pixel_values is not None for s in samples]
    for batch in plan.micro_batches(rank, lengths, has_image, window, start_step):
        yield [samples[i] for i in batch]


def train(bundle: ModelBundle, samples: list[EncodedSample], spec: TrainSpec, *, peak_tflops: float | None = None,
          on_step: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:  # fmt: skip
    """Train bundle.model in place on one process; returns per-step metrics (on_step sees the logged ones)."""
    plan = DataPlan.for_spec(len(samples), spec, workers=1)
    apply_freeze(bundle.model, spec.stage, spec.train_vision_tower, spec.train_llm)
    optimizer, scheduler = build_optimizer(bundle.model, spec, plan.total_steps)
    runner = DDPRunner(bundle.model, optimizer, scheduler, spec.max_grad_norm, torch.float32)
    batches = sample_batches(samples, plan, rank=0, window=spec.length_grouping_window)
    history = []
    for metrics in run_steps(runner, batches, processor=bundle.processor, start_step=0,
                             total_steps=plan.total_steps, accumulation=plan.accumulation, peak_tflops=peak_tflops):  # fmt: skip
        history.append(metrics)
        if on_step is not None and (metrics.step % spec.log_every_steps == 0 or metrics.step == plan.total_steps):
            on_step(metrics)
    return history

