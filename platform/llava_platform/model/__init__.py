"""Build, load and save LLaVA models (transformers' Llava / LlavaNext classes)."""

from llava_platform.model.builder import ModelBundle, build_model, build_processor
from llava_platform.model.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["ModelBundle", "build_model", "build_processor", "load_checkpoint", "save_checkpoint"]
