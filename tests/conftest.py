"""Shared fixtures: a tiny random-init model built once per session, its saved checkpoint, images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_job(module: str, *args: str, stdin: str | None = None, timeout: int = 300):
    """Run `python -m jobs.<module>` from the repo root, as a user would."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", f"jobs.{module}", *args],
        cwd=REPO, input=stdin, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def plain_tokenizer():
    """A byte-level tokenizer with no <image> and no pad token, as a hub LLM's would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(["hello world, what is it?"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_bundle():
    from llava_platform.config import ModelSpec
    from llava_platform.model import build_model

    torch.manual_seed(0)
    return build_model(ModelSpec(preset="tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bundle, tmp_path_factory) -> Path:
    from llava_platform.model import save_checkpoint

    return save_checkpoint(tiny_bundle, tmp_path_factory.mktemp("ckpt") / "tiny")
