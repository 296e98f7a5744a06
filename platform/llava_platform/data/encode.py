"""Rendered prompt -> token ids and labels, with the image placeholder expanded per image.

Labels come from character spans, not from re-tokenising pieces: the whole text
is tokenised once (so ids equal what the processor produces at inference) and
a token is trained iff its character range overlaps a trained span.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llava_platform.data.templates import Rendered

__all__ = ["IGNORE_INDEX", "Encoded", "encode_rendered", "expand_image_tokens"]

IGNORE_INDEX = -100  # labels with this value are not in the loss (torch CrossEntropyLoss default)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_rendered(tokenizer: PreTrainedTokenizerBase, rendered: Rendered) -> Encoded:
    """Tokenise with the tokenizer's own special tokens (BOS), labels = ids on trained spans."""
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(start < s_end and s_start < end for s_start, s_end in rendered.trained_spans):
            labels[i] = ids[i]
    return Encoded(ids, labels)


def expand_image_tokens(encoded: Encoded, image_token_id: int, tokens_per_image: list[int]) -> Encoded:
    """Repeat the i-th image token tokens_per_image[i] times (never trained), as the HF processor does.

    The count check names both numbers: a mismatch means the text's <image> placeholders and the
    sample's images disagree.
    """
    positions = [i for i, t in enumerate(encoded.input_ids) if t == image_token_id]
    if len(positions) != len(tokens_per_image):
        raise ValueError(
            f"the text has {len(positions)} <image> placeholders but the sample has {len(tokens_per_image)} images"
        )
    ids: list[int] = []
    labels: list[int] = []
    counts = iter(tokens_per_image)
    for token, label in zip(encoded.input_ids, encoded.labels):
        if token == image_token_id:
            n = next(counts)
            ids += [image_token_id] * n
            labels += [IGNORE_INDEX] * n
        else:
            ids.append(token)
            labels.append(label)
    return Encoded(ids, labels)
