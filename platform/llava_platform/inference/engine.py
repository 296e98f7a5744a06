"""The inference engine used by the CLI, batch and serve: preprocess -> one batched generate -> decode.

    engine = InferenceEngine(load_checkpoint("runs/tiny/final"))
    [result] = engine.generate([GenerationRequest([Message("user", "<image>\\nWhat is it?")], [image])],
                               SamplingSpec(max_new_tokens=32))
    for event in engine.stream(requests, sampling): print(event.delta, end="")

Prompts are built by the conversation template (the same string the processor's
chat template builds), padded on the left, and images go through the model's
own processor, so the engine answers exactly what plain transformers answers.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from llava_platform.config import ModelSpec, SamplingSpec
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message, TemplateError
from llava_platform.model.builder import load_checkpoint
from llava_platform.model.bundle import ModelBundle

__all__ = ["GenerationRequest", "GenerationResult", "StreamEvent", "InferenceEngine"]


@dataclass
class GenerationRequest:
    messages: list[Message]  # ends with a user turn; "<image>" marks where each image goes
    images: list[Image.Image] = field(default_factory=list)  # in placeholder order


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass
class StreamEvent:
    index: int  # which request of the batch
    delta: str  # new text since the last event for this request
    result: GenerationResult | None = None  # set on the request's last event


class _TokenQueue(BaseStreamer):
    """Receives generate()'s tokens: first the prompt (B, T), then one (B,) tensor per step."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True  # the prompt itself is not output
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class _Cancel(StoppingCriteria):
    """Set by the consumer (closed stream, client gone): generate() stops at its next step."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class InferenceEngine:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.processor = bundle.processor
        self.tokenizer = bundle.processor.tokenizer
        self.template = bundle.template
        self.stop_ids = self._stop_token_ids()

    @classmethod
    def from_checkpoint(cls, path: str, **spec_fields) -> "InferenceEngine":
        return cls(load_checkpoint(path, ModelSpec(checkpoint=str(path), **spec_fields)))

    def _stop_token_ids(self) -> list[int]:
        """EOS plus the template's stop string when it is a single token (</s>, <|im_end|>)."""
        ids = {self.tokenizer.eos_token_id}
        stop = self.tokenizer.encode(self.template.stop, add_special_tokens=False)
        if len(stop) == 1 and stop[0] in self.tokenizer.all_special_ids:
            ids.add(stop[0])
        ids.discard(None)
        return sorted(ids)

    def _stop_strings(self, sampling: SamplingSpec) -> list[str]:
        """Stops matched on decoded text: the template's stop when it is plain text ("\\n"), and the user's."""
        strings = list(sampling.stop)
        if self.template.stop not in self.tokenizer.all_special_tokens:
            strings.append(self.template.stop)
        return [s for s in strings if s]

    # ------------------------------------------------------------------ preprocessing

    def prepare(self, requests: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded input_ids / attention_mask / pixel_values (/ image_sizes) on the model's device."""
        prompts, images = [], []
        for i, req in enumerate(requests):
            placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in req.messages)
            if placeholders != len(req.images):
                raise TemplateError(
                    f"request {i}: the messages have {placeholders} <image> placeholders but {len(req.images)} images were given"
                )
            prompts.append(self.template.render(req.messages, add_generation_prompt=True).text)
            images += req.images
        inputs = self.processor(
            text=prompts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        )
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return dict(inputs)

    def _generate_kwargs(self, sampling: SamplingSpec, stop_strings: list[str]) -> dict:
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=sampling.temperature > 0,
        )
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=self.tokenizer)
        return kwargs

    # ------------------------------------------------------------------ generation

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSpec | None = None) -> list[GenerationResult]:
        """One batched generate call for all requests."""
        results: list[GenerationResult | None] = [None] * len(requests)
        for event in self.stream(requests, sampling):
            if event.result is not None:
                results[event.index] = event.result
        return results  # type: ignore[return-value]

    def stream(self, requests: list[GenerationRequest], sampling: SamplingSpec | None = None) -> Iterator[StreamEvent]:
        """Token streaming for a batch: text deltas per request as they decode, then a final result each."""
        sampling = sampling or SamplingSpec()
        inputs = self.prepare(requests)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        stop_strings = self._stop_strings(sampling)  # generate() stops on them, the decoders cut at them
        streamer, cancel = _TokenQueue(), _Cancel()
        errors: list[BaseException] = []
        rng_devices = [] if self.model.device.type == "cpu" else [self.model.device]

        def run() -> None:
            try:
                with torch.inference_mode(), torch.random.fork_rng(devices=rng_devices):
                    if sampling.seed is not None:
                        torch.manual_seed(sampling.seed)
                    self.model.generate(**inputs, **self._generate_kwargs(sampling, stop_strings), streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([cancel]))  # fmt: skip
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        decoders = [_RowDecoder(self.tokenizer, self.stop_ids, stop_strings) for _ in requests]
        try:
            while (step := streamer.queue.get()) is not None:
                for i, token in enumerate(step):
                    delta = decoders[i].add(token)
                    if delta:
                        yield StreamEvent(i, delta)
        finally:  # also when the consumer stops early: no generation left running on its own
            cancel.event.set()
            thread.join()
        if errors:
            raise errors[0]
        for i, dec in enumerate(decoders):
            delta, reason = dec.finish()
            yield StreamEvent(i, delta, GenerationResult(dec.text, prompt_tokens[i], dec.num_tokens, reason))


class _RowDecoder:
    """Incremental decode of one row: holds back partial UTF-8 and text that may begin a stop string."""

    def __init__(self, tokenizer, stop_ids: list[int], stop_strings: list[str]):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.stop_strings = stop_strings
        self.tokens: list[int] = []
        self.done = False
        self.stopped = False
        self.num_tokens = 0  # generated tokens, the stop token included (what the model spent)
        self.text = ""  # visible text so far
        self.emitted = 0

    def add(self, token: int) -> str:
        if self.done:
            return ""  # rows that finished early keep receiving pad tokens
        self.num_tokens += 1
        if token in self.stop_ids:
            self.done = self.stopped = True
            return self._emit(final=True)
        self.tokens.append(token)
        return self._emit(final=False)

    def _emit(self, final: bool) -> str:
        raw = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [raw.find(s) for s in self.stop_strings if s in raw]  # on the raw text, as generate() matched it
        if cuts:
            raw, final = raw[: min(cuts)], True
            self.done = self.stopped = True
        elif not final:
            raw = raw.rstrip("\ufffd")  # a multi-byte character is not complete yet
            raw = raw[: len(raw) - self._partial_stop(raw)]
        # leading whitespace dropped, as LLaVA's CLI does (the model emits " answer" after "ASSISTANT:")
        text = raw.lstrip()
        if final:
            self.text = text
        delta = text[self.emitted :]
        self.emitted = max(self.emitted, len(text))
        return delta

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that could be the start of a stop string."""
        return max((k for s in self.stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def finish(self) -> tuple[str, Literal["stop", "length"]]:
        delta = "" if self.done else self._emit(final=True)
        return delta, "stop" if self.stopped else "length"
