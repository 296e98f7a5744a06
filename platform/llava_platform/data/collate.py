"""Encoded samples -> one training batch, right-padded (batch order and grouping: train/plan.py).

    batch = collate(samples, pad_token_id)
    input_ids, attention_mask, labels  (B, T_max)   padded on the right; labels -100 on padding
                                       (training drops the mask: right padding is what makes that exact)
    pixel_values                       (I, 3, S, S) every image of the batch, in sample order
                                       anyres: (I, P_max, 3, S, S), patches zero-padded (image_sizes says how many are real)
    image_sizes                        (I, 2)       anyres only
"""

from __future__ import annotations

import torch

from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.images import pad_patches
from llava_platform.data.samples import EncodedSample

__all__ = ["collate"]


def collate(samples: list[EncodedSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    if not samples:
        raise ValueError("cannot collate an empty batch")
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
