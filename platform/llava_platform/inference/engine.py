"""The inference engine used by the CLI, batch and serve: preprocess -> one batched generate -> decode.

    engine = InferenceEngine(load_checkpoint("runs/tiny/final"))
    [result] = engine.generate([GenerationRequest([Message("user", "<image>\\nWhat is it?")], [image])],
                               SamplingSpec(max_new_tokens=32))
    for event in engine.stream(requests, sampling): print(event.delta, end="")

Prompts are built by the conversation template (the same string the processor's
chat template builds), padded on the left, and images go through the model's
own processor, so greedy answers are plain transformers' greedy answers.

Every row of a batch keeps its own sampling (temperature, top_p, seed, stop strings,
max_new_tokens; `GenerationRequest.sampling`), so requests from different clients
decode together (inference/batcher.py) and each gets what it would get alone (in
float32; in half precision the batch's padding can move a logit): a row samples
from its own seeded generator, stops on its own strings and limit, and its
result is yielded as soon as it finishes, while the others go on. Setting a row's
`cancel` event stops that row alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from llava_platform.config import ModelSpec, SamplingSpec
from llava_platform.data.images import pad_patches
from llava_platform.data.templates import IMAGE_PLACEHOLDER, ConversationTemplate, Message, TemplateError
from llava_platform.model.builder import load_checkpoint
from llava_platform.model.bundle import ModelBundle

__all__ = ["GenerationRequest", "GenerationResult", "StreamEvent", "InferenceEngine", "encode_messages"]


@dataclass(eq=False)  # compared by identity: it carries images, tensors and an event
class GenerationRequest:
    messages: list[Message]  # ends with a user turn; "<image>" marks where each image goes
    images: list[Image.Image] = field(default_factory=list)  # in placeholder order
    sampling: SamplingSpec | None = None  # this row's decoding; None: the sampling the call was given
    cancel: threading.Event | None = None  # set by the caller to stop this row alone (a client that left)
    encoded: dict[str, torch.Tensor] | None = None  # its model inputs, once InferenceEngine.encode made them


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


class _RowStops(StoppingCriteria):
    """Per-row stopping, checked by generate() after every step: (B, T) ids -> (B,) done.

    A row is done when it reached its own max_new_tokens, its decoded tail holds one of its stop strings,
    the consumer saw it finish (`finished`, set from the stream's decoders: they see what this window may
    miss), or its cancel event is set; `cancel_all` (the consumer closed the stream) ends every row.
    Stop tokens (EOS) are generate()'s own eos_token_id check.
    """

    def __init__(self, tokenizer, prompt_length: int, limits: list[int], stop_strings: list[list[str]],
                 cancels: list[threading.Event | None]):  # fmt: skip
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.limits = limits
        self.stop_strings = stop_strings
        # a stop string of n UTF-8 bytes spans at most n tokens (byte-fallback tokens), +1 for one starting mid-way
        self.window = max((len(s.encode()) for strings in stop_strings for s in strings), default=0) + 1
        self.cancels = cancels
        self.finished = [False] * len(limits)  # written by the consumer's thread, read here
        self.cancel_all = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = [self.cancel_all.is_set() or finished or generated >= limit or (cancel is not None and cancel.is_set())
                for limit, cancel, finished in zip(self.limits, self.cancels, self.finished)]  # fmt: skip
        if any(strings for strings in self.stop_strings):
            tails = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window) :].tolist()  # one sync
            for i, strings in enumerate(self.stop_strings):
                if strings and not done[i]:
                    text = self.tokenizer.decode(tails[i], skip_special_tokens=True)
                    done[i] = any(s in text for s in strings)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RowSampler(LogitsProcessor):
    """Sampling per row inside a greedy generate(): (B, V) scores -> scores whose argmax is each row's pick.

    A row with temperature > 0 samples from softmax(scores / temperature), cut to its top_p mass, with its
    own generator (seeded by its seed): its tokens do not depend on the other rows of the batch. The picked
    token keeps score 0 and every other -inf, so generate()'s argmax takes it. Greedy rows pass unchanged.
    """

    def __init__(self, samplings: list[SamplingSpec]):
        self.samplings = samplings
        self.generators: list[torch.Generator | None] = [None] * len(samplings)

    def _generator(self, i: int, device: torch.device) -> torch.Generator:
        if self.generators[i] is None:
            gen = torch.Generator(device=device)
            seed = self.samplings[i].seed
            gen.manual_seed(seed) if seed is not None else gen.seed()
            self.generators[i] = gen
        return self.generators[i]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, sampling in enumerate(self.samplings):
            if sampling.temperature == 0:
                continue
            probs = torch.softmax(scores[i].float() / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p  # the top token always stays
                probs = probs.scatter(0, order[outside], 0.0)
            token = torch.multinomial(probs, 1, generator=self._generator(i, scores.device))
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


def encode_messages(processor: ProcessorMixin, template: ConversationTemplate, messages: list[Message], images: list[Image.Image],
                    index: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """A conversation's model inputs, as the engine builds them: the template's prompt (with the generation prompt)
    through the processor. input_ids (1, T), pixel_values (n_images, ...), image_sizes with images. Raises
    TemplateError for a conversation the template refuses or placeholders that do not match the images (request
    `index` named). Batch preprocessing calls it without a model, so its rows are what the engine would encode."""
    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise TemplateError(f"request {index}: the messages have {placeholders} <image> placeholders but "
                            f"{len(images)} images were given")  # fmt: skip
    prompt = template.render(messages, add_generation_prompt=True).text
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


class InferenceEngine:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.processor = bundle.processor
        self.tokenizer = bundle.processor.tokenizer
        self.template = bundle.template
        self.stop_ids = self._stop_token_ids()

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device | None = None, **spec_fields) -> "InferenceEngine":
        """`device` places the weights as they load (a quantized LLM must load on its GPU); default CPU."""
        return cls(load_checkpoint(path, ModelSpec(checkpoint=str(path), **spec_fields), device))

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

    def encode(self, request: GenerationRequest, index: int = 0) -> dict[str, torch.Tensor]:
        """One request's model inputs, unpadded (the processor on its prompt and images): input_ids (1, T),
        pixel_values (n_images, ...) and image_sizes when it has images. Raises TemplateError for a conversation the
        template refuses or placeholders that do not match the images. Kept on the request (`encoded`) until its
        batch is prepared, so a request checked alone (the Serve replica measures its prompt) is not processed twice."""
        if request.encoded is None:
            request.encoded = encode_messages(self.processor, self.template, request.messages, request.images, index)
        return request.encoded

    def prepare(self, requests: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded input_ids / attention_mask, pixel_values (/ image_sizes) of the batch, on the model's device."""
        encoded = [self.encode(r, i) for i, r in enumerate(requests)]
        for request in requests:
            request.encoded = None  # used once: a request kept for long (an evaluation's list) keeps no tensors
        length = max(e["input_ids"].shape[1] for e in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = e["input_ids"].shape[1]
            input_ids[row, length - n :] = e["input_ids"][0]
            attention_mask[row, length - n :] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        with_images = [e for e in encoded if "pixel_values" in e]
        if with_images:
            pixels = [e["pixel_values"] for e in with_images]
            if len({p.shape for p in pixels}) > 1:  # anyres: (n, patches, C, H, W) with different patch counts
                pixels = pad_patches(pixels, dim=1)
            inputs["pixel_values"] = torch.cat(pixels).to(self.model.dtype)
            if "image_sizes" in with_images[0]:
                inputs["image_sizes"] = torch.cat([e["image_sizes"] for e in with_images])
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    # ------------------------------------------------------------------ generation

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSpec | None = None) -> list[GenerationResult]:
        """One batched generate call for all requests."""
        results: list[GenerationResult | None] = [None] * len(requests)
        for event in self.stream(requests, sampling):
            if event.result is not None:
                results[event.index] = event.result
        return results  # type: ignore[return-value]

    def stream(self, requests: list[GenerationRequest], sampling: SamplingSpec | None = None) -> Iterator[StreamEvent]:
        """Token streaming for a batch: text deltas per request as they decode, and each request's result as soon
        as that request is done. A cancelled request gets no more events."""
        samplings = [r.sampling or sampling or SamplingSpec() for r in requests]
        inputs = self.prepare(requests)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        stop_strings = [self._stop_strings(s) for s in samplings]  # generate() stops on them, the decoders cut at them
        cancels = [r.cancel for r in requests]
        stops = _RowStops(self.tokenizer, inputs["input_ids"].shape[1], [s.max_new_tokens for s in samplings],
                          stop_strings, cancels)  # fmt: skip
        hot = any(s.temperature > 0 for s in samplings)
        streamer = _TokenQueue()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        max_new_tokens=max(s.max_new_tokens for s in samplings),
                        do_sample=False,  # sampling, where asked, is _RowSampler's, row by row
                        logits_processor=LogitsProcessorList([_RowSampler(samplings)] if hot else []),
                        stopping_criteria=StoppingCriteriaList([stops]),
                        eos_token_id=self.stop_ids,
                        pad_token_id=self.tokenizer.pad_token_id,
                        streamer=streamer,
                    )
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        decoders = [_RowDecoder(self.tokenizer, self.stop_ids, strings, s.max_new_tokens)
                    for strings, s in zip(stop_strings, samplings)]  # fmt: skip
        reported = [False] * len(requests)

        def finished(i: int) -> StreamEvent:
            reported[i] = True
            delta, reason = decoders[i].finish()
            return StreamEvent(i, delta, GenerationResult(decoders[i].text, prompt_tokens[i], decoders[i].num_tokens, reason))

        try:
            while (step := streamer.queue.get()) is not None:
                for i, token in enumerate(step):
                    if reported[i] or (cancels[i] is not None and cancels[i].is_set()):
                        continue
                    delta = decoders[i].add(token)
                    if decoders[i].done:  # stop token, stop string or its token limit: its result goes now
                        stops.finished[i] = True  # and generate() stops decoding it at its next step
                        event = finished(i)
                        yield StreamEvent(i, delta + event.delta, event.result)
                    elif delta:
                        yield StreamEvent(i, delta)
        finally:  # also when the consumer stops early: no generation left running on its own
            stops.cancel_all.set()
            thread.join()
        if errors:
            raise errors[0]
        for i in range(len(requests)):  # rows whose decoder saw no end: generate() stopped them (a stop string it saw)
            if not reported[i] and not (cancels[i] is not None and cancels[i].is_set()):
                yield finished(i)


class _RowDecoder:
    """Incremental decode of one row: holds back partial UTF-8 and text that may begin a stop string."""

    def __init__(self, tokenizer, stop_ids: list[int], stop_strings: list[str], max_new_tokens: int):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.stop_strings = stop_strings
        self.max_new_tokens = max_new_tokens
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
        if self.num_tokens >= self.max_new_tokens:
            self.done = True
            return self._emit(final=True)
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
        """The text not yet emitted (none once `done`: the last add emitted it) and why the row ended."""
        delta = "" if self.done else self._emit(final=True)
        return delta, "stop" if self.stopped else "length"
