"""Record -> model inputs: token ids, labels, pixels (one call of the model's processor per image).

    encoder = SampleEncoder(bundle.processor, bundle.template, image_folder="data/images")
    sample = encoder.encode(record)   # raises RecordError naming the record; sample.num_trained may be 0

Pixels stay uint8, as the processor leaves them before rescaling and normalising: 4x smaller in Ray's
object store and on the way to the device. `images.PixelNormalizer` finishes them on the training
worker with the processor's own arithmetic. `positions(record, tokens_per_image, ids)` gives encode()'s
length and layout from each image's token count alone: the data check counts tokens from image
headers, without decoding pixels.

A sample whose labels end up all ignored (e.g. truncated away) is returned with
num_trained == 0: callers count and report it, never drop it silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

from llava_platform.data.encode import IGNORE_INDEX, Encoded, encode_rendered, expand_image_tokens
from llava_platform.data.images import ImageError, load_image_at, pad_patches
from llava_platform.data.records import Record, RecordError
from llava_platform.data.templates import IMAGE_PLACEHOLDER, ConversationTemplate, Rendered, TemplateError
from llava_platform.storage import Storage

__all__ = ["EncodedSample", "SampleEncoder", "blank_sample"]

RAW_PIXELS = {"do_rescale": False, "do_normalize": False}  # the processor's output stays uint8


@dataclass
class EncodedSample:
    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # uint8; square/pad: (I, 3, S, S); anyres: (I, P_max, 3, S, S)
    image_sizes: torch.Tensor | None  # anyres only: (I, 2) original (height, width)
    truncated: bool = False  # cut to max_length

    @property
    def num_trained(self) -> int:
        return Encoded(self.input_ids, self.labels).num_trained


class SampleEncoder:
    def __init__(self, processor: ProcessorMixin, template: ConversationTemplate, image_folder: str | None = None,
                 max_length: int = 2048, max_image_pixels: int = 89_478_485, storage: Storage | None = None):  # fmt: skip
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.template = template
        self.image_folder = str(image_folder) if image_folder else None
        self.max_length = max_length
        self.max_image_pixels = max_image_pixels
        self.storage = storage or Storage()
        self._image_tokens: dict[tuple[int, int], int] = {}

    def image_path(self, relative: str) -> str:
        """Where a record's image is: under data.image_folder (a folder or a URI prefix), unless absolute or a URI."""
        return Storage.join(self.image_folder, relative)

    def image_tokens(self, height: int, width: int) -> int:
        """How many <image> tokens an image of this size expands to (anyres: it depends on the size)."""
        if (height, width) not in self._image_tokens:
            counts = self.processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
            self._image_tokens[(height, width)] = int(counts.num_image_tokens[0])
        return self._image_tokens[(height, width)]

    def render(self, record: Record) -> Rendered:
        try:
            return self.template.render(record.messages)
        except TemplateError as e:
            raise RecordError(record.id, str(e)) from e

    def encode(self, record: Record) -> EncodedSample:
        rendered = self.render(record)
        pixel_values, image_sizes, tokens_per_image = self._images(record)
        try:
            encoded = expand_image_tokens(encode_rendered(self.tokenizer, rendered), self.image_token_id, tokens_per_image)
        except ValueError as e:
            raise RecordError(record.id, str(e)) from e
        ids, labels = encoded.input_ids, encoded.labels
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
            if last_image >= self.max_length:
                raise RecordError(record.id, self._too_long(len(ids), last_image))
            return EncodedSample(record.id, ids[: self.max_length], labels[: self.max_length], pixel_values, image_sizes, True)
        return EncodedSample(record.id, ids, labels, pixel_values, image_sizes)

    def positions(self, record: Record, tokens_per_image: list[int], ids: list[int]) -> tuple[int, np.ndarray]:
        """The length encode() would give this tokenised text (before any cut) and each of its tokens' position in
        the expanded sample, from each image's token count, with encode()'s errors: no expanded sample is built
        (the data check's cost per record). A text token starts at its index + the extra tokens of the images
        before it (an image: count - 1 extra)."""
        ids = np.asarray(ids)
        image_at = np.flatnonzero(ids == self.image_token_id)
        if len(image_at) != len(tokens_per_image):
            raise RecordError(record.id, f"the text has {len(image_at)} <image> placeholders but the sample has "
                                         f"{len(tokens_per_image)} images")  # fmt: skip
        extra = np.zeros(len(ids), dtype=np.int64)
        extra[image_at] = np.asarray(tokens_per_image, dtype=np.int64) - 1
        start = np.arange(len(ids)) + np.cumsum(extra) - extra
        length = len(ids) + int(extra.sum())
        last_image = int(start[image_at[-1]] + tokens_per_image[-1] - 1) if len(image_at) else -1
        if length > self.max_length and last_image >= self.max_length:
            raise RecordError(record.id, self._too_long(length, last_image))
        return length, start

    def _too_long(self, length: int, last_image: int) -> str:
        return (f"sample is {length} tokens and its image tokens run to position {last_image + 1}, past "
                f"data.max_length={self.max_length}; raise data.max_length or shorten the text")  # fmt: skip

    def load_image(self, relative: str) -> Image.Image:
        """A record's image, decoded (local file or object), or ImageError naming where it was looked for."""
        return load_image_at(self.image_path(relative), self.storage, self.max_image_pixels)

    def _images(self, record: Record) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int]]:
        """Each image through the processor alone: its uint8 pixels and how many <image> tokens it expands to."""
        if not record.images:
            return None, None, []
        pixels, sizes, counts = [], [], []
        for relative in record.images:
            try:
                image = self.load_image(relative)
            except ImageError as e:
                raise RecordError(record.id, str(e)) from e
            image_pixels, size, count = _process_image(self.processor, image, self.image_token_id)
            counts.append(count)
            pixels.append(image_pixels)
            if size is not None:
                sizes.append(size)
        if sizes:  # anyres: (P, 3, S, S) per image, P differs between images
            pixels = pad_patches(pixels, dim=0)
        return torch.stack(pixels), torch.stack(sizes) if sizes else None, counts


def _process_image(processor: ProcessorMixin, image: Image.Image, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One image through the processor alone: its uint8 pixels ((3, S, S); anyres (P, 3, S, S)), its (height, width)
    (anyres only, else None) and how many <image> tokens it expands to."""
    out = processor(text=IMAGE_PLACEHOLDER, images=[image], return_tensors="pt", **RAW_PIXELS)
    sizes = out.get("image_sizes")
    return out["pixel_values"][0], sizes[0] if sizes is not None else None, int((out["input_ids"][0] == image_token_id).sum())


def blank_sample(processor: ProcessorMixin) -> EncodedSample:
    """A black image and its <image> tokens, with no label: the row a micro-batch without images gets, so that
    every rank runs the vision tower and projector on every micro-batch (data.collate's `filler`).

    Its size is the tower's input (anyres: the grid pinpoint with the fewest tiles): the fewest tokens.
    """
    image_processor = processor.image_processor
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    side = image_processor.crop_size["height"]
    height, width = min(pinpoints, key=lambda p: p[0] * p[1]) if pinpoints else (side, side)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    pixels, size, count = _process_image(processor, Image.new("RGB", (width, height)), image_token_id)
    return EncodedSample("<blank image>", [image_token_id] * count, [IGNORE_INDEX] * count, pixels[None],
                         size[None] if size is not None else None)  # fmt: skip
