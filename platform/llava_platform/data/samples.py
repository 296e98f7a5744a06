"""Record -> model inputs: token ids, labels, pixel values (one call of the model's processor per image).

    encoder = SampleEncoder(bundle.processor, bundle.template, image_folder="data/images")
    sample = encoder.encode(record)   # raises RecordError naming the record; sample.num_trained may be 0

A sample whose labels end up all ignored (e.g. truncated away) is returned with
num_trained == 0: callers count and report it, never drop it silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import ProcessorMixin

from llava_platform.data.encode import Encoded, encode_rendered, expand_image_tokens
from llava_platform.data.images import ImageError, load_image, pad_patches
from llava_platform.data.records import Record, RecordError
from llava_platform.data.templates import IMAGE_PLACEHOLDER, ConversationTemplate, TemplateError

__all__ = ["EncodedSample", "SampleEncoder"]


@dataclass
class EncodedSample:
    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # square/pad: (I, 3, S, S); anyres: (I, P_max, 3, S, S)
    image_sizes: torch.Tensor | None  # anyres only: (I, 2) original (height, width)
    truncated: bool = False  # cut to max_length

    @property
    def num_trained(self) -> int:
        return Encoded(self.input_ids, self.labels).num_trained


class SampleEncoder:
    def __init__(self, processor: ProcessorMixin, template: ConversationTemplate, image_folder: str | Path | None = None,
                 max_length: int = 2048, max_image_pixels: int = 89_478_485):  # fmt: skip
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.template = template
        self.image_folder = Path(image_folder) if image_folder else None
        self.max_length = max_length
        self.max_image_pixels = max_image_pixels

    def image_path(self, relative: str) -> Path:
        return self.image_folder / relative if self.image_folder else Path(relative)

    def encode(self, record: Record) -> EncodedSample:
        try:
            rendered = self.template.render(record.messages)
        except TemplateError as e:
            raise RecordError(record.id, str(e)) from e
        pixel_values, image_sizes, tokens_per_image = self._images(record)
        try:
            encoded = expand_image_tokens(encode_rendered(self.tokenizer, rendered), self.image_token_id, tokens_per_image)
        except ValueError as e:
            raise RecordError(record.id, str(e)) from e
        ids, labels = encoded.input_ids, encoded.labels
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
            if last_image >= self.max_length:
                raise RecordError(
                    record.id,
                    f"sample is {len(ids)} tokens and its image tokens run to position {last_image + 1}, "
                    f"past data.max_length={self.max_length}; raise data.max_length or shorten the text",
                )
            return EncodedSample(record.id, ids[: self.max_length], labels[: self.max_length], pixel_values, image_sizes, True)
        return EncodedSample(record.id, ids, labels, pixel_values, image_sizes)

    def _images(self, record: Record) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int]]:
        """Each image through the processor alone: its pixel values and how many <image> tokens it expands to."""
        if not record.images:
            return None, None, []
        pixels, sizes, counts = [], [], []
        for relative in record.images:
            try:
                image = load_image(self.image_path(relative), max_pixels=self.max_image_pixels)
            except ImageError as e:
                raise RecordError(record.id, str(e)) from e
            out = self.processor(text=IMAGE_PLACEHOLDER, images=[image], return_tensors="pt")
            counts.append(int((out["input_ids"][0] == self.image_token_id).sum()))
            pixels.append(out["pixel_values"][0])
            if "image_sizes" in out:
                sizes.append(out["image_sizes"][0])
        if sizes:  # anyres: (P, 3, S, S) per image, P differs between images
            pixels = pad_patches(pixels, dim=0)
        return torch.stack(pixels), torch.stack(sizes) if sizes else None, counts
