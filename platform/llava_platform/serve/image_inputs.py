"""An API request's image references -> RGB PIL images, refusing whatever would hurt the server.

The OpenAI-compatible API sends `image_url.url` (a data: URL or an http(s) URL), the LLaVA API plain base64
in `image`. Every refusal is an ImageInputError naming the request field (`param`), the limit or rule, and
the HTTP status to answer. Synchronous and free of Ray and FastAPI: the ingress calls it via asyncio.to_thread.

Decoding: the encoded size is checked first, then width x height from the header alone (nothing decoded, so
a 30000x30000 PNG of a few bytes costs nothing), then the repo's own `load_image` decodes and converts to
RGB exactly as training does. Only PNG, JPEG, WEBP and GIF are opened: PIL reads dozens of formats, and
each is one more parser exposed to the internet.

http(s) URLs are downloaded by serve/image_fetch.py; its docstring says how server-side request forgery is
refused; FetchPolicy, how URLs are fetched, lives there.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct

from PIL import Image, ImageFile

from llava_platform.data.images import ImageError, load_image
from llava_platform.serve.image_fetch import FetchPolicy, download
from llava_platform.serve.image_limits import ImageInputError, ImageLimits, too_many_bytes

__all__ = ["ImageLimits", "ImageInputError", "decode_image", "image_from_base64", "image_from_url"]

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # OpenAI's list for vision inputs
_ACCEPTED_TEXT = "PNG, JPEG, WEBP or GIF"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
Image.init()  # registers every format in Image.OPEN now, not racing with _open_header in request threads


# ---------------------------------------------------------------- decoding


def decode_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Encoded image bytes -> a decoded RGB image; sizes are checked before any pixel is decoded."""
    if len(data) > limits.max_bytes:
        raise too_many_bytes(str(len(data)), limits, param)
    if not data:
        raise ImageInputError(f"{param}: image is empty (0 bytes); send a {_ACCEPTED_TEXT} image", param)
    with _open_header(bytes(data), param) as image:  # the header is parsed, no pixel decoded yet
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageInputError(
                f"{param}: image is {width}x{height} ({width * height} pixels), over the limit of "
                f"{limits.max_pixels} (limits.max_image_pixels); downscale it", param, 413, "image_too_large",
            )  # fmt: skip
        if width == 0 or height == 0:
            raise ImageInputError(f"{param}: image has zero size ({width}x{height}); send a real image", param)
        try:
            decoded = load_image(image, max_pixels=limits.max_pixels, name=param)  # RGB, as training converts
        except ImageError as e:  # truncated or corrupt pixel data, a mode with no RGB conversion
            if isinstance(e.__cause__, Image.DecompressionBombError):
                raise ImageInputError(str(e), param, 413, "image_too_large") from e
            raise ImageInputError(str(e), param) from e
        except Image.DecompressionBombWarning as e:  # raised only where warnings are errors
            raise _bomb(e, param) from e
    if max(decoded.size) > limits.max_side:
        decoded.thumbnail((limits.max_side, limits.max_side))  # in place, aspect kept
    return decoded


def image_from_base64(b64: str, limits: ImageLimits, param: str) -> Image.Image:
    """The LLaVA API's `image` field: the image file in plain base64 (a data: URL is taken too)."""
    if b64[:5].lower() == "data:":
        return decode_image(_data_url_bytes(b64, limits, param), limits, param)
    return decode_image(_base64_bytes(b64, limits, param), limits, param)


def image_from_url(url: str, limits: ImageLimits, policy: FetchPolicy, param: str) -> Image.Image:
    """A data:image/...;base64 URL, or an http(s) URL downloaded under `policy` (image_fetch.download)."""
    # no urlsplit here: it caches its results, which would keep a 13 MB data: URL alive
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme == "data":
        return decode_image(_data_url_bytes(url, limits, param), limits, param)
    _check_scheme(scheme, url, param)
    return decode_image(download(url, limits, policy, param), limits, param)


def _check_scheme(scheme: str, url: str, param: str) -> None:
    if scheme not in ("http", "https"):
        shown = f"URL scheme {scheme!r} is" if scheme else f"{url[:80]!r} has no URL scheme, which is"
        raise ImageInputError(f"{param}: {shown} not supported; send an http(s) URL or "
                              "data:image/png;base64,<data>", param, 400, "unsupported_url")  # fmt: skip


def _open_header(data: bytes, param: str) -> ImageFile.ImageFile:
    """The image with only its header read, in one of ACCEPTED_FORMATS.

    Each format's own opener, not Image.open: Image.open applies PIL's decompression-bomb limit there and
    refuses with a pixel count but no size, or only warns; the size check is ours (decode_image).
    """
    prefix = data[:16]  # what Image.open shows each format's accept()
    for name in ACCEPTED_FORMATS:
        if name not in Image.OPEN:  # e.g. a Pillow built without WEBP
            continue
        opener, accept = Image.OPEN[name]
        if not _accepts(accept, prefix):
            continue
        try:
            return opener(io.BytesIO(data), "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # a GIF frame over its screen
            raise _bomb(e, param) from e
        except (SyntaxError, OSError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
            raise ImageInputError(f"{param}: {name} header is truncated or corrupt ({e}); re-export the image",
                                  param) from e  # fmt: skip
    for name, (_, accept) in list(Image.OPEN.items()):  # another format PIL knows by its magic bytes?
        if accept is not None and _accepts(accept, prefix):
            raise ImageInputError(f"{param}: image is {name}, a format not accepted; convert it to {_ACCEPTED_TEXT}",
                                  param, 415, "unsupported_image_format")  # fmt: skip
    raise ImageInputError(f"{param}: not an image (no {_ACCEPTED_TEXT} header); send one of those formats", param)


def _accepts(accept, prefix: bytes) -> bool:
    """A format's magic-bytes test; a str answer is PIL's "looks like it, but unsupported" warning."""
    if accept is None:
        return True
    try:
        answer = accept(prefix)
    except (IndexError, ValueError, TypeError, struct.error):  # a prefix too short for this format's test
        return False
    return bool(answer) and not isinstance(answer, str)


def _data_url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    """data:image/<type>;base64,<payload> -> the image file's bytes."""
    header, comma, payload = url[len("data:"):].partition(",")
    media_type, *options = [part.strip().lower() for part in header.split(";")]
    if not comma or "base64" not in options:
        raise ImageInputError(f"{param}: data URL is not base64; send data:image/png;base64,<data>", param)
    if not media_type.startswith("image/"):
        raise ImageInputError(f"{param}: data URL media type is {media_type[:40] or 'missing'!r}, not an image; "
                              "send data:image/png;base64,<data> or image/jpeg", param)  # fmt: skip
    return _base64_bytes(payload, limits, param)


def _base64_bytes(text: str, limits: ImageLimits, param: str) -> bytes:
    """Standard padded base64 -> bytes, ignoring whitespace (MIME line breaks); too large is refused undecoded."""
    compact = "".join(text.split())
    padding = min(len(compact) - len(compact.rstrip("=")), 2)
    size = len(compact) * 3 // 4 - padding  # exact for valid base64
    if size > limits.max_bytes:
        raise too_many_bytes(str(size), limits, param)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII characters
        raise ImageInputError(f"{param}: not valid base64 ({e}); send the image file as standard padded base64",
                              param) from e  # fmt: skip


def _bomb(error: Exception, param: str) -> ImageInputError:
    return ImageInputError(f"{param}: refused as a decompression bomb by PIL ({error}; PIL.Image.MAX_IMAGE_PIXELS); "
                           "downscale it", param, 413, "image_too_large")  # fmt: skip
