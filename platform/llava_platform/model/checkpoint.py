"""Source 2 of the loading chain: the platform's own checkpoints (HF safetensors + processor + resolved spec).

Saving (atomically), and loading of a full HF-format LLaVA / LLaVA-NeXT checkpoint. Layout of a checkpoint
directory (plain transformers loads it as it is):

    config.json, model*.safetensors, generation_config.json    the model
    processor_config.json, tokenizer*, chat_template.jinja      the processor
    llava_platform.yaml                                         resolved ModelSpec (template, image mode ...)

An adapter checkpoint has adapter_config.json + adapter_model.safetensors (model/lora.py) in
place of the model files; its llava_platform.yaml names the base model, its quantization and the
LoRA settings. This module reads that spec (adapter_base_spec) and puts the adapters on a base
(attach_adapters); building the base, from whichever source the spec names, is builder.py's job,
so `builder.load_checkpoint` is the one call that loads either kind. Within the package it depends on bundle,
lora and projector only.
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
from llava_platform.model.bundle import DTYPES, ModelBundle, quantization_config
from llava_platform.model.lora import ADAPTER_CONFIG, apply_lora, load_adapter_weights, save_adapter
from llava_platform.model.projector import restore_projector_weights

__all__ = [
    "SPEC_FILE", "save_checkpoint", "copy_checkpoint", "load_checkpoint_spec", "load_hf_checkpoint", "atomic_directory",
    "is_adapter_checkpoint", "adapter_base_spec", "attach_adapters",
]  # fmt: skip

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


def save_checkpoint(bundle: ModelBundle, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
                    extra_files: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write model (safetensors), processor and resolved spec to out_dir, atomically.

    A LoRA-wrapped model is written as an adapter checkpoint (adapters + trained projector; the
    base is rebuilt from the saved spec). `state_dict` replaces the module's own weights
    (ZeRO-3 gathers them: the module itself holds only a partition). `extra_files` ({file name:
    text}, e.g. final/'s provenance.json) are written in the same atomic step.
    """
    with atomic_directory(out_dir) as tmp:
        if isinstance(bundle.model, PeftModel):
            save_adapter(bundle.model, tmp)
        else:
            bundle.model.save_pretrained(tmp, state_dict=state_dict)
        bundle.processor.save_pretrained(tmp)
        (tmp / SPEC_FILE).write_text(dump(bundle.spec))
        _write_files(tmp, extra_files)
    return Path(out_dir)


def copy_checkpoint(source: str | Path, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """A saved checkpoint copied file for file to out_dir (the weights exactly as saved), plus `extra_files`, atomically."""
    with atomic_directory(out_dir) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        _write_files(tmp, extra_files)
    return Path(out_dir)


def _write_files(directory: Path, files: dict[str, str] | None) -> None:
    for name, text in (files or {}).items():
        (directory / name).write_text(text)


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


def load_hf_checkpoint(path: str | Path, spec: ModelSpec, device: str | torch.device | None = None) -> ModelBundle:
    """Load a full HF-format LLaVA / LLaVA-NeXT checkpoint (a directory, or a hub id for users with network).

    The template comes from `spec.template`, else from the checkpoint's llava_platform.yaml;
    a checkpoint with neither is an error (no guessing from the model name). `device` places
    the weights as they load (needed for bitsandbytes on a GPU); default CPU.
    """
    local = Path(path)
    saved = load_checkpoint_spec(local)
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


def is_adapter_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a local adapter checkpoint (LoRA adapters over a base its llava_platform.yaml names)."""
    return (Path(path) / ADAPTER_CONFIG).exists()


def _chosen_at_load(spec: ModelSpec, saved: ModelSpec) -> dict:
    # a template given at load wins over the saved one, as for full checkpoints
    return dict(dtype=spec.dtype, template=spec.template or saved.template)


def adapter_base_spec(path: Path, spec: ModelSpec, saved: ModelSpec | None) -> ModelSpec:
    """The spec of the base model an adapter checkpoint's adapters were trained on (its source and quantization,
    from the saved spec `saved`), with the dtype and template asked for at load (`spec`)."""
    if saved is None or saved.lora is None:
        raise ValueError(f"{path}: an adapter checkpoint needs its {SPEC_FILE} (with model.lora) to rebuild the base model")
    _check_quantization(path, spec, saved)
    return saved.model_copy(update=dict(lora=None, **_chosen_at_load(spec, saved)))


def attach_adapters(base: ModelBundle, path: Path, spec: ModelSpec, saved: ModelSpec,
                    dequantize_to: torch.dtype | None = None) -> ModelBundle:  # fmt: skip
    """The adapter checkpoint at `path` applied, unmerged, to `base` (built from adapter_base_spec).
    `dequantize_to`: a quantized base's LLM linears become nn.Linear of this dtype holding dequant(quant(W))
    before the adapters go on (for a merge into what training computed with)."""
    model = base.model
    if dequantize_to is not None and getattr(model, "is_quantized", False):
        # right after loading: bitsandbytes' CPU inference repacks 4-bit weights into a layout dequantize() misreads
        model = model.dequantize(dtype=dequantize_to)
    model = apply_lora(model, saved.lora)
    load_adapter_weights(model, path)
    return ModelBundle(model.eval(), base.processor, base.template, saved.model_copy(update=_chosen_at_load(spec, saved)))


def _check_quantization(path: Path, spec: ModelSpec, saved: ModelSpec) -> None:
    """Adapters answer as trained only on the base they were trained on: a quantization asked for at load
    (set explicitly in the spec, not its default) must be the saved one."""
    if "quantization" in spec.model_fields_set and spec.quantization != saved.quantization:
        raise ValueError(
            f"{path}: model.quantization={spec.quantization}, but these adapters were trained on a "
            f"model.quantization={saved.quantization} base, and on another base they do not answer as trained. "
            f"Load the run's merged final/ instead (a plain model, which loads with any model.quantization), or "
            f"set model.quantization: {saved.quantization} (or leave it out)"
        )
