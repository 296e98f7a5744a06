"""Source 1 of the loading chain: a model assembled from a preset or from components (tower + LLM + projector).

The network is transformers' LlavaForConditionalGeneration (square / pad) or
LlavaNextForConditionalGeneration (anyres); this module only assembles it:

    vision tower (CLIP / SigLIP) + LLM + fresh projector -> LlavaConfig -> model
    tokenizer + <image> + <pad> -> embeddings resized
    image processor (square | pad | anyres) + tokenizer + chat template -> processor

A preset with `init: random` (and `tiny`, always) is built from its pinned shapes with no download;
otherwise the preset's (or model.components') pretrained tower and LLM are loaded and joined.
It depends on bundle, presets, projector and tokenizer; convert.py builds on it, builder.py dispatches to it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
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
from llava_platform.data.templates import get_template
from llava_platform.model.bundle import DTYPES, ModelBundle, quantization_config
from llava_platform.model.presets import Preset, get_preset
from llava_platform.model.projector import install_projector, projector_act, projector_depth
from llava_platform.model.tokenizer import add_platform_tokens, build_tiny_tokenizer

__all__ = [
    "resolve_spec", "build_assembled_model", "build_assembled_processor", "assemble_model", "build_processor",
    "load_vision_tower", "image_stats", "has_cls_token",
]  # fmt: skip

VISION_MODELS = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
                 "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}  # fmt: skip


def resolve_spec(spec: ModelSpec, preset: Preset | None, projector: str) -> ModelSpec:
    """The spec with its unset input-handling fields (template, image mode, feature layer ...) filled in from
    the preset, or LLaVA-1.5's defaults without one; a bad projector or template name fails here, before loading."""
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


def _sources(spec: ModelSpec) -> tuple[ModelSpec, Preset | None, str | None, str | None, str]:
    """(resolved spec, preset, vision tower id, LLM id, projector) of a preset or components spec;
    the hub ids are None where the model is built from the preset's shapes (tiny, init: random)."""
    if spec.preset is not None:
        preset = get_preset(spec.preset)
        spec = resolve_spec(spec, preset, preset.projector)
        if preset.vision_tower is None or spec.init == "random":
            return spec, preset, None, None, preset.projector
        return spec, preset, preset.vision_tower, preset.llm, preset.projector
    comp = spec.components
    if comp is None:
        raise ValueError("model: neither preset nor components is set; nothing to assemble a model from")
    return resolve_spec(spec, None, comp.projector), None, comp.vision_tower, comp.llm, comp.projector


def build_assembled_model(spec: ModelSpec, device: str | torch.device | None = None) -> ModelBundle:
    """The model of a preset or components spec: random-init from the preset's shapes (weights on `device`,
    default CPU), or its pretrained vision tower + pretrained LLM + a fresh projector."""
    spec, preset, vision_name, llm_name, projector = _sources(spec)
    if vision_name is None:
        return _build_random(spec, preset, device)
    return _build_from_components(spec, vision_name, llm_name, projector)


def build_assembled_processor(spec: ModelSpec) -> ProcessorMixin:
    """Only the processor that build_assembled_model(spec) would give, without building weights (dataset checks)."""
    spec, preset, vision_name, llm_name, _ = _sources(spec)
    if vision_name is None:
        tokenizer, config = _random_configs(spec, preset)
        return build_processor(tokenizer, config.vision_config, spec)
    tokenizer = AutoTokenizer.from_pretrained(llm_name)
    add_platform_tokens(tokenizer)
    vision_config = AutoConfig.from_pretrained(vision_name)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # full CLIP config -> its vision part
    spec = _with_select_strategy(spec, vision_config)
    return build_processor(tokenizer, vision_config, spec, *image_stats(vision_name))


def has_cls_token(vision_config: PretrainedConfig) -> bool:
    """Whether the tower's features start with a CLS token (CLIP does; SigLIP has none)."""
    return vision_config.model_type.startswith("clip")


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


def load_vision_tower(name: str, dtype: torch.dtype) -> PreTrainedModel:
    """A pretrained CLIP or SigLIP vision tower (hub id or local directory) in `dtype`."""
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
