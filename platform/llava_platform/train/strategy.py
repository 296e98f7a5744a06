"""How one worker runs a step, whatever the parallelism: DDP or DeepSpeed ZeRO behind one small interface.

    runner = make_runner(model, optimizer, scheduler, train_spec, accumulation, compute_dtype)
    for i in range(accumulation):
        loss_sum = runner.forward_backward(batch_i, scale, last=i == accumulation - 1)
    grad_norm = runner.step()

Both compute the loss with `answer_loss_sum` (the LM head only where a label is) and back-propagate
`loss_sum * scale`, where scale = workers / (labelled tokens of the whole step: every micro-batch of
every worker). Gradients averaged over the workers (DDP, DeepSpeed) are then the step's mean over
its labelled tokens, however the step is cut into micro-batches and workers: a token in a short
micro-batch weighs what a token in a long one does (transformers' `num_items_in_batch`). Both clip
to train.max_grad_norm and step the optimizer and the LR schedule once per optimizer step. Neither
needs Ray: the process group is whatever torch.distributed was initialised with (Ray Train's
TorchConfig, torchrun, or none).
"""

from __future__ import annotations

import contextlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llava_platform.config import TrainSpec
from llava_platform.data.encode import IGNORE_INDEX

__all__ = [
    "StepRunner", "DDPRunner", "DeepSpeedRunner", "make_runner", "deepspeed_config", "distributed_world",
    "answer_loss_sum", "next_token_targets", "labelled_tokens",
]  # fmt: skip


def distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels (B, T) -> the label each position predicts (B, T): labels[b, t + 1], IGNORE_INDEX where none is.
    The positions that carry one are those the LM head runs on (answer_loss_sum) and is counted for (MFU)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def labelled_tokens(labels: torch.Tensor) -> int:
    """Positions of a (B, T) batch that carry a next-token label: what the step's loss is averaged over."""
    return int((next_token_targets(labels) != IGNORE_INDEX).sum())


def answer_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled positions (float32): transformers' causal-LM loss
    before its mean, with the LM head run on those positions only. The caller divides by the labelled
    tokens of the whole optimizer step (see the module docstring).

    The (B, T) mask of next-token targets that carry a label is passed as `logits_to_keep`, so the
    model returns logits (N, V) for those N positions instead of (B, T, V). Image tokens and prompts
    carry no label: ~85% of the positions of the tiny preset's QA, ~90% of LLaVA-1.5's (576 image
    tokens of ~650), whose float32 logits would be 1.3 GB per micro-batch of 16 at a 32 000-word
    vocabulary. `model` is whatever wraps the LLaVA model (DDP, a DeepSpeed engine, peft): each passes
    the keyword arguments through. use_cache=False: the LLM's config (saved with the model, for
    generation) says True, and a training forward has no use for a KV cache.

    The attention mask is left out: a training batch is right-padded (data.collate), and in a causal
    LM a position sees only those before it, so no real token ever sees a pad and every labelled
    position's logits are the same with or without the mask (pads carry no label). Without it SDPA
    runs causal (its flash kernel) instead of the memory-efficient kernel over a (B, 1, T, T) mask,
    and transformers skips the device -> host read of the mask that looks for padding each forward.
    """
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "attention_mask")}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


class StepRunner(Protocol):
    module: nn.Module  # the model itself (unwrapped): FLOPs, saving

    def forward_backward(self, batch: dict[str, torch.Tensor], scale: torch.Tensor | float, last: bool) -> torch.Tensor: ...
    def step(self) -> float: ...
    @property
    def lr(self) -> float: ...
    def save_state(self, directory: Path, rank: int) -> None: ...
    def load_state(self, directory: Path) -> None: ...


class DDPRunner:
    """torch DDP (or a plain module on one process); `compute_dtype` below float32 runs under autocast."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, max_grad_norm: float,
                 compute_dtype: torch.dtype):  # fmt: skip
        self.module = model
        # every trainable parameter gets a gradient in every backward: micro-batches without images run the tower
        # on a blank one (data.collate's filler) and the tower's layers past the features it gives are frozen
        # (model.freeze), so DDP needs no find_unused_parameters (an extra pass over the graph per step)
        self.model = DistributedDataParallel(model) if distributed_world() > 1 else model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.checked = False  # the first step checks that every trainable parameter got a gradient
        device = next(model.parameters()).device
        self.autocast = (torch.autocast(device.type, dtype=compute_dtype) if compute_dtype != torch.float32
                         else contextlib.nullcontext())  # fmt: skip

    def forward_backward(self, batch: dict[str, torch.Tensor], scale: torch.Tensor | float, last: bool) -> torch.Tensor:
        sync = contextlib.nullcontext() if last or self.model is self.module else self.model.no_sync()
        with sync:
            with self.autocast:
                loss_sum = answer_loss_sum(self.model, batch)
            (loss_sum * scale).backward()
        return loss_sum.detach()

    def step(self) -> float:
        if not self.checked:
            self._check_every_parameter_trained()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _check_every_parameter_trained(self) -> None:
        """A trainable parameter without a gradient after a step's backward passes is a bug, not a choice: DDP would
        leave its bucket un-averaged (other ranks' gradients lost) and stop at the next step."""
        idle = [name for name, p in self.trainable.items() if p.grad is None]
        if idle:
            raise RuntimeError(f"{len(idle)} trainable parameters got no gradient in the first step (e.g. {idle[:3]}): "
                               "every trainable parameter must take part in every step (see model.freeze)")  # fmt: skip
        self.checked = True

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save_state(self, directory: Path, rank: int) -> None:
        if rank == 0:  # DDP keeps identical optimizer state on every rank
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       directory / "optimizer.pt")  # fmt: skip

    def load_state(self, directory: Path) -> None:
        state = torch.load(directory / "optimizer.pt", map_location=next(self.module.parameters()).device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedRunner:
    """A DeepSpeed engine: it accumulates, clips and steps at the accumulation boundary (fp16: scales the loss too)."""

    TAG = "state"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, config: dict[str, Any]):
        import deepspeed

        self.module = model
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.zero_stage = config["zero_optimization"]["stage"]

    def forward_backward(self, batch: dict[str, torch.Tensor], scale: torch.Tensor | float, last: bool) -> torch.Tensor:
        loss_sum = answer_loss_sum(self.engine, batch)
        self.engine.backward(loss_sum * scale, scale_wrt_gas=False)  # scale already averages over the whole step
        self.engine.step()  # a no-op for the optimizer until the accumulation boundary
        return loss_sum.detach()

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (ZeRO-3 gathers its partitions: every rank must call this)."""
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    def save_state(self, directory: Path, rank: int) -> None:
        # every rank writes its own optimizer partition (file names carry the rank); rank 0 the rest
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=self.TAG)

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag=self.TAG)
        if path is None:
            raise FileNotFoundError(f"{directory / 'deepspeed'}: no DeepSpeed state to resume from")


def deepspeed_config(train: TrainSpec, accumulation: int, compute_dtype: torch.dtype, hidden_size: int,
                     workers: int) -> dict[str, Any]:  # fmt: skip
    """The shipped (or the user's) DeepSpeed JSON with every "auto" filled from the spec."""
    if train.deepspeed_config:
        source = Path(train.deepspeed_config)
        text = source.read_text()
    else:
        source = Path(f"deepspeed_configs/{train.strategy}.json")
        text = resources.files("llava_platform.train").joinpath(str(source)).read_text()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"train.deepspeed_config {source}: not valid JSON: {e}") from e
    gpu = torch.cuda.is_available()
    auto = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": train.micro_batch_size * accumulation * workers,
        "gradient_clipping": train.max_grad_norm,
        "bf16.enabled": compute_dtype == torch.bfloat16,
        "fp16.enabled": compute_dtype == torch.float16,
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
        "zero_optimization.offload_optimizer.pin_memory": gpu,  # pinning needs CUDA
        "zero_optimization.offload_param.pin_memory": gpu,
    }
    _fill_auto(config, auto, source)
    if config["train_batch_size"] != train.global_batch_size:
        raise ValueError(f"{source}: train_batch_size {config['train_batch_size']} != train.global_batch_size "
                         f"{train.global_batch_size}; leave it 'auto'")  # fmt: skip
    if "optimizer" in config or "scheduler" in config:
        raise ValueError(f"{source}: remove 'optimizer' / 'scheduler': the platform builds them from train.* "
                         "(per-component learning rates, the spec's schedule)")  # fmt: skip
    # a torch optimizer with ZeRO-Offload is allowed (DeepSpeed's CPUAdam would need a compiled op)
    config.setdefault("zero_force_ds_cpu_optimizer", False)
    return config


def _fill_auto(node: dict[str, Any], auto: dict[str, Any], source: Path, prefix: str = "") -> None:
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _fill_auto(value, auto, source, dotted + ".")
        elif value == "auto":
            if dotted not in auto:
                raise ValueError(f"{source}: {dotted} is 'auto' but the platform has no value for it; set a number")
            node[key] = auto[dotted]


def make_runner(model: nn.Module, optimizer, scheduler, train: TrainSpec, accumulation: int,
                compute_dtype: torch.dtype) -> StepRunner:  # fmt: skip
    if train.strategy == "ddp":
        return DDPRunner(model, optimizer, scheduler, train.max_grad_norm, compute_dtype)
    hidden = model.config.text_config.hidden_size
    config = deepspeed_config(train, accumulation, compute_dtype, hidden, distributed_world())
    return DeepSpeedRunner(model, optimizer, scheduler, config)

