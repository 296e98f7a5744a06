"""The top of the loading chain: `build_model(spec)` picks the source the spec names and loads from it.

    bundle -> assemble (preset, components) -> convert (original LLaVA) -> builder
    bundle -> checkpoint (HF checkpoints, adapter checkpoints) ---------> builder     (a -> b: b imports a)

    model.preset / model.components   assemble.build_assembled_model
    model.checkpoint                  checkpoint.load_hf_checkpoint, or, for an adapter checkpoint, the base its
                                      saved spec names (built here, from any source) + checkpoint.attach_adapters
    model.original_checkpoint         convert.load_original_checkpoint

Only this module knows every source; none of them imports it (like transformers' AutoModel over the
per-model modules). An adapter checkpoint loads on the base it was trained on (a QLoRA run's: 4-bit);
load_merged_adapters folds it into one plain model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor, ProcessorMixin

from llava_platform.config import ModelSpec
from llava_platform.model.assemble import build_assembled_model, build_assembled_processor
from llava_platform.model.bundle import DTYPES, ModelBundle
from llava_platform.model.checkpoint import (
    adapter_base_spec,
    attach_adapters,
    is_adapter_checkpoint,
    load_checkpoint_spec,
    load_hf_checkpoint,
)
from llava_platform.model.convert import load_original_checkpoint
from llava_platform.model.lora import merge_lora
from llava_platform.model.presets import get_preset

__all__ = ["build_model", "load_checkpoint", "load_merged_adapters", "build_processor_for", "model_template"]


def build_model(spec: ModelSpec, device: str | torch.device | None = None) -> ModelBundle:
    """The model a spec describes, its weights on `device` (default CPU; original checkpoints always load to CPU)."""
    if spec.checkpoint is not None:
        return load_checkpoint(spec.checkpoint, spec, device)
    if spec.original_checkpoint is not None:
        return load_original_checkpoint(spec.original_checkpoint, spec)
    return build_assembled_model(spec, device)


def load_checkpoint(path: str | Path, spec: ModelSpec | None = None, device: str | torch.device | None = None) -> ModelBundle:
    """Load an HF-format LLaVA / LLaVA-NeXT checkpoint (a directory, or a hub id for users with network),
    or a platform adapter checkpoint (LoRA adapters over the base its llava_platform.yaml names).

    The template comes from `spec.template`, else from the checkpoint's llava_platform.yaml;
    a checkpoint with neither is an error (no guessing from the model name). `device` places
    the weights as they load (needed for bitsandbytes on a GPU); default CPU.
    """
    spec = spec or ModelSpec(checkpoint=str(path))
    if is_adapter_checkpoint(path):
        return _load_adapter_checkpoint(Path(path), spec, device)
    return load_hf_checkpoint(path, spec, device)


def _load_adapter_checkpoint(path: Path, spec: ModelSpec, device, dequantize_to: torch.dtype | None = None) -> ModelBundle:
    """The base model the adapters were trained on, built from whichever source its saved spec names, with the
    adapters applied, unmerged (`dequantize_to`: see checkpoint.attach_adapters)."""
    saved = load_checkpoint_spec(path)
    base = build_model(adapter_base_spec(path, spec, saved), device=device)
    return attach_adapters(base, path, spec, saved, dequantize_to)


def load_merged_adapters(path: str | Path, dtype: str) -> ModelBundle:
    """An adapter checkpoint as one plain model in `dtype`: the adapters merged into the weights the run trained on.

    A quantized base (QLoRA) loads as trained, in the saved dtype (the same 4-bit codes), and is dequantized to
    `dtype` before the adapters go on: its LLM linears become nn.Linear holding dequant(quant(W)), what the 4-bit
    layers computed with, and peft merges into those (its merge into bitsandbytes layers would quantize W + BA
    again: the adapters rounded away). An unquantized base loads in `dtype`: the merged model takes the memory of
    the model in its own dtype (a 7B in bfloat16: ~14 GB), no more. The trained projector and the base weights
    trained in place come from the checkpoint. Its spec is the saved one, unquantized and without lora (its source
    still names the base model).
    """
    path = Path(path)
    saved = load_checkpoint_spec(path)
    quantized = saved is not None and saved.quantization != "none"
    load_spec = ModelSpec(checkpoint=str(path), dtype=saved.dtype if quantized else dtype)
    bundle = _load_adapter_checkpoint(path, load_spec, device=None, dequantize_to=DTYPES[dtype])
    model = merge_lora(bundle.model).to(DTYPES[dtype])
    spec = bundle.spec.model_copy(update=dict(dtype=dtype, quantization="none", lora=None))
    return ModelBundle(model, bundle.processor, bundle.template, spec)


def model_template(spec: ModelSpec) -> str:
    """The conversation template build_model(spec) uses, found without building anything."""
    if spec.template is not None:
        return spec.template
    if spec.preset is not None:
        return get_preset(spec.preset).template
    if spec.checkpoint is not None:
        saved = load_checkpoint_spec(spec.checkpoint)
        if saved is not None and saved.template is not None:
            return saved.template
    raise ValueError("model.template: required for this model source (it is never guessed from a name); "
                     "e.g. vicuna_v1, mistral_instruct, chatml_direct")  # fmt: skip


def build_processor_for(spec: ModelSpec) -> ProcessorMixin:
    """Only the processor that `build_model(spec)` would give, without building weights (dataset checks)."""
    if spec.checkpoint is not None:
        return AutoProcessor.from_pretrained(spec.checkpoint)
    if spec.original_checkpoint is not None:
        return build_model(spec).processor
    return build_assembled_processor(spec)
