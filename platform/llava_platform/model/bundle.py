"""The bottom of the model package's loading chain: the types every model source shares.

    ModelBundle          what every source returns: model, processor, template, resolved spec
    DTYPES               ModelSpec.dtype -> torch dtype
    quantization_config  ModelSpec.quantization -> the bitsandbytes config for from_pretrained

It imports no other module of the package (only config and data.templates), so every source can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from llava_platform.config import ModelSpec
from llava_platform.data.templates import ConversationTemplate

__all__ = ["ModelBundle", "DTYPES", "quantization_config"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelBundle:
    """Everything the platform needs to run a model: weights, processor, template, and the spec that made it."""

    model: PreTrainedModel
    processor: ProcessorMixin
    template: ConversationTemplate
    spec: ModelSpec  # resolved: template, image_mode etc. filled in

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer


def quantization_config(spec: ModelSpec) -> BitsAndBytesConfig | None:
    """bitsandbytes config for the LLM; the vision tower, projector and lm_head stay unquantized."""
    if spec.quantization == "none":
        return None
    # transformers matches these from the start of the module name (or as a suffix)
    skip = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    compute = DTYPES[spec.dtype] if spec.dtype != "float32" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip)  # fmt: skip
