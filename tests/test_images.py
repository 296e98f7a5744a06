"""Image modes match LLaVA and transformers' processors; bad images fail with messages that name the fix."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from transformers import AutoImageProcessor, CLIPImageProcessor, LlavaImageProcessor, LlavaNextImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from conftest import make_image
from llava_platform.data.images import ImageError, build_image_processor, load_image, preprocess_images

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def clip_reference(image: Image.Image, size: int = 336) -> np.ndarray:
    """CLIPImageProcessor as original LLaVA ran it: shortest edge -> size (bicubic), center crop, /255, normalise."""
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    pixels = np.asarray(cropped, dtype=np.float64) / 255.0  # (S, S, 3)
    return ((pixels - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)).transpose(2, 0, 1)


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """llava/mm_utils.py::expand2square, verbatim in behaviour: image centred on a square of `background`."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - w) // 2, 0) if h > w else (0, (side - h) // 2))
    return square


def llava_pad_reference(image: Image.Image, size: int = 336) -> np.ndarray:
    """Original LLaVA-1.5 (image_aspect_ratio=pad): expand2square with the mean colour, then CLIP preprocessing."""
    return clip_reference(expand2square(image, tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)), size)


@pytest.mark.parametrize("width, height", [(50, 30), (30, 50)])
def test_pad_matches_llava_expand2square(width, height):
    image = make_image(width, height)
    ours = build_image_processor("pad", 336)(images=[image], return_tensors="pt")["pixel_values"][0]
    reference = torch.from_numpy(llava_pad_reference(image))
    assert ours.shape == (3, 336, 336)
    assert torch.allclose(ours.double(), reference, rtol=0, atol=1e-6)
    # the padded border is exactly the mean colour, which normalises to ~0
    # 50x30 -> rows 0..67 of 336 are padding (0..40 clear of bicubic's reach); 30x50 -> columns
    border = ours[:, :40, :] if width > height else ours[:, :, :40]
    expected = torch.tensor([(int(m * 255) / 255 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    assert torch.allclose(border, expected[:, None, None].expand_as(border), rtol=0, atol=1e-6)
    hf = LlavaImageProcessor(do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert torch.equal(ours, hf(images=[image], return_tensors="pt")["pixel_values"][0])


def test_square_matches_clip_processor_of_llava_hf():
    image = make_image(500, 300, seed=1)
    ours = build_image_processor("square", 336)(images=[image], return_tensors="pt")["pixel_values"]
    clip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert torch.equal(ours, clip(images=[image], return_tensors="pt")["pixel_values"])
    assert ours.shape == (1, 3, 336, 336)
    assert torch.allclose(ours[0].double(), torch.from_numpy(clip_reference(image)), rtol=0, atol=1e-6)


def original_best_resolution(image_wh: tuple[int, int], pinpoints_wh: list[list[int]]) -> tuple[int, int]:
    """llava/mm_utils.py::select_best_resolution: most effective pixels, then least wasted; all (width, height)."""
    w, h = image_wh

    def score(p):
        scale = min(p[0] / w, p[1] / h)
        effective = min(int(w * scale) * int(h * scale), w * h)
        return effective, -(p[0] * p[1] - effective)

    return tuple(max(pinpoints_wh, key=score))


@pytest.mark.parametrize("width, height, grid", [(500, 300, (1, 2)), (300, 900, (3, 1)), (800, 800, (2, 2))])
def test_anyres_matches_llava_next_processor(width, height, grid):
    image = make_image(width, height, seed=2)
    ours = build_image_processor("anyres", 336)(images=[image], return_tensors="pt")
    hf = LlavaNextImageProcessor(
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )(images=[image], return_tensors="pt")
    assert torch.equal(ours["pixel_values"], hf["pixel_values"])
    assert ours["image_sizes"].tolist() == hf["image_sizes"].tolist() == [[height, width]]
    best_w, best_h = original_best_resolution((width, height), [[w, h] for h, w in LLAVA_NEXT_PINPOINTS])
    rows, cols = best_h // 336, best_w // 336
    assert (rows, cols) == grid
    # the base image plus rows x cols tiles of 336 px
    assert ours["pixel_values"].shape == (1, 1 + rows * cols, 3, 336, 336)


def test_anyres_pinpoints_scale_with_tile_size():
    processor = build_image_processor("anyres", 64)
    assert processor.image_grid_pinpoints == [[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]]
    with pytest.raises(ValueError, match=r"\[\[64, 100\]\] are not \(height, width\) multiples of the tile size 64"):
        build_image_processor("anyres", 64, grid_pinpoints=[[64, 128], [64, 100]])
    with pytest.raises(ValueError, match=r"unknown image mode 'crop'; use one of square, pad, anyres"):
        build_image_processor("crop", 64)


@pytest.mark.parametrize("mode", ["square", "pad", "anyres"])
def test_processor_round_trips_through_save_pretrained(mode, tmp_path):
    processor = build_image_processor(mode, 64, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is type(processor) and reloaded.to_dict() == processor.to_dict()
    image = make_image(90, 40, seed=4)
    for key, value in preprocess_images([image], processor).items():
        assert torch.equal(value, preprocess_images([image], reloaded)[key])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "PA", "1", "CMYK", "I;16"])
def test_any_mode_comes_back_rgb_as_transformers_converts_it(mode, tmp_path):
    image = make_image(20, 10).convert(mode)
    if mode in ("RGBA", "LA"):  # partly transparent, so compositing matters
        image.putalpha(Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20)))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16", "PA") else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)
    if mode != "I;16":  # the processor given the raw file: same pixels in, same values out
        processor = build_image_processor("pad", 32)
        with Image.open(path) as raw:
            expected = processor(images=[raw], return_tensors="pt")["pixel_values"]
        assert torch.equal(preprocess_images([loaded], processor)["pixel_values"], expected)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert load_image(palette).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_greyscale_keeps_its_range(tmp_path):
    """convert("RGB") would clip 16-bit values over 255 to white; they scale to 8 bits instead."""
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    pixels = np.asarray(load_image(tmp_path / "deep.png"))
    assert pixels.shape == (16, 16, 3)
    assert np.array_equal(pixels[..., 0], np.rint(ramp / 257).astype(np.uint8))


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
    with pytest.raises(ImageError, match=r"notes.png: not an image file .*convert it to PNG or JPEG or remove it"):
        load_image(text)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.jpg: file is empty \(0 bytes\); re-export it or remove it"):
        load_image(empty)

    for fmt in ("PNG", "JPEG"):
        whole = tmp_path / f"whole.{fmt.lower()}"
        make_image(64, 64).save(whole, fmt)
        data = whole.read_bytes()
        for keep in (len(data) // 2, 40):  # cut in the pixel data; cut inside the header
            cut = tmp_path / f"cut{keep}.{fmt.lower()}"
            cut.write_bytes(data[:keep])
            with pytest.raises(ImageError, match=rf"cut{keep}.{fmt.lower()}: (image data is truncated or corrupt .*re-export or remove it|not an image file)"):
                load_image(cut)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES

    zero = Image.new("RGB", (0, 0))
    with pytest.raises(ImageError, match=r"image has zero size \(0x0\); remove it from the dataset"):
        load_image(zero)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_header_size(30000, 30000))  # 900 M pixels claimed: over PIL's own hard limit too
    with pytest.raises(ImageError, match=r"bomb.png: refused as a decompression bomb by PIL \(Image size \(900000000 pixels\).*downscale it, or raise both data.max_image_pixels and PIL.Image.MAX_IMAGE_PIXELS"):
        load_image(bomb)
    big = tmp_path / "big.png"
    big.write_bytes(png_with_header_size(5000, 4000))
    with pytest.raises(ImageError, match=r"big.png: image is 5000x4000 \(20000000 pixels\), over the limit of 1000000; downscale it or raise data.max_image_pixels"):
        load_image(big, max_pixels=1_000_000)
    # PIL warns over its own 89478485 at open (it cannot be told otherwise without global state); we then refuse
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(
        ImageError, match=r"image is 20000x5000 \(100000000 pixels\), over the limit of 89478485; downscale it or raise data.max_image_pixels"
    ):  # fmt: skip
        load_image(png_with_header_size(20000, 5000))
    # a raised limit is honoured past PIL's warning threshold: this fake one then fails only on its (tiny) pixel data
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(png_with_header_size(20000, 5000), max_pixels=150_000_000)


def test_bytes_and_pil_sources(tmp_path):
    buffer = io.BytesIO()
    make_image(8, 6).save(buffer, "PNG")
    assert load_image(buffer.getvalue()).size == (8, 6)
    with pytest.raises(ImageError, match=r"<bytes image>: not an image file"):
        load_image(b"garbage")
    with pytest.raises(ImageError, match=r"<bytes image>: file is empty"):
        load_image(b"")
    make_image(8, 6).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as opened:
        assert load_image(opened).mode == "RGB"
        with pytest.raises(ImageError, match=r"x.png: image is 8x6 \(48 pixels\), over the limit of 10"):
            load_image(opened, max_pixels=10)  # an opened file is named by its path
    with pytest.raises(TypeError, match="load_image takes a path, bytes or a PIL image, got ndarray"):
        load_image(np.zeros((4, 4, 3), np.uint8))


def test_preprocess_images_shapes():
    images = [make_image(40, 20), make_image(100, 100, seed=1)]
    square = preprocess_images(images, build_image_processor("square", 32))
    assert set(square) == {"pixel_values"} and square["pixel_values"].shape == (2, 3, 32, 32)
    anyres = preprocess_images(images, build_image_processor("anyres", 32))
    # 40x20 -> 1x2 tiles, 100x100 -> 2x2 tiles: patches padded to the larger count (1 base + 4)
    assert anyres["pixel_values"].shape == (2, 5, 3, 32, 32)
    assert anyres["image_sizes"].tolist() == [[20, 40], [100, 100]]
    assert anyres["pixel_values"][0, 3:].abs().sum() == 0  # padding patches
    assert anyres["pixel_values"][0, 2].abs().sum() > 0
    with pytest.raises(ValueError, match="got no images"):
        preprocess_images([], build_image_processor("square", 32))
