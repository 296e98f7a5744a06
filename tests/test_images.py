"""Image modes match LLaVA and transformers' processors; bad images fail with messages that name the fix."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, LlavaImageProcessor, LlavaNextImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from conftest import make_image
from llava_platform.data.images import ImageError, build_image_processor, load_image

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def llava_pad_reference(image: Image.Image, size: int = 336) -> np.ndarray:
    """Original LLaVA-1.5: expand2square with the mean colour, then CLIP's resize + center crop + normalise."""
    background = tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), background)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    resized = square.resize((size, size), Image.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    return ((pixels - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)).transpose(2, 0, 1)


@pytest.mark.parametrize("width, height", [(50, 30), (30, 50)])
def test_pad_matches_llava_expand2square(width, height):
    image = make_image(width, height)
    ours = build_image_processor("pad", 336)(images=[image], return_tensors="pt")["pixel_values"][0]
    reference = torch.from_numpy(llava_pad_reference(image)).float()
    assert ours.shape == (3, 336, 336)
    assert torch.allclose(ours, reference, atol=1e-5)
    # the padded border is exactly the mean colour, which normalises to ~0
    border = ours[:, 0, 0] if width < height else ours[:, 0, 168]
    expected = torch.tensor([(int(m * 255) / 255 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    assert torch.allclose(border, expected, atol=1e-6)
    hf = LlavaImageProcessor(do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert torch.equal(ours, hf(images=[image], return_tensors="pt")["pixel_values"][0])


def test_square_matches_clip_processor_of_llava_hf():
    image = make_image(500, 300, seed=1)
    ours = build_image_processor("square", 336)(images=[image], return_tensors="pt")["pixel_values"]
    clip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert torch.equal(ours, clip(images=[image], return_tensors="pt")["pixel_values"])
    assert ours.shape == (1, 3, 336, 336)


@pytest.mark.parametrize("width, height, grid", [(500, 300, (1, 2)), (300, 900, (3, 1)), (800, 800, (2, 2))])
def test_anyres_matches_llava_next_processor(width, height, grid):
    image = make_image(width, height, seed=2)
    ours = build_image_processor("anyres", 336)(images=[image], return_tensors="pt")
    hf = LlavaNextImageProcessor(
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )(images=[image], return_tensors="pt")
    assert torch.equal(ours["pixel_values"], hf["pixel_values"])
    assert ours["image_sizes"].tolist() == hf["image_sizes"].tolist() == [[height, width]]
    rows, cols = grid
    # select_best_resolution's grid: the base image plus rows x cols tiles of 336 px
    assert ours["pixel_values"].shape == (1, 1 + rows * cols, 3, 336, 336)


def test_anyres_pinpoints_scale_with_tile_size():
    processor = build_image_processor("anyres", 64)
    assert processor.image_grid_pinpoints == [[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_any_mode_comes_back_rgb(mode, tmp_path):
    image = make_image(20, 10).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def png_with_header_size(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose IHDR claims width x height (a decompression bomb, without the memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_bad_images_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ImageError, match=r"image not found: .*nope.png; check the path and data.image_folder"):
        load_image(tmp_path / "nope.png")

    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageError, match=r"notes.png: not an image file"):
        load_image(text)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.jpg: not an image file"):
        load_image(empty)

    for fmt in ("PNG", "JPEG"):
        whole = tmp_path / f"whole.{fmt.lower()}"
        make_image(64, 64).save(whole, fmt)
        cut = tmp_path / f"cut.{fmt.lower()}"
        cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
        with pytest.raises(ImageError, match=rf"cut.{fmt.lower()}: image data is truncated or corrupt .*re-export or remove it"):
            load_image(cut)

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header_size(30000, 30000))
    with pytest.raises(ImageError, match=r"bomb.png: (image is 30000x30000 \(900000000 pixels\)|refused as a decompression bomb).*downscale it"):
        load_image(bomb)
    big = tmp_path / "big.png"
    big.write_bytes(png_with_header_size(5000, 4000))
    with pytest.raises(ImageError, match=r"big.png: image is 5000x4000 \(20000000 pixels\), over the limit of 1000000; downscale it or raise data.max_image_pixels"):
        load_image(big, max_pixels=1_000_000)


def test_bytes_and_pil_sources():
    import io

    buffer = io.BytesIO()
    make_image(8, 6).save(buffer, "PNG")
    assert load_image(buffer.getvalue()).size == (8, 6)
    with pytest.raises(ImageError, match=r"<bytes image>: not an image file"):
        load_image(b"garbage")
