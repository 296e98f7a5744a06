"""Build a LLaVA model + processor from a ModelSpec: preset, components, HF checkpoint, or original LLaVA.

The network is transformers' LlavaForConditionalGeneration (square / pad) or
LlavaNextForConditionalGeneration (anyres); this module only assembles it:

    vision tower (CLIP / SigLIP) + LLM + fresh projector -> LlavaConfig -> model
    tokenizer + <image> + <pad> -> embeddings resized
    image processor (square | pad | anyres) + tokenizer + chat template -> processor
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SiglipVisionModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from llava_platform.config import ModelSpec
from llava_platform.data.images import anyres_pinpoints, build_image_processor
from llava_platform.data.templates import ConversationTemplate, get_template
from llava_platform.model.presets import Preset, get_preset
from llava_platform.model.projector import install_projector, projector_act, projector_depth
from llava_platform.model.tokenizer import add_platform_tokens, build_tiny_tokenizer

__all__ = [
    "ModelBundle", "build_model", "assemble_model", "build_processor", "build_processor_for", "DTYPES",
    "quantization_config", "load_vision_tower", "image_stats", "has_cls_token", "model_template",
]  # fmt: skip

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VISION_MODELS = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
                 "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}  # fmt: skip


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


def build_model(spec: ModelSpec, device: str | torch.device | None = None) -> ModelBundle:
    """The model a spec describes, its weights on `device` (default CPU; original checkpoints always load to CPU)."""
    if spec.checkpoint is not None:
        from llava_platform.model.checkpoint import load_checkpoint  # checkpoint imports this module

        return load_checkpoint(spec.checkpoint, spec, device)
    if spec.original_checkpoint is not None:
        from llava_platform.model.convert import load_original_checkpoint

        return load_original_checkpoint(spec.original_checkpoint, spec)
    if spec.preset is not None:
        preset = get_preset(spec.preset)
        spec = _resolve(spec, preset, preset.projector)
        if preset.vision_tower is None or spec.init == "random":
            return _build_random(spec, preset, device)
        return _build_from_components(spec, preset.vision_tower, preset.llm, preset.projector)
    comp = spec.components
    return _build_from_components(_resolve(spec, None, comp.projector), comp.vision_tower, comp.llm, comp.projector)


def _resolve(spec: ModelSpec, preset: Preset | None, projector: str) -> ModelSpec:
    """Fill the spec's unset input-handling fields from the preset (or LLaVA-1.5 defaults)."""
    projector_depth(projector)  # fail fast on a bad name
    # components: the select strategy waits for the tower's type (CLIP drops CLS: default; SigLIP has none: full)
    defaults: dict[str, Any] = dict(image_mode="pad", vision_feature_layer=-2)
    if preset is None and spec.template is None:
        raise ValueError("model.template: required with model.components (e.g. vicuna_v1 for Vicuna / Llama-2 chat "
                         "LLMs, mistral_instruct for Mistral, chatml_direct for ChatML models); it is never guessed")
    if preset is not None:
        defaults = dict(template=preset.template, image_mode=preset.image_mode,
                        vision_feature_layer=preset.vision_feature_layer,
                        vision_feature_select_strategy=preset.vision_feature_select_strategy,
                        image_grid_pinpoints=preset.image_grid_pinpoints)  # fmt: skip
    filled = {k: v for k, v in defaults.items() if getattr(spec, k) is None}
    resolved = spec.model_copy(update=filled)
    get_template(resolved.template)  # unknown template: fail before loading anything
    return resolved


def has_cls_token(vision_config: PretrainedConfig) -> bool:
    return vision_config.model_type.startswith("clip")  # SigLIP has no CLS token


def _with_select_strategy(spec: ModelSpec, vision_config: PretrainedConfig) -> ModelSpec:
    if spec.vision_feature_select_strategy is not None:
        return spec
    return spec.model_copy(update={"vision_feature_select_strategy": "default" if has_cls_token(vision_config) else "full"})


def _llava_config(vision_config: PretrainedConfig, text_config: PretrainedConfig, image_token_id: int,
                  spec: ModelSpec, projector: str) -> LlavaConfig:  # fmt: skip
    common = dict(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        projector_hidden_act=projector_act(projector),
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        # patch tokens, plus CLS when the "full" strategy keeps it
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2
        + (spec.vision_feature_select_strategy == "full" and has_cls_token(vision_config)),
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    if spec.image_mode == "anyres":
        pinpoints = _pinpoints(spec, vision_config.image_size)
        return LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
    return LlavaConfig(**common)


def _pinpoints(spec: ModelSpec, image_size: int) -> list[list[int]]:
    return [list(p) for p in spec.image_grid_pinpoints] if spec.image_grid_pinpoints else anyres_pinpoints(image_size)


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    return LlavaNextForConditionalGeneration if isinstance(config, LlavaNextConfig) else LlavaForConditionalGeneration


def build_processor(tokenizer: PreTrainedTokenizerBase, vision_config: PretrainedConfig, spec: ModelSpec,
                    image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD) -> ProcessorMixin:  # fmt: skip
    """LlavaProcessor / LlavaNextProcessor: image processor for spec.image_mode + tokenizer + chat template."""
    image_processor = build_image_processor(
        spec.image_mode, vision_config.image_size, image_mean=list(image_mean), image_std=list(image_std),
        grid_pinpoints=_pinpoints(spec, vision_config.image_size) if spec.image_mode == "anyres" else None,
    )  # fmt: skip
    cls = LlavaNextProcessor if spec.image_mode == "anyres" else LlavaProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        chat_template=get_template(spec.template).chat_template(),
        num_additional_image_tokens=1 if has_cls_token(vision_config) else 0,
    )


def _random_configs(spec: ModelSpec, preset: Preset) -> tuple[PreTrainedTokenizerBase, LlavaConfig]:
    """The preset's shapes with the platform's byte-level tokenizer: no download at all."""
    tokenizer = build_tiny_tokenizer()
    text_kwargs = dict(preset.text_config)
    # tiny: vocab from the tokenizer (rounded up to 64 for matmul shapes); big presets keep their real vocab
    text_kwargs.setdefault("vocab_size", math.ceil(len(tokenizer) / 64) * 64)
    text_config = LlamaConfig(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, **text_kwargs)  # fmt: skip
    vision_config = CLIPVisionConfig(**preset.vision_config)
    return tokenizer, _llava_config(vision_config, text_config, tokenizer.image_token_id, spec, preset.projector)


def _build_random(spec: ModelSpec, preset: Preset, device) -> ModelBundle:
    if spec.quantization != "none":
        raise ValueError(f"model.quantization {spec.quantization!r} applies when loading weights; a random-init model has "
                         "none: save it (jobs.build_model) and load it as model.checkpoint with model.quantization")  # fmt: skip
    tokenizer, config = _random_configs(spec, preset)
    with torch.device(device or "cpu"):
        model = _model_class(config)._from_config(config, dtype=DTYPES[spec.dtype])
    install_projector(model, preset.projector)
    processor = build_processor(tokenizer, config.vision_config, spec)
    return ModelBundle(model, processor, get_template(spec.template), spec)


def model_template(spec: ModelSpec) -> str:
    """The conversation template build_model(spec) uses, found without building anything."""
    if spec.template is not None:
        return spec.template
    if spec.preset is not None:
        return get_preset(spec.preset).template
    if spec.checkpoint is not None:
        from llava_platform.model.checkpoint import load_checkpoint_spec  # checkpoint imports this module

        saved = load_checkpoint_spec(spec.checkpoint)
        if saved is not None and saved.template is not None:
            return saved.template
    raise ValueError("model.template: required for this model source (it is never guessed from a name); "
                     "e.g. vicuna_v1, mistral_instruct, chatml_direct")  # fmt: skip


def build_processor_for(spec: ModelSpec) -> ProcessorMixin:
    """Only the processor that `build_model(spec)` would give, without building weights (dataset checks)."""
    if spec.checkpoint is not None:
        return AutoProcessor.from_pretrained(spec.checkpoint)
    if spec.preset is not None:
        preset = get_preset(spec.preset)
        spec = _resolve(spec, preset, preset.projector)
        if preset.vision_tower is None or spec.init == "random":
            tokenizer, config = _random_configs(spec, preset)
            return build_processor(tokenizer, config.vision_config, spec)
        vision_name, llm_name = preset.vision_tower, preset.llm
    elif spec.components is not None:
        spec = _resolve(spec, None, spec.components.projector)
        vision_name, llm_name = spec.components.vision_tower, spec.components.llm
    else:
        return build_model(spec).processor
    tokenizer = AutoTokenizer.from_pretrained(llm_name)
    add_platform_tokens(tokenizer)
    vision_config = AutoConfig.from_pretrained(vision_name)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # full CLIP config -> its vision part
    spec = _with_select_strategy(spec, vision_config)
    return build_processor(tokenizer, vision_config, spec, *image_stats(vision_name))


def load_vision_tower(name: str, dtype: torch.dtype) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(name)
    cls = VISION_MODELS.get(config.model_type)
    if cls is None:
        raise ValueError(f"vision tower {name!r} is a {config.model_type!r} model; use a CLIP or SigLIP model")
    return cls.from_pretrained(name, dtype=dtype)


def image_stats(name: str) -> tuple[list[float], list[float]]:
    """The vision tower's own normalisation (CLIP and SigLIP differ); CLIP's if it ships none."""
    try:
        proc = AutoImageProcessor.from_pretrained(name)
        return list(proc.image_mean), list(proc.image_std)
    except (OSError, ValueError, AttributeError):
        return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)


def quantization_config(spec: ModelSpec):
    """bitsandbytes config for the LLM; the vision tower, projector and lm_head stay unquantized."""
    if spec.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    # transformers matches these from the start of the module name (or as a suffix)
    skip = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    compute = DTYPES[spec.dtype] if spec.dtype != "float32" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip)  # fmt: skip


def _build_from_components(spec: ModelSpec, vision_name: str, llm_name: str, projector: str) -> ModelBundle:
    """Pretrained vision tower + pretrained LLM + a fresh projector (stage-1 starting point)."""
    dtype = DTYPES[spec.dtype]
    vision = load_vision_tower(vision_name, dtype)
    llm = AutoModelForCausalLM.from_pretrained(llm_name, dtype=dtype, quantization_config=quantization_config(spec))
    tokenizer = AutoTokenizer.from_pretrained(llm_name)
    return assemble_model(spec, vision, llm, tokenizer, projector, *image_stats(vision_name))


def assemble_model(spec: ModelSpec, vision: PreTrainedModel, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   projector: str, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD) -> ModelBundle:  # fmt: skip
    """A LLaVA model around these vision tower and LLM modules (moved in, not copied) with a fresh projector."""
    add_platform_tokens(tokenizer)
    spec = _with_select_strategy(spec, vision.config)
    config = _llava_config(vision.config, llm.config, tokenizer.image_token_id, spec, projector)
    dtype = llm.get_input_embeddings().weight.dtype
    with init_empty_weights():
        model = _model_class(config)(config)
    # only the projector (and LLaVA-NeXT's image_newline) is new
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    hidden = llm.config.hidden_size
    model.model.multi_modal_projector = type(model.model.multi_modal_projector)(config).to(dtype)
    if hasattr(model.model, "image_newline"):
        model.model.image_newline = torch.nn.Parameter(torch.randn(hidden, dtype=dtype) / math.sqrt(hidden))
    install_projector(model, projector)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    assert not leftover, f"parameters left uninitialised: {leftover[:5]}"
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)  # new rows: mean of the old ones
    if projector_depth(projector) > 2:
        warnings.warn(f"{projector}: checkpoints load with llava_platform only (HF's projector has two layers)")
    processor = build_processor(tokenizer, vision.config, spec, image_mean, image_std)
    return ModelBundle(model, processor, get_template(spec.template), spec)
