"""Save and load checkpoints: HF safetensors + processor + the resolved spec, written atomically.

Layout of a checkpoint directory (plain transformers loads it as it is):

    config.json, model*.safetensors, generation_config.json    the model
    processor_config.json, tokenizer*, chat_template.jinja      the processor
    llava_platform.yaml                                         resolved ModelSpec (template, image mode ...)

An adapter checkpoint has adapter_config.json + adapter_model.safetensors (model/lora.py) in
place of the model files; its llava_platform.yaml names the base model and the LoRA settings.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import yaml
from peft import PeftModel
from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from llava_platform.config import ModelSpec, dump, validate
from llava_platform.data.templates import get_template
from llava_platform.model.builder import DTYPES, ModelBundle, quantization_config
from llava_platform.model.lora import ADAPTER_CONFIG, apply_lora, load_adapter_weights, save_adapter
from llava_platform.model.projector import restore_projector_weights

__all__ = ["SPEC_FILE", "save_checkpoint", "load_checkpoint", "load_checkpoint_spec", "atomic_directory"]

SPEC_FILE = "llava_platform.yaml"
MODEL_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}


class atomic_directory:
    """`with atomic_directory(final) as tmp:` write into tmp; on success tmp is renamed to final.

    A crash leaves only a hidden `.name.tmp-PID` folder, never a half-written `final`.
    An existing `final` is replaced only after the new one is complete.
    """

    def __init__(self, final: str | Path):
        self.final = Path(final)
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(bundle: ModelBundle, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model (safetensors), processor and resolved spec to out_dir, atomically.

    A LoRA-wrapped model is written as an adapter checkpoint (adapters + trained projector; the
    base is rebuilt from the saved spec). `state_dict` replaces the module's own weights
    (ZeRO-3 gathers them: the module itself holds only a partition).
    """
    with atomic_directory(out_dir) as tmp:
        if isinstance(bundle.model, PeftModel):
            save_adapter(bundle.model, tmp)
        else:
            bundle.model.save_pretrained(tmp, state_dict=state_dict)
        bundle.processor.save_pretrained(tmp)
        (tmp / SPEC_FILE).write_text(dump(bundle.spec))
    return Path(out_dir)


def load_checkpoint_spec(path: str | Path) -> ModelSpec | None:
    """The llava_platform.yaml saved with a checkpoint directory (None for a hub id or a foreign checkpoint)."""
    file = Path(path) / SPEC_FILE
    if not file.exists():
        return None
    return validate(yaml.safe_load(file.read_text()), ModelSpec, str(file))


def _image_mode_of(config, processor) -> str:
    """What a checkpoint saved elsewhere (e.g. llava-hf) does with images, read off its processor."""
    if config.model_type == "llava_next":
        return "anyres"
    return "pad" if getattr(processor.image_processor, "do_pad", False) else "square"


def load_checkpoint(path: str | Path, spec: ModelSpec | None = None, device: str | torch.device | None = None) -> ModelBundle:
    """Load an HF-format LLaVA / LLaVA-NeXT checkpoint (a directory, or a hub id for users with network),
    or a platform adapter checkpoint (LoRA adapters over the base its llava_platform.yaml names).

    The template comes from `spec.template`, else from the checkpoint's llava_platform.yaml;
    a checkpoint with neither is an error (no guessing from the model name). `device` places
    the weights as they load (needed for bitsandbytes on a GPU); default CPU.
    """
    spec = spec or ModelSpec(checkpoint=str(path))
    local = Path(path)
    saved = load_checkpoint_spec(local)
    if (local / ADAPTER_CONFIG).exists():
        return _load_adapter_checkpoint(local, spec, saved, device)
    template = spec.template or (saved.template if saved else None)
    if template is None:
        raise ValueError(
            f"{path}: no conversation template: this checkpoint has no {SPEC_FILE}; "
            "set model.template (e.g. vicuna_v1 for llava-1.5 / llava-v1.6-vicuna, mistral_instruct for llava-v1.6-mistral)"
        )
    config = AutoConfig.from_pretrained(str(path))
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise ValueError(f"{path}: model_type {config.model_type!r} is not a LLaVA model; expected one of {sorted(MODEL_CLASSES)}")
    kwargs = dict(dtype=DTYPES[spec.dtype], quantization_config=quantization_config(spec))
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    model = cls.from_pretrained(str(path), **kwargs)
    if local.is_dir():
        restore_projector_weights(model, local)
    processor = AutoProcessor.from_pretrained(str(path))
    if spec.template is not None:  # chosen over the saved one: the processor's chat template follows (and so does a save)
        processor.chat_template = get_template(template).chat_template()
    resolved = spec.model_copy(update=dict(
        template=template,
        image_mode=spec.image_mode or (saved.image_mode if saved else _image_mode_of(config, processor)),
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ))  # fmt: skip
    return ModelBundle(model, processor, get_template(template), resolved)


def _load_adapter_checkpoint(path: Path, spec: ModelSpec, saved: ModelSpec | None, device) -> ModelBundle:
    """The base model the adapters were trained on (from the saved spec), with the adapters applied, unmerged."""
    from llava_platform.model.builder import build_model  # builder imports this module

    if saved is None or saved.lora is None:
        raise ValueError(f"{path}: an adapter checkpoint needs its {SPEC_FILE} (with model.lora) to rebuild the base model")
    # a template given at load wins over the saved one, as for full checkpoints
    chosen = dict(dtype=spec.dtype, template=spec.template or saved.template)
    bundle = build_model(saved.model_copy(update=dict(lora=None, quantization=spec.quantization, **chosen)), device=device)
    model = apply_lora(bundle.model, saved.lora)
    load_adapter_weights(model, path)
    return ModelBundle(model.eval(), bundle.processor, bundle.template, saved.model_copy(update=chosen))
