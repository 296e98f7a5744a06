"""Save and load checkpoints: HF safetensors + processor + the resolved spec, written atomically.

Layout of a checkpoint directory (plain transformers loads it as it is):

    config.json, model*.safetensors, generation_config.json    the model
    processor_config.json, tokenizer*, chat_template.jinja      the processor
    llava_platform.yaml                                         resolved ModelSpec (template, image mode ...)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml
from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from llava_platform.config import ModelSpec, dump, validate
from llava_platform.data.templates import get_template
from llava_platform.model.builder import DTYPES, ModelBundle, quantization_config
from llava_platform.model.projector import restore_projector_weights

__all__ = ["SPEC_FILE", "save_checkpoint", "load_checkpoint", "atomic_directory"]

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


def save_checkpoint(bundle: ModelBundle, out_dir: str | Path) -> Path:
    """Write model (safetensors), processor and resolved spec to out_dir, atomically."""
    with atomic_directory(out_dir) as tmp:
        bundle.model.save_pretrained(tmp)
        bundle.processor.save_pretrained(tmp)
        (tmp / SPEC_FILE).write_text(dump(bundle.spec))
    return Path(out_dir)


def _saved_spec(path: Path) -> ModelSpec | None:
    file = path / SPEC_FILE
    if not file.exists():
        return None
    return validate(yaml.safe_load(file.read_text()), ModelSpec, str(file))


def _image_mode_of(config, processor) -> str:
    """What a checkpoint saved elsewhere (e.g. llava-hf) does with images, read off its processor."""
    if config.model_type == "llava_next":
        return "anyres"
    return "pad" if getattr(processor.image_processor, "do_pad", False) else "square"


def load_checkpoint(path: str | Path, spec: ModelSpec | None = None) -> ModelBundle:
    """Load an HF-format LLaVA / LLaVA-NeXT checkpoint (a directory, or a hub id for users with network).

    The template comes from `spec.template`, else from the checkpoint's llava_platform.yaml;
    a checkpoint with neither is an error (no guessing from the model name).
    """
    spec = spec or ModelSpec(checkpoint=str(path))
    local = Path(path)
    saved = _saved_spec(local) if local.is_dir() else None
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
    model = cls.from_pretrained(str(path), **kwargs)
    if local.is_dir():
        restore_projector_weights(model, local)
    processor = AutoProcessor.from_pretrained(str(path))
    resolved = spec.model_copy(update=dict(
        template=template,
        image_mode=spec.image_mode or (saved.image_mode if saved else _image_mode_of(config, processor)),
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ))  # fmt: skip
    return ModelBundle(model, processor, get_template(template), resolved)
