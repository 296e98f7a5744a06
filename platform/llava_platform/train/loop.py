"""The training loop of one worker, runnable in-process (tests, benchmarks, a GPU box without Ray).

    metrics = train(bundle, samples, spec.train, on_step=print)

Order: freeze for the stage -> optimizer groups + schedule -> grouped batches of this worker's
shard -> each optimizer step accumulates `accumulation_steps` micro-batches -> clip -> step.
The Ray Train worker (next) wraps this with the process group, checkpoints and reporting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from llava_platform.config import TrainSpec
from llava_platform.data.collate import collate, grouped_batches
from llava_platform.data.samples import EncodedSample
from llava_platform.model.builder import ModelBundle, has_cls_token
from llava_platform.model.freeze import apply_freeze, param_groups
from llava_platform.train.flops import StepShape, mfu, training_flops

__all__ = ["StepMetrics", "total_steps", "train"]


@dataclass
class StepMetrics:
    step: int
    loss: float  # mean over the step's micro-batches
    lr: float  # the first optimizer group's learning rate after the step (the LLM's when it trains)
    grad_norm: float  # before clipping
    samples_per_s: float
    tokens_per_s: float  # LLM positions (image tokens included), padding excluded
    mfu: float | None  # None without a peak FLOP/s to compare with

    def line(self, total: int) -> str:
        util = f" mfu {self.mfu:.1%}" if self.mfu is not None else ""
        return (f"step {self.step}/{total} loss {self.loss:.4f} lr {self.lr:.2e} grad_norm {self.grad_norm:.3f} "
                f"{self.samples_per_s:.1f} samples/s {self.tokens_per_s:.0f} tokens/s{util}")  # fmt: skip


def total_steps(num_samples: int, spec: TrainSpec) -> int:
    """Optimizer steps for spec.epochs over num_samples at the global batch size (at least 1)."""
    return max(1, math.floor(spec.epochs * num_samples / spec.global_batch_size))


def _shape(batch: dict[str, torch.Tensor], patches_per_image: int) -> StepShape:
    tokens = int(batch["attention_mask"].sum())
    images = 0
    if "pixel_values" in batch:
        pv = batch["pixel_values"]
        images = pv.shape[0] * (pv.shape[1] if pv.ndim == 5 else 1)  # anyres: every tile goes through the tower
    sequences = batch["input_ids"].shape[0]
    return StepShape(sequences, tokens, tokens // sequences, images, patches_per_image)


def train(bundle: ModelBundle, samples: list[EncodedSample], spec: TrainSpec, *, rank: int = 0, workers: int = 1,
          peak_tflops: float | None = None, on_step: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:  # fmt: skip
    """Train bundle.model in place on this worker's shard (samples[rank::workers]); returns per-step metrics."""
    model = bundle.model
    accumulation = spec.accumulation_steps(workers)
    steps = total_steps(len(samples), spec)
    apply_freeze(model, spec.stage, train_vision_tower=spec.train_vision_tower)
    optimizer = torch.optim.AdamW(
        param_groups(model, spec.lr, spec.projector_lr, spec.vision_lr, spec.weight_decay), lr=spec.lr
    )
    scheduler = get_scheduler(spec.scheduler if spec.scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=int(spec.warmup_ratio * steps), num_training_steps=steps)  # fmt: skip
    shard = samples[rank::workers]
    vision = model.config.vision_config
    patches_per_image = (vision.image_size // vision.patch_size) ** 2 + has_cls_token(vision)
    pad_id = bundle.tokenizer.pad_token_id
    device = model.device
    trainable = [p for p in model.parameters() if p.requires_grad]

    lengths = [len(s.input_ids) for s in shard]
    has_image = [s.pixel_values is not None for s in shard]

    def micro_batches():
        epoch = 0
        while True:  # epochs roll over until the step budget is spent
            order = grouped_batches(lengths, has_image, spec.micro_batch_size, seed=spec.seed + epoch)
            for indices in order:
                yield collate([shard[i] for i in indices], pad_id)
            epoch += 1

    batches = micro_batches()
    history: list[StepMetrics] = []
    model.train()
    for step in range(1, steps + 1):
        started = time.perf_counter()
        losses, flops, seen, tokens = [], 0.0, 0, 0
        for _ in range(accumulation):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
            loss = model(**batch).loss
            (loss / accumulation).backward()
            losses.append(loss.item())
            shape = _shape(batch, patches_per_image)
            flops += training_flops(model, shape)
            seen += shape.sequences
            tokens += shape.text_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        metrics = StepMetrics(
            step=step,
            loss=sum(losses) / len(losses),
            lr=optimizer.param_groups[0]["lr"],
            grad_norm=float(grad_norm),
            samples_per_s=seen / seconds,
            tokens_per_s=tokens / seconds,
            mfu=mfu(flops, seconds, 1, peak_tflops) if peak_tflops else None,
        )
        history.append(metrics)
        if on_step is not None and (step % spec.log_every_steps == 0 or step == steps):
            on_step(metrics)
    model.eval()
    return history
