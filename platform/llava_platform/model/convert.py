"""Convert a checkpoint of the original LLaVA code (haotian-liu/LLaVA) into the HF layout.

Original layout: one flat LLM config (model_type llava_llama / llava_mistral) with mm_* fields,
weights with the LLM's own keys plus

    model.mm_projector.{0,2,...}.*   nn.Sequential(Linear, GELU, Linear, ...)   ("linear": model.mm_projector.*)
    model.image_newline              LLaVA-NeXT only
    model.vision_tower.vision_tower.*  only when the tower was tuned; else it is loaded from mm_vision_tower

and a tokenizer without an <image> token (the original code splices features at id -200).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from llava_platform.config import ModelSpec
from llava_platform.model.builder import DTYPES, ModelBundle, _resolve, assemble_model, image_stats, load_vision_tower
from llava_platform.model.projector import projector_depth

__all__ = ["load_original_checkpoint", "read_original_weights"]

LLMS = {"llava_llama": (LlamaConfig, LlamaForCausalLM), "llava_mistral": (MistralConfig, MistralForCausalLM)}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}  # original -> HF vision_feature_select_strategy
IMAGE_MODE = {"pad": "pad", "square": "square", "anyres": "anyres"}
VISION_PREFIX = "model.vision_tower.vision_tower."


def read_original_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors or pytorch_model*.bin checkpoint."""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu", weights_only=True))
    return state


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
    if aspect == "anyres" and cfg.get("mm_patch_merge_type", "spatial_unpad") != "spatial_unpad":
        raise ValueError(f"{path}/config.json: mm_patch_merge_type {cfg['mm_patch_merge_type']!r}: transformers' LLaVA-NeXT "
                         "implements spatial_unpad only")  # fmt: skip
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in SELECT_FEATURE:
        raise ValueError(f"{path}/config.json: mm_vision_select_feature {select!r}: expected patch or cls_patch")
    update = dict(
        image_mode=spec.image_mode or IMAGE_MODE[aspect],
        vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=SELECT_FEATURE[select],
    )
    if cfg.get("image_grid_pinpoints") and not spec.image_grid_pinpoints:
        # original LLaVA lists (width, height) (select_best_resolution iterates `for width, height in ...`);
        # transformers lists (height, width)
        update["image_grid_pinpoints"] = [(h, w) for w, h in cfg["image_grid_pinpoints"]]
    return _resolve(spec.model_copy(update=update), None, cfg.get("mm_projector_type", "linear"))


def _projector_weights(state: dict[str, torch.Tensor], projector: str) -> dict[str, torch.Tensor]:
    """model.mm_projector.{0,2,4}.* -> linear_{1,2,3}.*  (linear: model.mm_projector.* -> linear_1.*)."""
    out = {}
    for key, tensor in state.items():
        if not key.startswith("model.mm_projector."):
            continue
        rest = key.removeprefix("model.mm_projector.")
        if projector_depth(projector) == 1:
            out[f"linear_1.{rest}"] = tensor
        else:
            index, param = rest.split(".", 1)
            out[f"linear_{int(index) // 2 + 1}.{param}"] = tensor  # Sequential: linears at 0, 2, 4, ...
    return out


def load_original_checkpoint(path: str | Path, spec: ModelSpec) -> ModelBundle:
    """An HF LlavaForConditionalGeneration / LlavaNext... with the original checkpoint's weights."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    model_type = cfg.get("model_type")
    if model_type not in LLMS:
        raise ValueError(f"{path}/config.json: model_type {model_type!r} is not an original LLaVA checkpoint; "
                         f"expected one of {sorted(LLMS)} (an HF LLaVA checkpoint goes in model.checkpoint)")  # fmt: skip
    spec = _resolve_original(path, cfg, spec)
    projector = cfg.get("mm_projector_type", "linear")
    tower = cfg.get("mm_vision_tower")
    if not tower:
        raise ValueError(f"{path}/config.json: mm_vision_tower is missing; set it to the CLIP model the checkpoint was trained with")
    try:
        vision = load_vision_tower(tower, DTYPES[spec.dtype])
    except OSError as e:
        raise ValueError(f"{path}/config.json: mm_vision_tower {tower!r} cannot be loaded ({e}); point it at a local copy "
                         "of that CLIP model, or run where the hub is reachable") from e  # fmt: skip

    state = read_original_weights(path)
    config_cls, llm_cls = LLMS[model_type]
    llm_fields = {k: v for k, v in cfg.items() if not re.match(r"mm_|image_|tune_|freeze_|tokenizer_|use_mm_|unfreeze_", k)}
    llm_fields.update(model_type=config_cls.model_type, architectures=[llm_cls.__name__])
    llm = llm_cls(config_cls(**llm_fields)).to(DTYPES[spec.dtype])
    llm_state = {k: v for k, v in state.items() if not k.startswith(("model.mm_projector.", "model.vision_tower.", "model.image_newline"))}
    llm.load_state_dict(llm_state, strict=not llm.config.tie_word_embeddings)
    tuned_tower = {k.removeprefix(VISION_PREFIX).removeprefix("vision_model."): v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    if tuned_tower:
        vision.load_state_dict(tuned_tower, strict=True)

    bundle = assemble_model(spec, vision, llm, AutoTokenizer.from_pretrained(path), projector, *image_stats(tower))
    inner = bundle.model.model
    inner.multi_modal_projector.load_state_dict(_projector_weights(state, projector), strict=projector_depth(projector) != 1)
    if "model.image_newline" in state:
        if not hasattr(inner, "image_newline"):
            raise ValueError(f"{path}: has model.image_newline (LLaVA-NeXT) but image_aspect_ratio is not anyres")
        inner.image_newline.data.copy_(state["model.image_newline"])
    return bundle
