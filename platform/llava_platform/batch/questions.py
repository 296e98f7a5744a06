"""Batch inputs -> questions: one row per thing the model is asked, never dropping a bad one.

    from_question_line({"question_id": 7, "image": "a.jpg", "text": "What is it?"})   # LLaVA's model_vqa files
        -> Question("7", [user "<image>\\nWhat is it?"], ["a.jpg"], prompt "What is it?")
    from_conversation({"id": "r1", "image": "a.jpg", "conversations": [human, gpt, human, gpt]})
        -> [Question("r1_0", [user q0]), Question("r1_1", [user q0, assistant a0 (gold), user q1])]
    from_image("imgs/b.png", "Describe the image.")                                  # captioning a folder

Every input gives its questions or one row with `error` naming what is wrong (`bad_record: ...`,
`empty_question`), so a batch job writes one output row per input row and a bad row is never fatal.
Plain functions over one record: a Ray Data task maps them over a file's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llava_platform.data.records import RecordError, parse_record
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message

__all__ = ["Question", "from_question_line", "from_conversation", "from_image"]


@dataclass
class Question:
    question_id: str
    messages: list[Message]  # ends with the user turn asked; earlier turns are the gold history
    images: list[str]  # image paths (relative to the image folder) or URIs, in placeholder order
    prompt: str  # the asked text as LLaVA's answers files record it (no image placeholder)
    metadata: dict[str, Any] = field(default_factory=dict)  # the record's other fields: category, gold answers ...
    error: str | None = None  # set: the question cannot be asked; the output row carries this instead of an answer


def _refused(question_id: str, error: str, metadata: dict[str, Any] | None = None) -> Question:
    return Question(question_id, [], [], "", metadata or {}, error)


def from_question_line(raw: Any, label: str, suffix: str | None = None) -> Question:
    """A line of LLaVA's question files (`question_id`, `image` (optional), `text`): the image goes first, as LLaVA's
    model_vqa scripts ask it. `suffix` is appended to the text (the files of LLaVA-1.5's benchmarks already hold
    theirs: only a task spec that says so adds one). `label` ("line 12") names a line without a question_id."""
    if not isinstance(raw, dict):
        return _refused(label, f"bad_record: expected an object, got {type(raw).__name__}")
    question_id = label if raw.get("question_id") is None else str(raw["question_id"])
    metadata = {k: v for k, v in raw.items() if k not in ("question_id", "image", "text")}
    text, image = raw.get("text"), raw.get("image")
    if not isinstance(text, str):
        return _refused(question_id, "bad_record: 'text' must be the question, a string", metadata)
    if image is not None and not (isinstance(image, str) and image):
        return _refused(question_id, "bad_record: 'image' must be a path", metadata)
    if not text.strip():
        return _refused(question_id, "empty_question", metadata)
    if IMAGE_PLACEHOLDER in text:
        return _refused(question_id, f"bad_record: 'text' holds {IMAGE_PLACEHOLDER!r}; the image goes in 'image'", metadata)
    prompt = text + (suffix or "")
    content = IMAGE_PLACEHOLDER + "\n" + prompt if image else prompt
    return Question(question_id, [Message("user", content)], [image] if image else [], prompt, metadata)


def from_conversation(raw: Any, label: str, suffix: str | None = None) -> list[Question]:
    """A LLaVA conversation record: every human turn is a question, asked with the gold turns before it; its id is the
    record id (`label`, "#12", for a record without one) and the turn's index among the human turns ("r1_0", ...).
    `suffix` is appended to each asked turn (not to the history before it)."""
    try:
        record = parse_record(raw, label)
    except RecordError as e:
        return [_refused(e.record_id, f"bad_record: {e.reason}")]
    questions = []
    asked = 0
    for k, message in enumerate(record.messages):
        if message.role != "user":
            continue
        history = record.messages[:k] + [Message("user", message.content + (suffix or ""))]
        placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in history)
        prompt = message.content.replace(IMAGE_PLACEHOLDER, "").strip()
        question_id = f"{record.id}_{asked}"
        asked += 1
        if not prompt:
            questions.append(_refused(question_id, "empty_question", dict(record.extra)))
            continue
        prompt += suffix or ""
        gold = record.messages[k + 1].content if k + 1 < len(record.messages) else None
        metadata = {**record.extra, **({"gold": gold} if gold is not None else {})}
        questions.append(Question(question_id, history, record.images[:placeholders], prompt, metadata))
    return questions or [_refused(record.id, "bad_record: no human turn to ask")]


def from_image(path: str, prompt: str) -> Question:
    """One image of a folder or glob, with the job's one prompt (captioning); its id is its path."""
    return Question(path, [Message("user", IMAGE_PLACEHOLDER + "\n" + prompt)], [path], prompt)
