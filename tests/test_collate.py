"""Collate pads right and keeps images in sample order."""

import torch

from llava_platform.data.collate import collate
from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.samples import EncodedSample


def sample(n, images=1, patches=None):
    pv = None
    if images:
        pv = torch.randn(images, patches, 3, 4, 4) if patches else torch.randn(images, 3, 4, 4)
    sizes = torch.tensor([[4, 4 * patches]] * images) if patches and images else None
    return EncodedSample(f"s{n}", list(range(1, n + 1)), [IGNORE_INDEX] * (n - 1) + [n], pv, sizes)


def test_right_padding_labels_and_images():
    a, b, c = sample(3), sample(5, images=0), sample(2, images=2)
    batch = collate([a, b, c], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5], [1, 2, 0, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 2]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX]
    assert torch.equal(batch["pixel_values"], torch.cat([a.pixel_values, c.pixel_values]))  # text-only b adds none
    assert "image_sizes" not in batch
    assert "pixel_values" not in collate([b], 0)


def test_anyres_patches_are_zero_padded():
    a, b = sample(3, patches=3), sample(4, patches=5)
    batch = collate([a, b], pad_token_id=0)
    assert batch["pixel_values"].shape == (2, 5, 3, 4, 4)
    assert torch.equal(batch["pixel_values"][0, :3], a.pixel_values[0]) and not batch["pixel_values"][0, 3:].any()
    assert batch["image_sizes"].tolist() == [[4, 12], [4, 20]]


def test_a_batch_without_images_gets_the_filler_row_and_no_label_from_it():
    """The filler (samples.blank_sample) is one more row, only when no sample has an image; it has no label."""
    text, filler = sample(5, images=0), EncodedSample("<blank image>", [9] * 7, [IGNORE_INDEX] * 7, torch.zeros(1, 3, 4, 4), None)
    batch = collate([text, sample(3, images=0)], pad_token_id=0, filler=filler)
    assert batch["input_ids"].shape == (3, 7) and batch["input_ids"][2].tolist() == [9] * 7
    assert (batch["labels"][2] == IGNORE_INDEX).all() and batch["pixel_values"].shape == (1, 3, 4, 4)
    with_image = collate([text, sample(3)], pad_token_id=0, filler=filler)
    assert with_image["input_ids"].shape[0] == 2  # an image already runs the tower: no filler
