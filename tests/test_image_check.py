"""inspect_image gives load_image's verdict from an image's header and end marker, without decoding its pixels.

One known limit, shown by test_mid_data_damage_is_left_to_training: damage inside the compressed data
of a file whose header and end marker are intact passes the check (the training-time decode catches it).
"""

import functools
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, WebPImagePlugin

from llava_platform.data.image_check import (
    CONVERTIBLE_MODES, HEAD_BYTES, TAIL_BYTES, ImageNotFound, inspect_image,
)  # fmt: skip
from llava_platform.data.images import ImageError, load_image
from llava_platform.storage import Storage

END_MARKER_LENGTH = {"png": 12, "jpg": 2, "gif": 1, "webp": 1, "bmp": 1, "tiff": 1}
DAMAGED = "mid_data_damage.png"  # the known limit: inspect accepts it, load_image refuses it
# Accepted by the fast path: header parsed, size and mode fine, end marker in place
FAST = ["rgb.png", "rgba.png", "palette.png", "grey16.png", "small.png", "rgb.jpg", "cmyk.jpg", "grey.jpg",
        "small.jpg", "big_header.jpg", "x.gif", "gif_named.jpg", "x.webp", "x.bmp"]  # fmt: skip


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR claims width x height, with a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def corpus() -> dict[str, bytes]:
    """name -> file bytes: every format and mode the fast path vouches for, and every way a file goes bad.

    The photos are 320x240 random pixels, so most files outgrow HEAD_BYTES and take the head + tail reads.
    """
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    small = photo.resize((16, 12))
    ramp = np.linspace(0, 65535, 240 * 320).astype(np.uint16).reshape(240, 320)
    files = {
        "rgb.png": encoded(photo, "PNG"),
        "rgba.png": encoded(photo.convert("RGBA"), "PNG"),
        "palette.png": encoded(photo.convert("P"), "PNG"),
        "grey16.png": encoded(Image.fromarray(ramp), "PNG"),
        "small.png": encoded(small, "PNG"),  # smaller than the head: one read
        "rgb.jpg": encoded(photo, "JPEG", quality=95),
        "cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG"),
        "grey.jpg": encoded(photo.convert("L"), "JPEG"),
        "small.jpg": encoded(small, "JPEG"),
        # an ICC profile longer than the head: the header only parses from the whole file
        "big_header.jpg": encoded(small, "JPEG", icc_profile=rng.bytes(2 * HEAD_BYTES)),
        "x.gif": encoded(photo, "GIF"),
        "gif_named.jpg": encoded(small, "GIF"),  # the content decides, not the name
        "x.webp": encoded(photo, "WEBP", lossless=True),
        "x.bmp": encoded(photo, "BMP"),
        "x.tiff": encoded(photo, "TIFF"),  # no end marker to check: decoded in full
        "lab.tiff": encoded(photo.convert("LAB"), "TIFF"),
        "trailing.jpg": encoded(photo, "JPEG") + b"\x00" * 64,  # bytes after the EOI: decoded in full
        "empty.png": b"",
        "text.png": b"this is not an image",
        "zero_width.png": png_with_header_size(0, 5),  # PIL refuses a zero side when it opens the file
        "bomb.png": png_with_header_size(30000, 30000),  # over PIL's own hard limit
    }
    for name in ("rgb.png", "rgb.jpg", "x.gif", "x.webp", "x.bmp", "x.tiff"):
        data, marker = files[name], END_MARKER_LENGTH[name.rsplit(".", 1)[1]]
        # inside the header, mid-data, just before the end marker, inside the end marker
        for keep in (20, len(data) // 2, len(data) - marker, len(data) - 1):
            files[f"cut{keep}_{name}"] = data[:keep]
    damaged = bytearray(files["rgb.png"])
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = b"\xff" * 64  # inside IDAT; IHDR and IEND intact
    files[DAMAGED] = bytes(damaged)
    return files


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image_check")
    for name, data in corpus().items():
        (folder / name).write_bytes(data)
    return folder


def outcome(call):
    """("ok", (width, height)) or (the ImageError's class, its message)."""
    try:
        image = call()
    except ImageError as e:
        return type(e), str(e)
    return "ok", (image.width, image.height)


CASES = [(name, None) for name in sorted(corpus()) if name != DAMAGED] + [("missing.png", None)]
CASES += [("rgb.png", 320 * 240), ("rgb.png", 320 * 240 - 1), ("small.jpg", 100), ("x.webp", 100), ("x.tiff", 100)]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's note on a TIFF cut inside its header
@pytest.mark.parametrize("name, max_pixels", CASES, ids=[f"{n}-max{m}" if m else n for n, m in CASES])
def test_same_verdict_as_load_image(corpus_dir, name, max_pixels):
    path = corpus_dir / name
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    expected = outcome(lambda: load_image(path, **limit))
    got = outcome(lambda: inspect_image(str(path), Storage(), **limit))
    if expected[0] == "ok":
        assert got == expected  # the header's size is the decoded image's
        with Image.open(path) as image:
            assert inspect_image(str(path), Storage(), **limit).format == image.format
    else:
        missing = expected[1].startswith("image not found")
        assert got == (ImageNotFound if missing else ImageError, expected[1])


def test_mid_data_damage_is_left_to_training(corpus_dir):
    """The fast path's limit: header and end marker intact, the compressed data broken. Only a decode sees it."""
    path = corpus_dir / DAMAGED
    assert inspect_image(str(path), Storage()).width == 320
    with pytest.raises(ImageError, match="image data is truncated or corrupt"):
        load_image(path)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Records every pixel decode: PIL decodes in Image.load, which ImageFile and WebP override."""
    seen: list[str] = []
    for cls in (Image.Image, ImageFile.ImageFile, WebPImagePlugin.WebPImageFile):
        def load(self, _load=vars(cls)["load"]):
            seen.append(self.format)
            return _load(self)

        monkeypatch.setattr(cls, "load", load)
    return seen


class CountingFile:
    """A storage file that records each read as (offset, nbytes)."""

    def __init__(self, file, reads: list[tuple[int, int]]):
        self.file, self.reads = file, reads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def size(self) -> int:
        return self.file.size()

    def read_at(self, nbytes: int, offset: int) -> bytes:
        self.reads.append((offset, nbytes))
        return self.file.read_at(nbytes, offset)


def count_reads(monkeypatch, storage: Storage) -> list[tuple[int, int]]:
    reads: list[tuple[int, int]] = []
    open_input = storage.open_input
    monkeypatch.setattr(storage, "open_input", lambda path: CountingFile(open_input(path), reads))
    return reads


def test_valid_images_are_never_decoded(corpus_dir, decodes):
    for name in FAST:
        inspect_image(str(corpus_dir / name), Storage())
        assert decodes == [], name
    inspect_image(str(corpus_dir / "trailing.jpg"), Storage())  # no EOI at the end: load_image decides
    inspect_image(str(corpus_dir / "x.tiff"), Storage())  # no end marker known
    assert set(decodes) == {"JPEG", "TIFF"}  # the recorder sees a decode when there is one


def test_a_valid_image_costs_a_head_and_a_tail_read(corpus_dir, monkeypatch):
    storage = Storage()
    reads = count_reads(monkeypatch, storage)
    for name in FAST:
        reads.clear()
        inspect_image(str(corpus_dir / name), storage)
        size = len(corpus()[name])
        if name in ("big_header.jpg", "x.webp"):  # PIL cannot open these from the head: read whole, not decoded
            assert reads == [(0, HEAD_BYTES), (size - TAIL_BYTES, TAIL_BYTES), (0, size)], name
        elif size > HEAD_BYTES:
            assert reads == [(0, HEAD_BYTES), (size - TAIL_BYTES, TAIL_BYTES)], name
        else:
            assert reads == [(0, size)], name
    assert sum(len(corpus()[name]) > HEAD_BYTES for name in FAST) >= 6  # the two-read path is the one tested


def test_an_oversize_image_is_refused_from_its_header(corpus_dir, decodes, monkeypatch):
    storage = Storage()
    reads = count_reads(monkeypatch, storage)
    with pytest.raises(ImageError, match=r"rgb.png: image is 320x240 \(76800 pixels\), over the limit of 1000; downscale it or raise data.max_image_pixels"):
        inspect_image(str(corpus_dir / "rgb.png"), storage, max_pixels=1000)
    assert decodes == [] and len(reads) == 2


@pytest.mark.parametrize("mode", sorted(CONVERTIBLE_MODES))
def test_every_mode_the_fast_path_vouches_for_converts(mode):
    assert load_image(Image.new(mode, (2, 2))).mode == "RGB"


def test_same_verdicts_on_object_storage(corpus_dir, s3_server, monkeypatch):
    names = ["rgb.png", "small.jpg", "big_header.jpg", "x.webp", "x.tiff", "text.png", "empty.png",
             f"cut{len(corpus()['rgb.jpg']) // 2}_rgb.jpg"]  # fmt: skip
    for name in names:
        s3_server.client.put_object(Bucket=s3_server.BUCKET, Key=f"image_check/{name}", Body=corpus()[name])
    storage = s3_server.storage
    reads = count_reads(monkeypatch, storage)
    for name in names + ["missing.png"]:
        uri = f"s3://{s3_server.BUCKET}/image_check/{name}"
        kind, expected = outcome(lambda: load_image(corpus_dir / name))
        if kind != "ok":
            kind = ImageNotFound if expected.startswith("image not found") else ImageError
            expected = expected.replace(str(corpus_dir / name), uri)
        assert outcome(lambda: inspect_image(uri, storage)) == (kind, expected), name
    reads.clear()
    assert inspect_image(f"s3://{s3_server.BUCKET}/image_check/rgb.png", storage).format == "PNG"
    assert len(reads) == 2  # two ranged GETs, not the whole object
