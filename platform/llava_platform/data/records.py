"""Read LLaVA-format datasets: a JSON list or JSONL of {id, image?, conversations: [{from, value}]}.

Parsing never stops at the first bad record: `read_records` yields a `Record` or
a `BadRecord` (with the id and the reason) for every entry, so a whole file can
be checked in one pass and every bad id named. `parse_raw` does the same for one
entry's JSON text, as the data check's Ray Data tasks receive it from the shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_platform.data.shards import iter_raw_entries
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message
from llava_platform.storage import Storage

__all__ = ["Record", "BadRecord", "RecordError", "read_records", "parse_record", "parse_raw"]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """One record is malformed; `record_id` says which."""

    def __init__(self, record_id: str, reason: str):
        super().__init__(f"record {record_id}: {reason}")
        self.record_id = record_id
        self.reason = reason


@dataclass
class Record:
    id: str
    messages: list[Message]
    images: list[str] = field(default_factory=list)  # paths relative to the image folder, in placeholder order
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level fields (e.g. "answer" in test sets)


@dataclass
class BadRecord:
    id: str
    reason: str


def _record_id(raw: Any, fallback: int | str) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), (str, int)):
        return str(raw["id"])
    return fallback if isinstance(fallback, str) else f"#{fallback}"  # no usable id: where it is in the file


def parse_record(raw: Any, fallback_id: int | str = 0) -> Record:
    """Validate one raw record and normalise its image placeholders the way LLaVA does.

    `fallback_id` names a record without a usable id: its position (#N) or a label such as "line 12".
    One image: the placeholder moves to the front of its turn as "<image>\\n" (added to the
    first user turn if the text has none). Several images: placeholders stay where they are
    and their count must equal the number of images.
    """
    rid = _record_id(raw, fallback_id)
    if not isinstance(raw, dict):
        raise RecordError(rid, f"expected an object, got {type(raw).__name__}")
    convs = raw.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError(rid, "'conversations' must be a non-empty list of {from, value} turns")
    image = raw.get("image")
    images = [image] if isinstance(image, str) else image if isinstance(image, list) else []
    if image is not None and (not images or not all(isinstance(p, str) and p for p in images)):
        raise RecordError(rid, "'image' must be a path or a list of paths")
    messages = []
    for t, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError(rid, f"turn {t}: expected {{'from': ..., 'value': <text>}}")
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise RecordError(rid, f"turn {t}: 'from' is {turn.get('from')!r}; use 'human' or 'gpt'")
        messages.append(Message(role, turn["value"]))
    turns = messages[1:] if messages[0].role == "system" else messages
    for t, m in enumerate(turns):
        expected = "user" if t % 2 == 0 else "assistant"
        if m.role != expected:
            raise RecordError(rid, f"turn {t} is from {m.role!r}, expected {expected!r}: turns must alternate human, gpt")
    if len(turns) < 2 or turns[-1].role != "assistant":
        raise RecordError(rid, "a conversation needs at least one human turn followed by a gpt answer, and must end with gpt")
    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if len(images) == 1 and placeholders <= 1:
        messages = _image_to_front(messages)
    elif placeholders != len(images):
        raise RecordError(rid, f"the text has {placeholders} <image> placeholders but the record has {len(images)} images")
    extra = {k: v for k, v in raw.items() if k not in ("id", "image", "conversations")}
    return Record(rid, messages, images, extra)


def _image_to_front(messages: list[Message]) -> list[Message]:
    """LLaVA's preprocess_multimodal: "<image>\\n" + text without the placeholder, in the turn that had it."""
    has = next((i for i, m in enumerate(messages) if IMAGE_PLACEHOLDER in m.content), None)
    if has is None:
        has = next(i for i, m in enumerate(messages) if m.role == "user")
    out = list(messages)
    text = out[has].content.replace(IMAGE_PLACEHOLDER, "").strip()
    out[has] = Message(out[has].role, IMAGE_PLACEHOLDER + "\n" + text)
    return out


def read_records(path: str | Path, storage: Storage | None = None) -> Iterator[Record | BadRecord]:
    """Every entry of a LLaVA JSON / JSONL / Parquet file (local or a URI), parsed, or a BadRecord saying why
    not; streamed, so a large file is never held whole (training reads it through data/shards.py instead)."""
    storage = storage or Storage()
    if storage.stat(str(path)) is None:
        raise FileNotFoundError(f"dataset not found: {path}; check data.path")
    for label, raw in iter_raw_entries(str(path), storage):
        yield parse_raw(raw, label)


def parse_raw(raw: str, label: str) -> Record | BadRecord:
    """One entry's JSON text -> Record, or BadRecord naming the entry (its id, else `label`) and the reason."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        return BadRecord(label, f"malformed JSON: {e.msg} at column {e.colno}")
    try:
        return parse_record(value, label)
    except RecordError as e:
        return BadRecord(e.record_id, e.reason)
