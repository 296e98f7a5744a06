"""Conversation templates: the exact prompt strings of the original LLaVA, with the trained spans.

`render()` returns the prompt text plus the character spans the loss is computed
on (assistant replies and the separator that ends them, so the model learns to
stop). The same template is exported as a Jinja chat template, so that plain
transformers' `processor.apply_chat_template` builds the identical prompt.

    vicuna_v1 ("two" style), one exchange:
    "{system} USER: <image>\\nWhat is it? ASSISTANT: A cat.</s>"
                                      trained: ^^^^^^^^^^^^ " A cat.</s>"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from llava_platform.config import did_you_mean

__all__ = [
    "Message",
    "Rendered",
    "ConversationTemplate",
    "TEMPLATES",
    "TemplateError",
    "get_template",
    "message_text",
]

Style = Literal["plain", "two", "llama_2", "mpt"]
IMAGE_PLACEHOLDER = "<image>"


class TemplateError(ValueError):
    """A conversation does not fit the template (role order, empty turns, unknown template)."""


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str  # text with "<image>" placeholders where images go


@dataclass(frozen=True)
class Rendered:
    text: str
    trained_spans: tuple[tuple[int, int], ...]  # [start, end) character ranges the loss sees


def message_text(content: str | list[dict[str, Any]]) -> str:
    """HF / OpenAI content parts -> text with placeholders: each image becomes "<image>\\n", in order."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type")
        if kind in ("image", "image_url"):
            parts.append(IMAGE_PLACEHOLDER + "\n")
        elif kind == "text":
            parts.append(part["text"])
        else:
            raise TemplateError(f"content part of type {kind!r} is not supported; use 'text' or 'image'")
    return "".join(parts)


@dataclass(frozen=True)
class ConversationTemplate:
    """One LLaVA conversation format (llava/conversation.py's Conversation, as data)."""

    name: str
    style: Style
    system: str
    roles: tuple[str, str]  # (user, assistant) role strings as they appear in the prompt
    sep: str
    sep2: str
    stop: str  # the string that ends an assistant turn; generation stops on it

    # ------------------------------------------------------------------ python rendering

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        """Prompt text and trained spans. Training: ends with an assistant turn; generation: with a user turn."""
        system, turns = self._split_system(messages)
        self._check_order(turns, add_generation_prompt)
        pieces: list[tuple[str, bool]] = []  # (text, trained)
        render_turns = getattr(self, f"_render_{self.style}")
        render_turns(system, turns, pieces, add_generation_prompt)
        text, spans, pos = "", [], 0
        for piece, trained in pieces:
            if trained and piece:
                spans.append((pos, pos + len(piece)))
            text += piece
            pos += len(piece)
        return Rendered(text, tuple(spans))

    def _split_system(self, messages: list[Message]) -> tuple[str, list[Message]]:
        if messages and messages[0].role == "system":
            return messages[0].content, list(messages[1:])
        return self.system, list(messages)

    def _check_order(self, turns: list[Message], add_generation_prompt: bool) -> None:
        if not turns:
            raise TemplateError("conversation is empty")
        for i, m in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if m.role != expected:
                raise TemplateError(f"turn {i} is from {m.role!r}, expected {expected!r}: turns must alternate user, assistant")
            if m.role == "user" and not m.content.strip():
                raise TemplateError(f"turn {i} (user) is empty")
        last = turns[-1].role
        if add_generation_prompt and last != "user":
            raise TemplateError("a generation prompt must end with a user turn")
        if not add_generation_prompt and last != "assistant":
            raise TemplateError("a training conversation must end with an assistant turn (nothing to learn otherwise)")
        if self.style == "plain" and len(turns) > 2:
            raise TemplateError("template 'plain' (stage-1 captions) takes exactly one user turn and one caption")

    def _render_plain(self, system, turns, pieces, gen):
        # stage 1: the user's text is dropped, only its images stay: "<image>" + caption + "\n"
        pieces.append((IMAGE_PLACEHOLDER * max(1, turns[0].content.count(IMAGE_PLACEHOLDER)), False))
        if not gen:
            pieces.append((turns[1].content + self.sep, True))

    def _render_two(self, system, turns, pieces, gen):
        pieces.append((system + self.sep, False))
        for i, m in enumerate(turns):
            if m.role == "user":
                pieces.append((f"{self.roles[0]}: {m.content}{self.sep}", False))
            else:
                pieces.append((f"{self.roles[1]}:", False))
                pieces.append((f" {m.content}{self.sep2}", True))
        if gen:
            pieces.append((f"{self.roles[1]}:", False))

    def _render_llama_2(self, system, turns, pieces, gen):
        for i, m in enumerate(turns):
            if m.role == "user":
                content = (f"<<SYS>>\n{system}\n<</SYS>>\n\n" if i == 0 and system else "") + m.content
                # the first turn's leading sep is stripped (llava: ret.lstrip(sep))
                pieces.append(((self.sep if i else "") + f"[INST] {content} [/INST]", False))
            else:
                pieces.append((f" {m.content} {self.sep2}", True))

    def _render_mpt(self, system, turns, pieces, gen):
        pieces.append((system + self.sep, False))
        for m in turns:
            if m.role == "user":
                pieces.append((self.roles[0] + m.content + self.sep, False))
            else:
                pieces.append((self.roles[1], False))
                pieces.append((m.content + self.sep, True))
        if gen:
            pieces.append((self.roles[1], False))

    # ------------------------------------------------------------------ jinja export

    def chat_template(self) -> str:
        """A Jinja chat template that renders exactly what `render()` does (tested for equality)."""
        q = json.dumps  # Jinja string literals accept JSON-escaped strings
        content = (
            "{%- macro text(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
            "{%- for c in m['content'] -%}{%- if c['type'] in ['image', 'image_url'] -%}{{ " + q(IMAGE_PLACEHOLDER + "\n") + " }}"
            "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
        )
        system = (
            "{%- if messages[0]['role'] == 'system' -%}{%- set system = text(messages[0]) -%}"
            "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = " + q(self.system) + " -%}"
            "{%- set turns = messages -%}{%- endif -%}"
        )
        body = {
            "plain": (
                "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                "{%- set n = text(m).count(" + q(IMAGE_PLACEHOLDER) + ") -%}{{ " + q(IMAGE_PLACEHOLDER) + " * (n if n > 0 else 1) }}"
                "{%- else -%}{{ text(m) + " + q(self.sep) + " }}{%- endif -%}{%- endfor -%}"
            ),
            "two": (
                "{{ system + " + q(self.sep) + " }}{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                "{{ " + q(self.roles[0] + ": ") + " + text(m) + " + q(self.sep) + " }}{%- else -%}"
                "{{ " + q(self.roles[1] + ": ") + " + text(m) + " + q(self.sep2) + " }}{%- endif -%}{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{ " + q(self.roles[1] + ":") + " }}{%- endif -%}"
            ),
            "llama_2": (
                "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                "{%- if loop.first -%}{%- set c = (" + q("<<SYS>>\n") + " + system + " + q("\n<</SYS>>\n\n") + " if system else '') + text(m) -%}"
                "{{ '[INST] ' + c + ' [/INST]' }}{%- else -%}{{ " + q(self.sep + "[INST] ") + " + text(m) + ' [/INST]' }}{%- endif -%}"
                "{%- else -%}{{ ' ' + text(m) + ' ' + " + q(self.sep2) + " }}{%- endif -%}{%- endfor -%}"
            ),
            "mpt": (
                "{{ system + " + q(self.sep) + " }}{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                "{{ " + q(self.roles[0]) + " + text(m) + " + q(self.sep) + " }}{%- else -%}"
                "{{ " + q(self.roles[1]) + " + text(m) + " + q(self.sep) + " }}{%- endif -%}{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{ " + q(self.roles[1]) + " }}{%- endif -%}"
            ),
        }[self.style]
        return content + system + body


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)

TEMPLATES: dict[str, ConversationTemplate] = {
    t.name: t
    for t in [
        ConversationTemplate("plain", "plain", "", ("", ""), sep="\n", sep2="", stop="\n"),
        ConversationTemplate("vicuna_v1", "two", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), sep=" ", sep2="</s>", stop="</s>"),
        ConversationTemplate("llava_llama_2", "llama_2", _LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), sep="<s>", sep2="</s>", stop="</s>"),
        ConversationTemplate("mistral_instruct", "llama_2", "", ("USER", "ASSISTANT"), sep="", sep2="</s>", stop="</s>"),
        ConversationTemplate(
            "chatml_direct",
            "mpt",
            "<|im_start|>system\nAnswer the questions.",
            ("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep="<|im_end|>",
            sep2="",
            stop="<|im_end|>",
        ),
    ]
}


def get_template(name: str) -> ConversationTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"unknown conversation template {name!r}; {did_you_mean(name, TEMPLATES)}known: "
                            f"{', '.join(TEMPLATES)}") from None  # fmt: skip
