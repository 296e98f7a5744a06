"""Model FLOPs of a LLaVA training step, for tokens/s -> MFU.

Per token through N weights: forward 2N; backward 4N when they train (activation + weight
gradients), 2N when frozen but gradients pass through them (activation gradients only: stage 1's
frozen LLM passing gradients down to the projector, a LoRA / QLoRA base under its adapters), 0 when
nothing in or before their component trains (a frozen vision tower). N counts the weights a
parameter stands for (a ZeRO-3 partition or a 4-bit packed weight counts in full). Causal
attention adds 4 * layers * d * T per token forward (QK^T and AV, half of the T x T matrix). The LM
head runs only where a label is (train.strategy.answer_loss_sum): its weights count per predicted token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llava_platform.model.freeze import component_of

__all__ = ["StepShape", "training_flops", "mfu", "peak_tflops_for", "PEAK_TFLOPS"]

# dense bf16 tensor-core peaks (no sparsity), per device
PEAK_TFLOPS = {"H100-SXM": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass(frozen=True)
class StepShape:
    sequences: int  # samples in the step
    text_tokens: int  # LLM positions summed over samples (image tokens included)
    seq_len: int  # mean LLM sequence length (attention cost)
    images: int  # images (anyres: tiles) through the vision tower
    patches_per_image: int  # vision tokens per image (CLS included)
    predicted_tokens: int  # positions through the LM head: those whose next token is labelled


def _numel(p: nn.Parameter) -> int:
    """Elements of the weight a parameter stands for. ZeRO-3 leaves an empty placeholder where a
    partitioned weight was (ds_numel keeps its size); bitsandbytes packs 4-bit weights two to a byte
    (quant_state keeps the shape)."""
    if hasattr(p, "ds_numel"):
        return p.ds_numel
    quant_state = getattr(p, "quant_state", None)
    return math.prod(quant_state.shape) if quant_state is not None else p.numel()


def _params(model: nn.Module) -> dict[str, tuple[int, int]]:
    """component -> (trainable, frozen) weights that run on every position. Left out: the input embedding
    (a lookup, not a matmul), the LM head (counted per predicted token; the same tensor as the embedding
    when they are tied) and peft's idle copy of a fully trained module (LoRA's projector: `original_module`)."""
    skipped = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    out: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if id(p) in skipped or ".original_module." in name:
            continue
        entry = out.setdefault(component_of(name), [0, 0])
        entry[0 if p.requires_grad else 1] += _numel(p)
    return {k: (t, f) for k, (t, f) in out.items()}


def training_flops(model: nn.Module, shape: StepShape) -> float:
    """Forward + backward model FLOPs of one optimizer step's worth of samples."""
    params = _params(model)
    cfg = model.config

    def cost(component: str, tokens: int, attention: float, upstream_trains: bool) -> tuple[float, bool]:
        """(FLOPs, whether gradients flow out of it): trained weights 6N; frozen ones 4N where gradients pass
        through them (something in or before the component trains: LoRA, stage 1's frozen LLM), else 2N."""
        trainable, frozen = params.get(component, (0, 0))
        grads_flow = upstream_trains or trainable > 0
        frozen_factor = 4 if grads_flow else 2
        attention_factor = 6 if trainable else frozen_factor
        return (6 * trainable + frozen_factor * frozen) * tokens + attention_factor * attention * tokens, grads_flow

    vision_tokens = shape.images * shape.patches_per_image
    v_layers, v_dim = cfg.vision_config.num_hidden_layers, cfg.vision_config.hidden_size
    t_layers, t_dim = cfg.text_config.num_hidden_layers, cfg.text_config.hidden_size
    vision, upstream = cost("vision_tower", vision_tokens, 2 * v_layers * v_dim * shape.patches_per_image, False)
    projector, upstream = cost("projector", vision_tokens, 0, upstream)
    llm, _ = cost("llm", shape.text_tokens, 2 * t_layers * t_dim * shape.seq_len, upstream)
    head = model.get_output_embeddings().weight  # gradients always flow back through it: 6N or 4N
    head_flops = (6 if head.requires_grad else 4) * _numel(head) * shape.predicted_tokens
    return float(vision + projector + llm + head_flops)


def mfu(flops: float, seconds: float, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved / peak."""
    return flops / seconds / (devices * peak_tflops * 1e12)


def peak_tflops_for(device: torch.device, override: float | None = None) -> float | None:
    """The per-device peak MFU is measured against: `override` (train.peak_tflops), else a known GPU's
    dense bf16 peak, else None (CPUs have no meaningful single figure)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key.split("-")[0] in name), None)
