"""Image loading with clear errors, and the image processor for each image mode.

Modes (all three are transformers' own processors, configured as LLaVA uses them):
    square  CLIP's resize-shortest-edge + center crop (original LLaVA's default)
    pad     LLaVA-1.5's expand2square: pad to a square with the mean colour, then resize
    anyres  LLaVA-NeXT: best grid pinpoint, tiles of image_size plus the resized base image

Loading follows transformers' `convert_to_rgb`, so `processor(load_image(x))` equals
`processor(x)`: transparency is composited on white. One exception: 16-bit greyscale is
scaled to 8 bits, where convert("RGB") (and so transformers) would clip it to white.
Like original LLaVA and transformers, EXIF orientation is not applied.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import is_torchvision_available

from llava_platform.storage import Storage, is_uri

# Same processing either way; the torchvision backend is faster where installed (GPU images usually).
# Importing the *Pil names directly avoids transformers' "falling back to PIL" notice.
if is_torchvision_available():
    from transformers import LlavaImageProcessor, LlavaNextImageProcessor
else:
    from transformers import LlavaImageProcessorPil as LlavaImageProcessor
    from transformers import LlavaNextImageProcessorPil as LlavaNextImageProcessor

__all__ = [
    "ImageError", "ImageNotFound", "load_image", "anyres_pinpoints", "ANYRES_336_PINPOINTS", "IMAGE_MODES",
    "build_image_processor", "preprocess_images", "pad_patches", "DEFAULT_MAX_PIXELS", "PixelNormalizer", "load_image_at",
]  # fmt: skip

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own Image.MAX_IMAGE_PIXELS default
IMAGE_MODES = ("square", "pad", "anyres")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image


class ImageError(ValueError):
    """An image cannot be used; the message names the file and the fix."""


class ImageNotFound(ImageError):
    """No file where an image should be (the data check reports it as missing_image, not unreadable_image)."""

    @classmethod
    def at(cls, path) -> "ImageNotFound":
        return cls(f"image not found: {path}; check the path and data.image_folder")


def _name(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Image.Image) and getattr(source, "filename", ""):
        return str(source.filename)  # an Image.open()ed file still knows its path
    return f"<{'bytes' if isinstance(source, (bytes, bytearray)) else type(source).__name__} image>"


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:  # fmt: skip
    """A decoded RGB image, or ImageError naming the file (or `name`, e.g. the URI bytes came from) and the fix.

    The size is checked from the header before any pixel is decoded. PIL itself also refuses
    images over 2 * PIL.Image.MAX_IMAGE_PIXELS (and warns over 1x): to load larger ones raise
    that too, not only max_pixels.
    """
    name = name or _name(source)
    if isinstance(source, Image.Image):
        return _decode(source, name, max_pixels)  # the caller's image: not ours to close
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ImageNotFound.at(name)
        empty = Path(source).stat().st_size == 0
    elif isinstance(source, (bytes, bytearray)):
        empty = len(source) == 0
    else:
        raise TypeError(f"load_image takes a path, bytes or a PIL image, got {type(source).__name__}")
    if empty:
        raise ImageError(f"{name}: file is empty (0 bytes); re-export it or remove it from the dataset")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name}: not an image file PIL can read (corrupt, or another format); convert it to PNG or JPEG "
            "or remove it from the dataset"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"{name}: refused as a decompression bomb by PIL ({e}); downscale it, or raise both "
            "data.max_image_pixels and PIL.Image.MAX_IMAGE_PIXELS"
        ) from e
    except OSError as e:  # e.g. a JPEG cut inside its header: "Truncated File Read"
        raise ImageError(f"{name}: image data is truncated or corrupt ({e}); re-export or remove it") from e
    with image:  # closes the file on every path; _decode returns a new image
        return _decode(image, name, max_pixels)


def load_image_at(path: str, storage: Storage, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """load_image of a local file or an object (s3://, gs://); ImageNotFound when nothing is there."""
    if not is_uri(path):
        return load_image(path, max_pixels=max_pixels)
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError as e:
        raise ImageNotFound.at(path) from e
    return load_image(data, max_pixels=max_pixels, name=path)


def _decode(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    width, height = image.size  # from the header: nothing decoded yet
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has zero size ({width}x{height}); remove it from the dataset")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image is {width}x{height} ({width * height} pixels), over the limit of {max_pixels}; "
            "downscale it or raise data.max_image_pixels"
        )
    try:
        image.load()  # decode now: truncation and corrupt data surface here, not deep in a worker
    except Image.DecompressionBombError as e:  # e.g. a GIF frame larger than its header said
        raise ImageError(f"{name}: refused as a decompression bomb by PIL ({e}); downscale it") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is truncated or corrupt ({e}); re-export or remove it") from e
    try:
        return _to_rgb(image)
    except ValueError as e:  # a mode PIL cannot convert, e.g. LAB
        raise ImageError(f"{name}: cannot convert image mode {image.mode} to RGB ({e}); re-export it as RGB") from e


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, always a new image. Same test and compositing as transformers' convert_to_rgb."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit greyscale (PNG/TIFF): convert("RGB") clips every value over 255 to white.
        # I;16 is 0..65535 by definition; I/F only when values exceed 8 bits.
        pixels = np.asarray(image, dtype=np.float64)  # (H, W)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")  # L, P, 1, CMYK, YCbCr; a copy when already RGB


# LLaVA-NeXT's grid {2x2, 1x{2,3}, {2,3}x1} of 336-px tiles, as (height, width)
ANYRES_336_PINPOINTS = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]


def anyres_pinpoints(image_size: int) -> list[list[int]]:
    """LLaVA-NeXT's pinpoints for tiles of image_size pixels: the 336-px grid scaled by image_size / 336.

    Every 336-px pinpoint is a whole number of tiles, so the scaled grid is exact (64 -> 64, 128, 192).
    """
    return [[h * image_size // 336, w * image_size // 336] for h, w in ANYRES_336_PINPOINTS]


def build_image_processor(mode: str, image_size: int, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                          grid_pinpoints: list[list[int]] | None = None):  # fmt: skip
    """transformers' image processor configured for one of square / pad / anyres.

    The result round-trips through save_pretrained + AutoImageProcessor.from_pretrained.
    grid_pinpoints are (height, width) pairs, each side a multiple of image_size.
    """
    if mode not in IMAGE_MODES:
        raise ValueError(f"unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
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
    pinpoints = [list(p) for p in grid_pinpoints] if grid_pinpoints else anyres_pinpoints(image_size)
    bad = [p for p in pinpoints if len(p) != 2 or any(side <= 0 or side % image_size for side in p)]
    if bad:
        raise ValueError(
            f"anyres grid pinpoints {bad} are not (height, width) multiples of the tile size {image_size}; "
            f"use whole tiles, e.g. {anyres_pinpoints(image_size)}"
        )
    # do_pad here pads the patch dimension of a batch; the tiles themselves are padded with black, as in LLaVA-NeXT
    return LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=True, **common)


def pad_patches(pixel_values: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """Zero-pad anyres patch stacks along `dim` to the longest, so they stack; image_sizes tells the model which are real."""
    most = max(p.shape[dim] for p in pixel_values)
    return [torch.cat([p, p.new_zeros(*p.shape[:dim], most - p.shape[dim], *p.shape[dim + 1 :])], dim=dim) for p in pixel_values]


def preprocess_images(images: list[Image.Image], processor) -> dict[str, torch.Tensor]:
    """pixel_values (N, 3, S, S) — anyres: (N, P, 3, S, S) plus image_sizes (N, 2) as (height, width).

    anyres pads P to the largest image's patch count with zeros; image_sizes tells the model which are real.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if not images:
        raise ValueError("preprocess_images got no images; pass a list of at least one PIL image")
    return dict(processor(images=list(images), return_tensors="pt"))


class PixelNormalizer:
    """uint8 pixels, as the image processor leaves them with do_rescale and do_normalize off, -> the model's
    input, with the processor's own arithmetic (its PIL backend: x * rescale_factor in float64, then
    (x - mean) / std in float32), so a training worker's pixels equal what the processor would have given.

    Training data travels as uint8 (4x less in Ray's object store and on the way to the device) and
    becomes float on the worker's device: pixels (..., 3, S, S) uint8 -> float32, cast to `dtype`.
    """

    def __init__(self, image_processor):
        self.factor = float(image_processor.rescale_factor)
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise TypeError(f"PixelNormalizer takes uint8 pixels, got {pixels.dtype}")
        scaled = (pixels.to(torch.float64) * self.factor).to(torch.float32)
        return ((scaled - self.mean.to(pixels.device)) / self.std.to(pixels.device)).to(dtype)
