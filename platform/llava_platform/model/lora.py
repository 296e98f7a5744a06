"""LoRA / QLoRA on the LLM's linear layers only (peft), adapter checkpoints, and merging the adapters back.

Adapters never go on the vision tower, the projector or lm_head; the projector
trains fully alongside them (peft modules_to_save) unless the spec says not to.

An adapter checkpoint is peft's own (adapter_config.json, adapter_model.safetensors: the
adapters and the trained projector) plus TRAINED_BASE_FILE: base parameters trained in place
(LLaVA-NeXT's image_newline, a vision tower trained with train.train_vision_tower). A model loaded
from such a checkpoint remembers which parameters that file set, so saving it again keeps them.

A leaf of the loading chain (no import from the package): checkpoint saves and attaches adapters with it,
builder merges them, training wraps a model with it.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from llava_platform.config import LoraSpec

__all__ = [
    "ADAPTER_CONFIG", "TRAINED_BASE_FILE", "llm_linear_names", "apply_lora", "merge_lora", "save_adapter", "load_adapter_weights",
]  # fmt: skip

ADAPTER_CONFIG = "adapter_config.json"
TRAINED_BASE_FILE = "trained_base.safetensors"
_TRAINED_BASE_ATTR = "trained_base_names"  # on a PeftModel: the parameter names its TRAINED_BASE_FILE set


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
    A bitsandbytes base is refused: peft would quantize W + BA again, rounding the adapters away.
    """
    if getattr(model, "is_quantized", False):
        raise ValueError("merge_lora: the base is bitsandbytes-quantized (QLoRA), and merging would quantize the "
                         "adapters away; merge an adapter checkpoint with llava_platform.model.load_merged_adapters, which "
                         "dequantizes the base first")  # fmt: skip
    return model.merge_and_unload()


def _trained_base(model: PeftModel) -> dict[str, nn.Parameter]:
    """Base-model parameters trained in place: those training now (not an adapter, not a modules_to_save copy)
    and those a TRAINED_BASE_FILE set at load (frozen for inference there, trained weights all the same)."""
    loaded = getattr(model, _TRAINED_BASE_ATTR, frozenset())
    return {n: p for n, p in model.named_parameters()
            if n in loaded or (p.requires_grad and "lora_" not in n and "modules_to_save" not in n)}  # fmt: skip


def save_adapter(model: PeftModel, directory: Path) -> None:
    """peft's adapter files + the base parameters trained in place."""
    model.save_pretrained(directory)
    extra = _trained_base(model)
    if extra:
        save_file({n: p.detach().cpu().contiguous() for n, p in extra.items()}, str(directory / TRAINED_BASE_FILE))


def load_adapter_weights(model: PeftModel, directory: Path) -> None:
    """Load save_adapter()'s files into a model wrapped by apply_lora with the same spec; the model records
    which base parameters TRAINED_BASE_FILE set, for save_adapter to write them again whatever their requires_grad."""
    adapter = load_file(str(directory / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, adapter)
    if result.unexpected_keys:
        raise ValueError(f"{directory}: adapter weights that fit no module of this model: {result.unexpected_keys[:5]}")
    extra_file = directory / TRAINED_BASE_FILE
    if extra_file.exists():
        params = dict(model.named_parameters())
        trained = load_file(str(extra_file))
        for name, tensor in trained.items():
            if name not in params:
                raise ValueError(f"{extra_file}: {name} is not a parameter of this model")
            params[name].data.copy_(tensor)
        setattr(model, _TRAINED_BASE_ATTR, frozenset(trained))
