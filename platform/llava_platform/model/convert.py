"""Source 3 of the loading chain: a checkpoint of the original LLaVA code (haotian-liu/LLaVA), converted to the HF layout.

It builds on assemble.py (the converted LLM and tower are assembled like components, then the original
projector weights go in) and bundle.py; builder.py dispatches model.original_checkpoint here.

Original layout: one flat LLM config (model_type llava_llama / llava_mistral) with mm_* fields,
weights with the LLM's own keys plus

    model.mm_projector.{0,2,...}.*   nn.Sequential(Linear, GELU, Linear, ...)   ("linear": model.mm_projector.*)
    model.image_newline              LLaVA-NeXT only
    model.vision_tower.vision_tower.*  only when the tower was tuned; else it is loaded from mm_vision_tower

and a tokenizer without an <image> token (the original code splices features at id -200).
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedModel

from llava_platform.config import ModelSpec
from llava_platform.model.assemble import assemble_model, image_stats, load_vision_tower, resolve_spec
from llava_platform.model.bundle import DTYPES, ModelBundle
from llava_platform.model.projector import projector_depth

__all__ = ["load_original_checkpoint", "read_original_weights"]

LLMS = {"llava_llama": (LlamaConfig, LlamaForCausalLM), "llava_mistral": (MistralConfig, MistralForCausalLM)}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}  # original -> HF vision_feature_select_strategy
IMAGE_MODE = {"pad": "pad", "square": "square", "anyres": "anyres"}
VISION_PREFIX = "model.vision_tower.vision_tower."
NOT_LLM = ("model.mm_projector.", "model.vision_tower.", "model.image_newline")
# buffers that older transformers saved in state dicts and newer ones recompute: never weights
STALE_BUFFERS = (".rotary_emb.inv_freq", "embeddings.position_ids")


def read_original_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors or pytorch_model*.bin checkpoint."""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        hint = " (mm_projector.bin alone is a pretrain-stage projector, not a full model)" if (path / "mm_projector.bin").exists() else ""
        raise ValueError(f"{path}: no *.safetensors or pytorch_model*.bin weights found{hint}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu", weights_only=True))
    return {k: v for k, v in state.items() if not k.endswith(STALE_BUFFERS)}


def _original_pinpoints(path: Path, raw) -> list[tuple[int, int]]:
    """Original lists (width, height) (mm_utils.select_best_resolution: `for width, height in ...`),
    possibly as a string it literal_evals; transformers and ModelSpec list (height, width)."""
    try:
        pairs = ast.literal_eval(raw) if isinstance(raw, str) else raw
        return [(int(h), int(w)) for w, h in pairs]
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"{path}/config.json: image_grid_pinpoints {raw!r} is not a list of [width, height] pairs; "
                         "fix it there or set model.image_grid_pinpoints as (height, width) pairs") from e  # fmt: skip


def _resolve_original(path: Path, cfg: dict, spec: ModelSpec) -> ModelSpec:
    """The platform spec the original config implies; the template must come from the user."""
    if cfg.get("mm_use_im_start_end"):
        raise ValueError(f"{path}/config.json: mm_use_im_start_end: true (<im_start>/<im_end> around images) is not supported by "
                         "transformers' LLaVA; only checkpoints trained with mm_use_im_start_end: false convert")  # fmt: skip
    if spec.template is None:
        raise ValueError(f"{path}: set model.template (or --template): vicuna_v1 for LLaVA-1.5 and v1.6-vicuna, "
                         "mistral_instruct for v1.6-mistral, llava_llama_2 for LLaVA-Llama-2; it is never guessed")  # fmt: skip
    aspect = cfg.get("image_aspect_ratio", "square")
    if aspect not in IMAGE_MODE:
        raise ValueError(f"{path}/config.json: image_aspect_ratio {aspect!r} is not supported; expected one of {sorted(IMAGE_MODE)}")
    # the original defaults to 'flat' (tiles concatenated, no unpad, no newline): transformers has no such mode
    merge = cfg.get("mm_patch_merge_type", "flat")
    if aspect == "anyres" and merge != "spatial_unpad":
        raise ValueError(f"{path}/config.json: mm_patch_merge_type {merge!r} with image_aspect_ratio anyres: transformers' "
                         "LLaVA-NeXT implements spatial_unpad only; such a checkpoint cannot convert")  # fmt: skip
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in SELECT_FEATURE:
        raise ValueError(f"{path}/config.json: mm_vision_select_feature {select!r}: expected patch or cls_patch")
    update = dict(
        image_mode=spec.image_mode or IMAGE_MODE[aspect],
        vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=SELECT_FEATURE[select],
    )
    if cfg.get("image_grid_pinpoints") and not spec.image_grid_pinpoints:
        update["image_grid_pinpoints"] = _original_pinpoints(path, cfg["image_grid_pinpoints"])
    return resolve_spec(spec.model_copy(update=update), None, cfg.get("mm_projector_type", "linear"))


def _check_keys(what: str, missing: list[str], unexpected: list[str], allowed_missing: set[str], fix: str) -> None:
    missing = sorted(set(missing) - allowed_missing)
    if missing or unexpected:
        raise ValueError(f"{what}: weights do not fit: missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}; {fix}")


def _load_llm(path: Path, cfg: dict, state: dict[str, torch.Tensor], dtype: torch.dtype) -> PreTrainedModel:
    """The LLM built from the flat config, its weights assigned (no random init of billions of parameters)."""
    config_cls, llm_cls = LLMS[cfg["model_type"]]
    llm_fields = {k: v for k, v in cfg.items() if not re.match(r"mm_|image_|tune_|freeze_|tokenizer_|use_mm_|unfreeze_", k)}
    llm_fields.pop("torch_dtype", None)  # the training run's dtype; the converted weights are `dtype`
    llm_fields.update(model_type=config_cls.model_type, architectures=[llm_cls.__name__],
                      dtype=str(dtype).removeprefix("torch."))  # fmt: skip
    with init_empty_weights():  # parameters on meta; buffers (rotary inv_freq) real, in float32
        llm = llm_cls(config_cls(**llm_fields))
    llm_state = {k: v.to(dtype) for k, v in state.items() if not k.startswith(NOT_LLM)}
    missing, unexpected = llm.load_state_dict(llm_state, strict=False, assign=True)
    tied = llm.config.tie_word_embeddings
    _check_keys(f"{path} (LLM)", missing, unexpected, {"lm_head.weight"} if tied else set(),
                f"check model_type {cfg['model_type']!r} and the layer counts in config.json")  # fmt: skip
    if tied:
        llm.tie_weights()
    return llm


def _load_tokenizer(path: Path, llm: PreTrainedModel):
    """The checkpoint's tokenizer; `config=` keeps AutoTokenizer from reading the llava_llama config.json it cannot parse."""
    try:
        return AutoTokenizer.from_pretrained(path, config=llm.config)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: no loadable tokenizer ({e}); copy the tokenizer files of the checkpoint's LLM "
                         "(tokenizer.model / tokenizer.json, tokenizer_config.json) into it") from e  # fmt: skip


def _projector_weights(state: dict[str, torch.Tensor], projector: str) -> dict[str, torch.Tensor]:
    """model.mm_projector.{0,2,4}.* -> linear_{1,2,3}.*  (linear: model.mm_projector.* -> linear_1.*)."""
    out = {}
    for key, tensor in state.items():
        if not key.startswith("model.mm_projector."):
            continue
        rest = key.removeprefix("model.mm_projector.")
        index, _, param = rest.partition(".")
        if projector_depth(projector) == 1 or not index.isdigit():
            out[f"linear_1.{rest}"] = tensor  # a misfiled Sequential key shows up as unexpected
        else:
            out[f"linear_{int(index) // 2 + 1}.{param}"] = tensor  # Sequential: linears at 0, 2, 4, ...
    return out


def load_original_checkpoint(path: str | Path, spec: ModelSpec) -> ModelBundle:
    """An HF LlavaForConditionalGeneration / LlavaNext... with the original checkpoint's weights."""
    path = Path(path)
    if spec.quantization != "none":
        raise ValueError(f"model.quantization {spec.quantization!r} is not applied while converting an original checkpoint; "
                         "convert it first (python -m jobs.convert_checkpoint), then load the result as model.checkpoint "
                         "with model.quantization")  # fmt: skip
    if not (path / "config.json").is_file():
        raise ValueError(f"model.original_checkpoint {str(path)!r}: no config.json there; point it at the original LLaVA checkpoint directory")
    cfg = json.loads((path / "config.json").read_text())
    model_type = cfg.get("model_type")
    if model_type not in LLMS:
        raise ValueError(f"{path}/config.json: model_type {model_type!r} is not an original LLaVA checkpoint; "
                         f"expected one of {sorted(LLMS)} (an HF LLaVA checkpoint goes in model.checkpoint)")  # fmt: skip
    spec = _resolve_original(path, cfg, spec)
    dtype = DTYPES[spec.dtype]
    projector = cfg.get("mm_projector_type", "linear")
    tower = cfg.get("mm_vision_tower")
    if not tower:
        raise ValueError(f"{path}/config.json: mm_vision_tower is missing; set it to the CLIP model the checkpoint was trained with")
    try:
        vision = load_vision_tower(tower, dtype)
    except OSError as e:
        raise ValueError(f"{path}/config.json: mm_vision_tower {tower!r} cannot be loaded ({e}); point it at a local copy "
                         "of that CLIP model, or run where the hub is reachable") from e  # fmt: skip
    if cfg.get("mm_hidden_size", vision.config.hidden_size) != vision.config.hidden_size:
        raise ValueError(f"{path}/config.json: mm_hidden_size {cfg['mm_hidden_size']} but mm_vision_tower {tower!r} has "
                         f"hidden_size {vision.config.hidden_size}; point mm_vision_tower at the tower it was trained with")  # fmt: skip

    state = read_original_weights(path)
    llm = _load_llm(path, cfg, state, dtype)
    tuned_tower = {k.removeprefix(VISION_PREFIX).removeprefix("vision_model."): v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    if tuned_tower:  # the checkpoint's own (tuned) tower overrides mm_vision_tower's weights
        _check_keys(f"{path} (vision tower)", *vision.load_state_dict(tuned_tower, strict=False), set(),
                    f"model.vision_tower.vision_tower.* must be the weights of {tower!r}")  # fmt: skip

    bundle = assemble_model(spec, vision, llm, _load_tokenizer(path, llm), projector, *image_stats(tower))
    inner = bundle.model.model
    # linear: the HF pair's linear_2 stays the identity that install_projector set
    missing, unexpected = inner.multi_modal_projector.load_state_dict(_projector_weights(state, projector), strict=False)
    _check_keys(f"{path} (projector)", missing, unexpected,
                {"linear_2.weight", "linear_2.bias"} if projector_depth(projector) == 1 else set(),
                f"check mm_projector_type ({projector!r}) in config.json against the model.mm_projector.* keys")  # fmt: skip
    if hasattr(inner, "image_newline"):
        if "model.image_newline" in state:
            inner.image_newline.data.copy_(state["model.image_newline"])
        elif cfg.get("image_aspect_ratio") == "anyres":
            raise ValueError(f"{path}: image_aspect_ratio anyres with spatial_unpad but no model.image_newline weight; "
                             "the checkpoint is incomplete")  # fmt: skip
        else:  # model.image_mode: anyres on a LLaVA-1.5 checkpoint: a NeXT starting point
            warnings.warn(f"{path}: converted to anyres from image_aspect_ratio {cfg.get('image_aspect_ratio')!r}; "
                          "image_newline is freshly initialised and needs training")  # fmt: skip
    # a non-anyres checkpoint's model.image_newline is unused by the original code too: dropped
    return bundle
