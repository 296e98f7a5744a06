"""The data check's look at an image: load_image's verdict from the header and the end marker, without decoding.

Decoding all of LLaVA-665K's ~625k images costs as much as an epoch of image loading; the check
instead reads each file's header (size, format, mode) and its last bytes:

    header = inspect_image("coco/0001.jpg", storage)      # ImageHeader(width, height, format, stamp)

Reads: one stat, then the first HEAD_BYTES and the last TAIL_BYTES (two ranged reads on an object
store; one when the file is smaller than the head). Where PIL cannot open the header from the head
(a JPEG with a large ICC profile; any WebP larger than the head, since PIL's WebP reader takes the
whole file) the whole file is read, still not decoded. A file is accepted fast when PIL parses its
header from those bytes, its size is within max_pixels, its mode converts to RGB, and its format's
end marker shows it whole (see _ends_whole). Anything else - an unknown format such as TIFF, a
missing marker (e.g. a JPEG with bytes after its EOI), an unusual mode such as LAB - goes to
load_image on the whole file, whose verdict stands. So the fast path never refuses an image that
load_image accepts, and the refusals carry load_image's own messages.

What the fast path cannot see: damage inside the compressed data of a file whose header and end
marker are intact (bit rot, a bad copy), or data only the decoder finds wrong (a GIF frame larger
than its screen, a JPEG coding PIL's libjpeg lacks). load_image refuses such a file; inspect_image
accepts it, and the training-time decode (load_image in the data pipeline) still names it there.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from llava_platform.data.images import DEFAULT_MAX_PIXELS, ImageNotFound, load_image
from llava_platform.storage import FileStamp, Storage

__all__ = ["ImageHeader", "ImageNotFound", "inspect_image", "HEAD_BYTES", "TAIL_BYTES", "CONVERTIBLE_MODES"]

HEAD_BYTES = 64 * 1024  # holds the header of nearly every PNG / JPEG / GIF / WebP / BMP
TAIL_BYTES = 16  # the longest end marker checked is PNG's 12-byte IEND chunk

# Modes load_image's RGB conversion is known to handle (tests/test_image_check.py proves each);
# any other mode (LAB, La, ...) is left to load_image on the whole file.
CONVERTIBLE_MODES = frozenset({
    "1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L", "F",
})  # fmt: skip

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # an empty IEND chunk with its CRC


@dataclass(frozen=True)
class ImageHeader:
    """What the check learns of an image, and the stamp of the file it learnt it from (its cache key)."""

    width: int
    height: int
    format: str  # PIL's format name: "PNG", "JPEG", "GIF", "WEBP", "BMP", ...
    stamp: FileStamp


def inspect_image(path: str, storage: Storage, max_pixels: int = DEFAULT_MAX_PIXELS,
                  stamp: FileStamp | None = None) -> ImageHeader:  # fmt: skip
    """Raise ImageError (ImageNotFound when there is no file) iff load_image(path) would, without decoding
    pixels in the common case; the message is load_image's, naming `path`.

    The stamp is taken before reading (or given: the caller stat'ed a batch of images in one call), so a
    file replaced during the check gets a new stamp next time and is checked again rather than trusted.
    """
    stamp = stamp or storage.stat(path)
    if stamp is None:
        raise ImageNotFound.at(path)
    with storage.open_input(path) as file:
        width, height, fmt = _inspect(file, path, max_pixels)
    return ImageHeader(width, height, fmt, stamp)


def _inspect(file, path: str, max_pixels: int) -> tuple[int, int, str]:
    """(width, height, format) of the open file at `path`, or load_image's ImageError naming `path`."""
    size = file.size()
    head = file.read_at(min(size, HEAD_BYTES), 0)
    tail = head[-TAIL_BYTES:] if len(head) == size else file.read_at(TAIL_BYTES, size - TAIL_BYTES)
    image = _open_header(head)
    if image is None and len(head) < size:  # a header longer than the head, e.g. a JPEG with a large ICC profile
        head = file.read_at(size, 0)
        image = _open_header(head)
    if image is None or _fits(image, max_pixels):  # else refused on its size: load_image says so from the head
        if image is not None and image.mode in CONVERTIBLE_MODES and _ends_whole(image.format, head, tail, size):
            return image.width, image.height, image.format
        if len(head) < size:
            head = file.read_at(size, 0)  # what the header cannot vouch for, load_image decides on the whole file
    decoded = load_image(head, max_pixels, name=path)  # raises, or decodes in full
    return decoded.width, decoded.height, image.format  # load_image opened these bytes, so image was opened too


def _open_header(data: bytes) -> Image.Image | None:
    """PIL's image of the header in `data` (nothing decoded), or None where PIL cannot open it."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception:  # whatever the reason, load_image then opens the whole file and gives its own verdict
        return None


def _fits(image: Image.Image, max_pixels: int) -> bool:
    """load_image's size test, on the header: neither side zero, no more than max_pixels pixels."""
    return image.width > 0 and image.height > 0 and image.width * image.height <= max_pixels


def _ends_whole(fmt: str | None, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the format's end marker (or its own length field) shows the file whole: a cut file fails this.

    A GIF's trailer is checked with the block terminator before it (00 3B), so a GIF cut at a 3B byte
    still fails. Formats without a check here (TIFF, ...) are decoded in full.
    """
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")  # EOI; entropy-coded data never holds FF D9
    if fmt == "GIF":
        return tail.endswith(b"\x00\x3b")
    if fmt == "WEBP":
        return int.from_bytes(head[4:8], "little") + 8 == size  # the RIFF length counts all after its first 8 bytes
    if fmt == "BMP":
        return int.from_bytes(head[2:6], "little") == size  # the file header's bfSize
    return False
