"""Rendered prompt -> token ids and labels, with the image placeholder expanded per image.

Labels come from character spans, not from re-tokenising pieces: the whole text
is tokenised once (so ids equal what the processor produces at inference) and
a token is trained iff its character range overlaps a trained span.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from llava_platform.data.templates import Rendered

__all__ = [
    "IGNORE_INDEX", "Encoded", "encode_rendered", "token_ids_many", "first_trained_token", "expand_image_tokens",
]  # fmt: skip

IGNORE_INDEX = -100  # labels with this value are not in the loss (torch CrossEntropyLoss default)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_rendered(tokenizer: PreTrainedTokenizerBase, rendered: Rendered) -> Encoded:
    """Tokenise with the tokenizer's own special tokens (BOS), labels = ids on trained spans: a token is trained iff
    its character range [start, end) is non-empty and overlaps a trained span."""
    [(ids, offsets)] = _tokenize(tokenizer, [rendered.text])
    offsets = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
    spans = np.asarray(rendered.trained_spans, dtype=np.int64).reshape(-1, 2)  # (S, 2)
    start, end = offsets[:, :1], offsets[:, 1:]  # (T, 1) each
    trained = (end[:, 0] > start[:, 0]) & ((start < spans[:, 1]) & (spans[:, 0] < end)).any(axis=1)
    return Encoded(list(ids), np.where(trained, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist())


def first_trained_token(tokenizer: PreTrainedTokenizerBase, rendered: Rendered, ids: list[int]) -> int | None:
    """The index of the first token encode_rendered labels (None: it labels none), for a text whose ids are `ids`.

    Only the text up to a little past the first trained span is tokenised with character offsets (a sample that
    is cut is usually long: its prompt and first reply are a small part), and that head's tokens are checked
    against the whole text's ids, all but its last two (which a cut can change): else the whole text is labelled.
    """
    spans = [(start, end) for start, end in rendered.trained_spans if end > start]
    if not spans:
        return None
    text, first = rendered.text, spans[0]
    cut = min(len(text), first[1] + 64)
    if cut < len(text):
        head = encode_rendered(tokenizer, Rendered(text[:cut], (first,)))
        sure = len(head.input_ids) - 2
        if head.input_ids[:sure] == list(ids[:sure]):
            found = next((i for i, label in enumerate(head.labels[:sure]) if label != IGNORE_INDEX), None)
            if found is not None:
                return found
    return next((i for i, label in enumerate(encode_rendered(tokenizer, rendered).labels) if label != IGNORE_INDEX), None)


def token_ids_many(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """The ids of each text, special tokens added, without character offsets (about half the cost of tokenising with
    them): the data check's token counts."""
    backend = _backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=True)["input_ids"]
    fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in fast(texts, add_special_tokens=True)]


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each text, special tokens added: what tokenizer(text) gives. A fast tokenizer's
    own encode_batch is called directly (transformers' conversion of its output costs as much as the tokenizing)."""
    backend = _backend(tokenizer)
    if backend is None:
        enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"]))
    return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=True)]


def _backend(tokenizer: PreTrainedTokenizerBase):
    """A fast tokenizer's `tokenizers.Tokenizer`, with no truncation or padding (transformers may leave either set
    from an earlier call); None for another kind."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    return backend


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
