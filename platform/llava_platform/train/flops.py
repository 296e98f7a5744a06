"""Model FLOPs of a LLaVA training step, for tokens/s -> MFU.

Per token through a block of N weights: forward 2N; backward 4N when its weights train
(activation + weight gradients), 2N when frozen but something before it trains (activation
gradients only, e.g. the frozen LLM in stage 1 passes gradients down to the projector), 0 when
nothing before it trains (a frozen vision tower). Causal attention adds 4 * layers * d * T per
token forward (QK^T and AV, half of the T x T matrix).
"""

from __future__ import annotations

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


def _params(model: nn.Module) -> dict[str, tuple[int, bool]]:
    """component -> (parameter count, any of it trainable)."""
    out: dict[str, list] = {}
    for name, p in model.named_parameters():
        entry = out.setdefault(component_of(name), [0, False])
        entry[0] += p.numel()
        entry[1] |= p.requires_grad
    return {k: (n, t) for k, (n, t) in out.items()}


def training_flops(model: nn.Module, shape: StepShape) -> float:
    """Forward + backward model FLOPs of one optimizer step's worth of samples."""
    params = _params(model)
    cfg = model.config
    vision_n, vision_trains = params.get("vision_tower", (0, False))
    proj_n, proj_trains = params.get("projector", (0, False))
    llm_n, llm_trains = params.get("llm", (0, False))
    llm_n -= cfg.text_config.vocab_size * cfg.text_config.hidden_size  # the input embedding is a lookup, not a matmul

    def factor(trains: bool, upstream_trains: bool) -> int:
        return 6 if trains else 4 if upstream_trains else 2

    vision_tokens = shape.images * shape.patches_per_image
    v_layers, v_dim = cfg.vision_config.num_hidden_layers, cfg.vision_config.hidden_size
    t_layers, t_dim = cfg.text_config.num_hidden_layers, cfg.text_config.hidden_size
    vision = factor(vision_trains, False) * (vision_n * vision_tokens + 2 * v_layers * v_dim * shape.patches_per_image * vision_tokens)
    projector = factor(proj_trains, vision_trains) * proj_n * vision_tokens
    upstream = vision_trains or proj_trains
    llm = factor(llm_trains, upstream) * (llm_n * shape.text_tokens + 2 * t_layers * t_dim * shape.seq_len * shape.text_tokens)
    return float(vision + projector + llm)


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
