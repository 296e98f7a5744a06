"""The OpenAI chat-completions request and response, as far as a LLaVA model can honour them.

A request's messages become the engine's: each `image_url` part becomes an "<image>" placeholder
where it stands (parts joined by "\\n", so [image, text] is LLaVA's "<image>\\nquestion"), and its
URL is resolved by serve/image_inputs.py. Parameters the model cannot honour (n > 1, penalties,
logprobs) are a 400 naming them, never silently dropped; unknown fields are a 400 as in OpenAI's API.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message
from llava_platform.inference.engine import GenerationResult
from llava_platform.serve.errors import ApiError

__all__ = ["ChatCompletionRequest", "ImageRef", "to_engine_messages", "completion", "chunk", "usage"]

MAX_STOP_LENGTH = 256  # characters of one stop string


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(max_length=64 * 2**20, description="data:image/...;base64,... or an http(s) URL")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str | None = Field(None, description="a served model's name (GET /v1/models); default: the first")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError(f"n={n}: this server returns one choice per request; send n=1 (or several requests)")
        return n

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not supported; leave it out or send 0")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported; leave it out or send false")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"a stop string is at most {MAX_STOP_LENGTH} characters")
        return [s for s in stops if s]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ImageRef:
    """An image_url of the request, and where it sits (for error messages)."""

    def __init__(self, url: str, param: str):
        self.url = url
        self.param = param


def to_engine_messages(request: ChatCompletionRequest) -> tuple[list[Message], list[ImageRef]]:
    """The engine's messages (images as "<image>" placeholders, in order) and the image URLs to resolve."""
    messages, images = [], []
    for i, message in enumerate(request.messages):
        parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        pieces = []
        for j, part in enumerate(parts):
            where = f"messages[{i}].content" + ("" if isinstance(message.content, str) else f"[{j}]")
            if isinstance(part, ImagePart):
                if message.role != "user":
                    raise ApiError(400, f"{where}: images go in user messages, not {message.role} ones", where, "invalid_value")
                images.append(ImageRef(part.image_url.url, where + ".image_url.url"))
                pieces.append(IMAGE_PLACEHOLDER)
            else:
                if IMAGE_PLACEHOLDER in part.text:
                    raise ApiError(400, f"{where}: text may not contain {IMAGE_PLACEHOLDER!r}; send images as image_url parts",
                                   where, "invalid_value")  # fmt: skip
                pieces.append(part.text)
        messages.append(Message(message.role, "\n".join(pieces)))
    return messages, images


def usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}  # fmt: skip


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def completion(completion_id: str, model: str, result: GenerationResult) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],  # fmt: skip
        "usage": usage(result),
    }


def chunk(completion_id: str, model: str, delta: dict | None, finish_reason: str | None = None,
          usage_counts: dict | None = None) -> dict:  # fmt: skip
    """One server-sent event's payload; `delta` None gives the usage-only chunk (no choices)."""
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                                  "logprobs": None}]}  # fmt: skip
    if usage_counts is not None:
        body["usage"] = usage_counts
    return body
