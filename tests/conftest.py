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
