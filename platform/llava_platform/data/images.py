"""Image loading with clear errors, and the image processor for each image mode.

Modes (all three are transformers' own processors, configured as LLaVA uses them):
    square  CLIP's resize-shortest-edge + center crop (original LLaVA's default)
    pad     LLaVA-1.5's expand2square: pad to a square with the mean colour, then resize
    anyres  LLaVA-NeXT: best grid pinpoint, tiles of image_size plus the resized base image
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import is_torchvision_available

# Same processing either way; the torchvision backend is faster where installed (GPU images usually).
if is_torchvision_available():
    from transformers import LlavaImageProcessor, LlavaNextImageProcessor
else:
    from transformers import LlavaImageProcessorPil as LlavaImageProcessor
    from transformers import LlavaNextImageProcessorPil as LlavaNextImageProcessor

__all__ = ["ImageError", "load_image", "anyres_pinpoints", "ANYRES_336_PINPOINTS", "build_image_processor", "preprocess_images", "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image


class ImageError(ValueError):
    """An image cannot be used; the message names the file and the fix."""


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__} image>"


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A decoded RGB image. Transparent images are composited on white (what a viewer shows)."""
    name = _name(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            raise ImageError(f"image not found: {name}; check the path and data.image_folder")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            if isinstance(e, UnidentifiedImageError):
                raise ImageError(f"{name}: not an image file PIL can read (empty, corrupt or another format)") from e
            raise ImageError(f"{name}: refused as a decompression bomb ({e}); downscale it") from e
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image is {width}x{height} ({width * height} pixels), over the limit of {max_pixels}; "
            "downscale it or raise data.max_image_pixels"
        )
    try:
        image.load()  # decode now: truncation and corrupt data surface here, not deep in a worker
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is truncated or corrupt ({e}); re-export or remove it") from e
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# LLaVA-NeXT's grid {2x2, 1x{2,3}, {2,3}x1} of 336-px tiles, as (height, width)
ANYRES_336_PINPOINTS = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]


def anyres_pinpoints(image_size: int) -> list[list[int]]:
    """LLaVA-NeXT's pinpoints for tiles of image_size pixels (the 336-px grid, scaled)."""
    return [[h * image_size // 336, w * image_size // 336] for h, w in ANYRES_336_PINPOINTS]


def build_image_processor(mode: str, image_size: int, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                          grid_pinpoints: list[list[int]] | None = None):  # fmt: skip
    """transformers' image processor configured for one of square / pad / anyres."""
    common = dict(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_convert_rgb=True,
    )
    if mode in ("square", "pad"):
        # do_pad: expand2square with background tuple(int(255 * m) for m in image_mean)
        return LlavaImageProcessor(do_pad=mode == "pad", **common)
    if mode == "anyres":
        pinpoints = [list(p) for p in grid_pinpoints] if grid_pinpoints else anyres_pinpoints(image_size)
        return LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=True, **common)
    raise ValueError(f"unknown image mode {mode!r}; use square, pad or anyres")


def preprocess_images(images: list[Image.Image], processor) -> dict[str, torch.Tensor]:
    """pixel_values (N, 3, S, S) — anyres: (N, P, 3, S, S) plus image_sizes (N, 2) as (height, width)."""
    return dict(processor(images=images, return_tensors="pt"))
