"""What one request's images may cost the server, and the error a refused image is: shared by the decoding
(serve/image_inputs.py) and the downloading (serve/image_fetch.py) of API images."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageLimits", "ImageInputError", "too_many_bytes"]


# Error messages name the limits as the serve config spells them (serve/spec.py), which is what an operator raises:
# ImageLimits.max_bytes is limits.max_image_bytes there; image_fetch.py spells its own (image_fetch.timeout_s).


@dataclass(frozen=True)
class ImageLimits:
    """What one request's images may cost the server (limits.max_image_bytes / max_image_pixels / max_images)."""

    max_bytes: int = 10 * 1024 * 1024  # encoded bytes of one image, after base64 decoding or download
    max_pixels: int = 40_000_000  # width * height, read from the header before any pixel is decoded
    max_images: int = 8  # images in one request (the caller counts them)
    # longer sides are scaled down (aspect kept) once decoded: the processors pad to a square or resize the
    # shortest side before they shrink an image, so a 4x6000 image would cost them a 6000x6000 (or worse) array
    max_side: int = 4096

    def __post_init__(self):
        for name in ("max_bytes", "max_pixels", "max_side"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ImageLimits.{name} must be positive, got {getattr(self, name)}")
        if self.max_images < 0:  # 0: a server that takes no images
            raise ValueError(f"ImageLimits.max_images must be >= 0, got {self.max_images}")


class ImageInputError(ValueError):
    """A client's image cannot be used; `param` names the request field, `status` is the HTTP status to answer.

    status: 400 bad input or a failed download, 413 over a limit, 415 an image format not accepted.
    code: invalid_image, image_too_large, unsupported_image_format, unsupported_url, url_not_allowed,
    image_fetch_failed. The message starts with `param` and says the limit or the fix.
    """

    def __init__(self, message: str, param: str, status: int = 400, code: str = "invalid_image"):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def too_many_bytes(size: str, limits: ImageLimits, param: str) -> ImageInputError:
    """The 413 of an image over max_bytes (its size as text: a count, or a Content-Length as sent)."""
    return ImageInputError(f"{param}: image is {size} bytes, over the limit of {limits.max_bytes} "
                           "(limits.max_image_bytes); send a smaller or more compressed image",
                           param, 413, "image_too_large")  # fmt: skip
