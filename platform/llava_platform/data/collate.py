"""Encoded samples -> one training batch (right-padded), and length-grouped batch order.

    batch = collate(samples, pad_token_id)
    input_ids, attention_mask, labels  (B, T_max)   padded on the right; labels -100 on padding
    pixel_values                       (I, 3, S, S) every image of the batch, in sample order
                                       anyres: (I, P_max, 3, S, S), patches zero-padded (image_sizes says how many are real)
    image_sizes                        (I, 2)       anyres only
"""

from __future__ import annotations

import random

import torch

from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.images import pad_patches
from llava_platform.data.samples import EncodedSample

__all__ = ["collate", "grouped_batches"]


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


def grouped_batches(lengths: list[int], has_image: list[bool], batch_size: int, seed: int,
                    megabatch: int = 50) -> list[list[int]]:  # fmt: skip
    """Shuffled batches of indices, each of one modality and similar lengths (less padding).

    As LLaVA's group_by_modality_length: shuffle, cut into megabatches of `megabatch` batches,
    sort each megabatch by length, cut into batches; batches are then shuffled. Every index
    appears exactly once; only the last batch of each modality may be short.
    """
    rng = random.Random(seed)
    batches: list[list[int]] = []
    for modality in (True, False):
        indices = [i for i, flag in enumerate(has_image) if flag == modality]
        rng.shuffle(indices)
        size = batch_size * megabatch
        for start in range(0, len(indices), size):
            group = sorted(indices[start : start + size], key=lambda i: lengths[i], reverse=True)
            batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches
