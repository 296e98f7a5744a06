"""LoRA / QLoRA on the LLM's linear layers only (peft), and merging the adapters back.

Adapters never go on the vision tower, the projector or lm_head; the projector
trains fully alongside them (peft modules_to_save) unless the spec says not to.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import PreTrainedModel

from llava_platform.config import LoraSpec

__all__ = ["llm_linear_names", "apply_lora", "merge_lora"]


def llm_linear_names(model: nn.Module, leaf_names: list[str] | None = None) -> list[str]:
    """Full names of the LLM's linear layers (bitsandbytes' Linear4bit / Linear8bitLt are nn.Linear too)."""
    names = [
        name for name, module in model.named_modules()
        if name.startswith("model.language_model.") and isinstance(module, nn.Linear)
    ]  # fmt: skip
    if leaf_names is not None:
        unknown = set(leaf_names) - {n.rsplit(".", 1)[-1] for n in names}
        if unknown:
            raise ValueError(f"model.lora.target_modules: {sorted(unknown)} are not linear layers of the LLM")
        names = [n for n in names if n.rsplit(".", 1)[-1] in leaf_names]
    return names


def apply_lora(model: PreTrainedModel, lora: LoraSpec) -> PeftModel:
    """Wrap with adapters; a bitsandbytes-quantized model is prepared for k-bit training first (QLoRA)."""
    if getattr(model, "is_quantized", False):
        # freezes everything and casts the unquantized fp16/bf16 weights to fp32 (stable adapter training);
        # gradient checkpointing, and the input-grad hook it needs, stay the trainer's choice
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=llm_linear_names(model, lora.target_modules),  # full names: exactly these, nothing else
        modules_to_save=["multi_modal_projector"] if lora.train_projector else None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    newline = getattr(model.model, "image_newline", None)  # LLaVA-NeXT: a bare Parameter, so not a modules_to_save
    if newline is not None:
        newline.requires_grad_(lora.train_projector)  # it trains with the projector, as in full fine-tuning
    return peft_model


def merge_lora(model: PeftModel) -> PreTrainedModel:
    """The plain LLaVA model with adapters folded into the weights and the trained projector in place.

    image_newline was trained in place (it is a base-model parameter), so it needs no merging.
    """
    return model.merge_and_unload()
