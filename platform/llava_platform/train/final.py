"""<output_dir>/final: the run's last checkpoint as a complete HF model that jobs.chat and plain
transformers load (LoRA merged into the unquantized base unless train.merge_lora is false).

QLoRA adapters are merged into the base loaded in model.dtype, not into its 4-bit copy: merging
into quantized weights would round the adapters away.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ray.train
from peft import PeftModel

from llava_platform.config import ModelSpec, TrainJobSpec
from llava_platform.model.checkpoint import load_checkpoint, save_checkpoint
from llava_platform.model.lora import merge_lora
from llava_platform.train.setup import RESOLVED_FIELDS
from llava_platform.train.state import MODEL_DIR

__all__ = ["export_final"]


def export_final(checkpoint: ray.train.Checkpoint, spec: TrainJobSpec) -> Path:
    out = Path(spec.train.output_dir) / "final"
    with checkpoint.as_directory() as directory:
        model_dir = Path(directory) / MODEL_DIR
        bundle = load_checkpoint(model_dir, ModelSpec(checkpoint=str(model_dir), dtype=spec.model.dtype))
        if isinstance(bundle.model, PeftModel) and not spec.train.merge_lora:
            return save_checkpoint(bundle, out)  # adapters: the saved spec names their base model
        model = merge_lora(bundle.model) if isinstance(bundle.model, PeftModel) else bundle.model
        # a complete model: its spec names the model itself, with the input handling it was trained with
        resolved = {k: getattr(bundle.spec, k) for k in RESOLVED_FIELDS}
        return save_checkpoint(replace(bundle, model=model, spec=ModelSpec(checkpoint=str(out), dtype=spec.model.dtype, **resolved)), out)
