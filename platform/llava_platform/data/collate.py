"""Encoded samples -> one training batch, right-padded (batch order and grouping: train/plan.py).

    batch = collate(samples, pad_token_id, filler=encoder.blank_sample())
    input_ids, attention_mask, labels  (B, T_max)   padded on the right; labels -100 on padding
                                       (training drops the mask: right padding is what makes that exact)
    pixel_values                       (I, 3, S, S) uint8, every image of the batch, in sample order
                                       anyres: (I, P_max, 3, S, S), patches zero-padded (image_sizes says how many are real)
    image_sizes                        (I, 2)       anyres only

A batch with no image at all gets `filler` as one more row (B + 1): a blank image and its <image>
tokens, no label. Every rank then runs the vision tower and projector on every micro-batch, as
DeepSpeed ZeRO-3 needs (its parameter gathers are collectives: one rank skipping the tower while
another runs it hangs them) and as DDP needs without find_unused_parameters. The row changes no
loss: rows never attend to each other, and it has no label (LLaVA feeds a zeros image the same way).
"""

from __future__ import annotations

import torch

from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.images import pad_patches
from llava_platform.data.samples import EncodedSample

__all__ = ["collate"]


def collate(samples: list[EncodedSample], pad_token_id: int, filler: EncodedSample | None = None) -> dict[str, torch.Tensor]:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if filler is not None and all(s.pixel_values is None for s in samples):
        samples = [*samples, filler]
    longest = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        attention_mask[i, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    if pixels:
        if any(s.image_sizes is not None for s in samples):  # anyres: patch counts differ between images
            pixels = pad_patches(pixels, dim=1)  # (I_sample, P, 3, S, S) per sample
            batch["image_sizes"] = torch.cat([s.image_sizes for s in samples if s.image_sizes is not None])
        batch["pixel_values"] = torch.cat(pixels)
    return batch
