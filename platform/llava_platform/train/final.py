"""<output_dir>/final: the run's last checkpoint as a complete HF model that jobs.chat and plain
transformers load, in model.dtype and unquantized, answering as the trained model does.

LoRA is merged into the weights the run trained on: a QLoRA base is dequantized first
(dequant(quant(W)) + the adapters, in model.dtype), never merged into the original weights the
adapters never saw. With train.merge_lora false, final/ is the adapter checkpoint as it was saved.
Every final/ may carry provenance.json: what made it (the caller fills it).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray.train

from llava_platform.config import ModelSpec, TrainJobSpec
from llava_platform.model.builder import load_checkpoint, load_merged_adapters
from llava_platform.model.checkpoint import copy_checkpoint, save_checkpoint
from llava_platform.model.lora import ADAPTER_CONFIG
from llava_platform.storage import Storage, is_uri
from llava_platform.train.setup import RESOLVED_FIELDS
from llava_platform.train.state import MODEL_DIR

__all__ = ["PROVENANCE_FILE", "export_final"]

PROVENANCE_FILE = "provenance.json"


def export_final(checkpoint: ray.train.Checkpoint, spec: TrainJobSpec, provenance: dict[str, Any] | None = None) -> Path | str:
    """Write <train.output_dir>/final from the checkpoint's model/ (atomically, provenance.json included). An output_dir
    on an object store (s3://, gs://) gets final/ made in a local folder, then uploaded (Storage.upload_folder);
    returns its URI."""
    if is_uri(spec.train.output_dir):
        with tempfile.TemporaryDirectory(prefix="llava-final-") as staging:
            local = spec.model_copy(update={"train": spec.train.model_copy(update={"output_dir": staging})})
            made = export_final(checkpoint, local, provenance)
            return Storage(spec.storage).upload_folder(made, Storage.join(spec.train.output_dir, "final"))
    out = Path(spec.train.output_dir) / "final"
    extra = {PROVENANCE_FILE: json.dumps(provenance, indent=1, sort_keys=True)} if provenance is not None else None
    with checkpoint.as_directory() as directory:
        model_dir = Path(directory) / MODEL_DIR
        if not (model_dir / ADAPTER_CONFIG).exists():
            bundle = load_checkpoint(model_dir, ModelSpec(checkpoint=str(model_dir), dtype=spec.model.dtype))
        elif spec.train.merge_lora:
            bundle = load_merged_adapters(model_dir, spec.model.dtype)
        else:  # the adapters as trained: the saved spec names their base model and its quantization
            return copy_checkpoint(model_dir, out, extra)
        # a complete model: its spec names the model itself, with the input handling it was trained with
        resolved = {k: getattr(bundle.spec, k) for k in RESOLVED_FIELDS}
        own = ModelSpec(checkpoint=str(out), dtype=spec.model.dtype, **resolved)
        return save_checkpoint(replace(bundle, spec=own), out, extra_files=extra)
