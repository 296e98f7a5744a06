"""Collate pads right and keeps images in sample order; grouped batches cover every sample once."""

import torch

from llava_platform.data.collate import collate, grouped_batches
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


def test_grouped_batches_cover_everything_once_by_modality():
    lengths = [(i * 37) % 101 for i in range(203)]
    has_image = [i % 3 != 0 for i in range(203)]
    batches = grouped_batches(lengths, has_image, batch_size=8, seed=1, megabatch=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert sum(len(b) < 8 for b in batches) <= 2
    # within a batch lengths are close: padding is far below what random batches give
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    rng = torch.Generator().manual_seed(0)
    perm = torch.randperm(203, generator=rng).tolist()
    random_batches = [perm[k : k + 8] for k in range(0, 203, 8)]
    random_waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in random_batches)
    assert waste < random_waste / 3
    assert grouped_batches(lengths, has_image, 8, seed=1, megabatch=4) == batches
    assert grouped_batches(lengths, has_image, 8, seed=2, megabatch=4) != batches
