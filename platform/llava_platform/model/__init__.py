"""Build, load and save LLaVA models (transformers' Llava / LlavaNext classes).

Loading is a one-way chain; each module imports only modules to its left (and config, data):

    bundle, presets, projector, tokenizer  ->  assemble  ->  convert  ->  builder
    bundle, projector, lora                ->  checkpoint  ---------->  builder

    bundle      ModelBundle, DTYPES, quantization_config: the types every source shares
    assemble    a preset or components: vision tower + LLM + fresh projector
    checkpoint  the platform's checkpoints: save, load a full HF checkpoint, put saved adapters on a base
    convert     an original-LLaVA checkpoint, converted through assemble
    builder     build_model(spec) / load_checkpoint(path): picks the source (an adapter checkpoint's base too)

freeze.py (which parameters train) stands apart: training imports it, loading does not.
"""

from llava_platform.model.assemble import build_processor
from llava_platform.model.builder import build_model, build_processor_for, load_checkpoint, load_merged_adapters, model_template
from llava_platform.model.bundle import ModelBundle
from llava_platform.model.checkpoint import save_checkpoint

__all__ = [
    "ModelBundle", "build_model", "build_processor", "build_processor_for", "load_checkpoint", "load_merged_adapters",
    "model_template", "save_checkpoint",
]  # fmt: skip
