"""Read LLaVA-format datasets: a JSON list or JSONL of {id, image?, conversations: [{from, value}]}.

Parsing never stops at the first bad record: `read_records` yields a `Record` or
a `BadRecord` (with the id and the reason) for every entry, so a whole file can
be checked in one pass and every bad id named.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message

__all__ = ["Record", "BadRecord", "RecordError", "read_records", "parse_record"]

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


def _record_id(raw: Any, index: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), (str, int)):
        return str(raw["id"])
    return f"#{index}"  # no usable id: position in the file


def parse_record(raw: Any, index: int = 0) -> Record:
    """Validate one raw record and normalise its image placeholders the way LLaVA does.

    One image: the placeholder moves to the front of its turn as "<image>\\n" (added to the
    first user turn if the text has none). Several images: placeholders stay where they are
    and their count must equal the number of images.
    """
    rid = _record_id(raw, index)
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


def _raw_entries(path: Path) -> Iterator[tuple[int, Any]]:
    """(index, raw record or a JSON error) for .json (a list) and .jsonl files."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, RecordError(f"line {n}", f"malformed JSON: {e.msg} at column {e.colno}")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or use .jsonl with one record per line)")
    yield from enumerate(data)


def read_records(path: str | Path) -> Iterator[Record | BadRecord]:
    """Every entry of a LLaVA JSON / JSONL file, parsed, or a BadRecord saying why not."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}; check data.path")
    for index, raw in _raw_entries(path):
        try:
            if isinstance(raw, RecordError):
                raise raw
            yield parse_record(raw, index)
        except RecordError as e:
            yield BadRecord(e.record_id, e.reason)
