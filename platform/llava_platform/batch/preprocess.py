"""The CPU stage between reading and the model: questions -> the model's inputs, or the row's error.

    QUESTION_SCHEMA rows -> encode_questions (Ray Data task) -> ENCODED_SCHEMA rows
        images read (image_folder / URI / the row's bytes) and decoded   missing_image, unreadable_image
        the template's prompt through the processor, a batch's prompts in one call (each row's inputs equal
        engine.encode_messages', what InferenceEngine.encode would build)  bad_record
        the prompt's length, images expanded, against max_prompt_tokens  too_long

A row's inputs (input_ids, pixel_values, image_sizes: shapes differ row to row, with the image count,
anyres tiles and prompt length) travel as one pickled column, so every block has the same schema.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from transformers import ProcessorMixin

from llava_platform.data.images import ImageError, ImageNotFound, load_image, load_image_at
from llava_platform.data.templates import IMAGE_PLACEHOLDER, ConversationTemplate, Message, TemplateError, get_template
from llava_platform.inference.engine import encode_messages
from llava_platform.storage import Storage

__all__ = ["ENCODED_SCHEMA", "QuestionEncoder", "encode_questions", "decode_inputs"]

ENCODED_SCHEMA = pa.schema([
    ("question_id", pa.string()),
    ("prompt", pa.string()),
    ("metadata", pa.string()),
    ("error", pa.string()),
    ("inputs", pa.binary()),  # pickled {name: ndarray}; null for an error row
])  # fmt: skip


@dataclass(frozen=True)
class QuestionEncoder:
    """What an encoding task needs; `processor` may be an ObjectRef (fetched once per process)."""

    processor: Any  # ProcessorMixin | ray.ObjectRef
    template: str
    image_folder: str | None
    storage: Storage
    max_image_pixels: int
    max_prompt_tokens: int
    max_image_side: int = 4096

    def parts(self) -> tuple[ProcessorMixin, ConversationTemplate]:
        key = (id(self.processor) if isinstance(self.processor, ProcessorMixin) else self.processor.hex(), self.template)
        if key not in _BUILT:
            processor = self.processor
            if not isinstance(processor, ProcessorMixin):
                import ray

                processor = ray.get(processor)
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # a task keeps to its own CPUs
            _BUILT[key] = (processor, get_template(self.template))
        return _BUILT[key]

    def read_image(self, path: str | None, data: bytes | None) -> Image.Image:
        if data is not None:
            image = load_image(data, self.max_image_pixels, name=path)
        else:
            image = load_image_at(Storage.join(self.image_folder, path), self.storage, self.max_image_pixels)
        if max(image.size) > self.max_image_side:
            image.thumbnail((self.max_image_side, self.max_image_side))  # in place, aspect kept
        return image

    def prepare(self, row: dict[str, Any]) -> tuple[list[Message], list[Image.Image]] | str:
        """A row's conversation and decoded images, or its error."""
        if row["error"] is not None:
            return row["error"]
        try:
            images = [self.read_image(p, row["image_bytes"]) for p in row["images"]]
        except ImageNotFound as e:
            return f"missing_image: {e}"
        except ImageError as e:
            return f"unreadable_image: {e}"
        return [Message(role, content) for role, content in json.loads(row["messages"])], images

    def encode(self, row: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """One QUESTION_SCHEMA row -> (inputs, None), or (None, error)."""
        return self.encode_many([row])[0]

    def encode_many(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, np.ndarray] | None, str | None]]:
        """Rows -> (inputs, None) or (None, error) each. The prompts go through the processor in one call where its
        output splits exactly into the rows' own (one image processor and tokenizer call instead of one a row: the
        per-call overhead is most of a small image's cost); anyres, whose tiles pad across a batch, one row a call."""
        processor, template = self.parts()
        prepared = [self.prepare(row) for row in rows]
        out: list[tuple[dict[str, np.ndarray] | None, str | None]] = [(None, p) for p in prepared]  # errors as they are
        asked = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        encoded: dict[int, dict[str, torch.Tensor]] = {}
        if len(asked) > 1 and _splits_by_row(processor):
            try:
                encoded = dict(zip(asked, _encode_together(processor, template, [prepared[i] for i in asked])))
            except (TemplateError, ValueError):
                encoded = {}  # a row the processor or template refuses: each row alone names its own error below
        for i in asked:
            if i not in encoded:
                try:
                    encoded[i] = encode_messages(processor, template, *prepared[i])
                except (TemplateError, ValueError) as e:  # the processor's own refusals are ValueErrors too
                    out[i] = (None, f"bad_record: {e}")
                    continue
            length = encoded[i]["input_ids"].shape[1]
            if length > self.max_prompt_tokens:
                out[i] = (None, f"too_long: the prompt is {length} tokens (images expanded), over "
                                f"batch.max_prompt_tokens={self.max_prompt_tokens}")  # fmt: skip
            else:
                out[i] = ({k: v.numpy() for k, v in encoded[i].items()}, None)
        return out


def _splits_by_row(processor: ProcessorMixin) -> bool:
    """Whether one processor call over many prompts splits into each prompt's own inputs: images processed one by one
    into (n, C, H, W) (not anyres tiles), prompts padded only with a pad token the attention mask marks."""
    return "image_sizes" not in processor.model_input_names and processor.tokenizer.pad_token_id is not None


def _encode_together(processor: ProcessorMixin, template: ConversationTemplate,
                     prepared: list[tuple[list[Message], list[Image.Image]]]) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """encode_messages of every row, from one processor call: the padded batch cut back into rows."""
    for messages, images in prepared:  # the placeholder check encode_messages makes
        placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
        if placeholders != len(images):
            raise TemplateError(f"{placeholders} <image> placeholders for {len(images)} images")
    prompts = [template.render(messages, add_generation_prompt=True).text for messages, _ in prepared]
    images = [image for _, row_images in prepared for image in row_images]
    batch = processor(text=prompts, images=images or None, return_tensors="pt", padding=True)
    rows, first = [], 0
    for i, (_, row_images) in enumerate(prepared):
        row = {"input_ids": batch["input_ids"][i][batch["attention_mask"][i].bool()].unsqueeze(0)}
        if row_images:
            row["pixel_values"] = batch["pixel_values"][first : first + len(row_images)]
            first += len(row_images)
        rows.append(row)
    return rows


_BUILT: dict[tuple, tuple[ProcessorMixin, ConversationTemplate]] = {}  # per process


def encode_questions(batch: pa.Table, encoder: QuestionEncoder) -> pa.Table:
    """Ray Data stage: QUESTION_SCHEMA rows -> ENCODED_SCHEMA rows, one for one."""
    out: dict[str, list] = {name: [] for name in ENCODED_SCHEMA.names}
    rows = batch.to_pylist()
    for row, (inputs, error) in zip(rows, encoder.encode_many(rows)):
        for name in ("question_id", "prompt", "metadata"):
            out[name].append(row[name])
        out["error"].append(error)
        out["inputs"].append(pickle.dumps(inputs, protocol=5) if inputs is not None else None)
    return pa.table(out, schema=ENCODED_SCHEMA)


def decode_inputs(data: bytes) -> dict[str, torch.Tensor]:
    """An ENCODED_SCHEMA row's `inputs` as the tensors InferenceEngine.encode returns."""
    return {k: torch.from_numpy(v) for k, v in pickle.loads(data).items()}
