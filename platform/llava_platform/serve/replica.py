"""The model deployment: one replica holds the served models' engines and batches their requests.

    handle.options(stream=True, multiplexed_model_id="llava-tiny").generate.remote(messages, images, sampling)
        -> {"delta": "A red"} ... {"delta": " circle.", "result": {text, prompt_tokens, completion_tokens,
           finish_reason}}   or one {"error": {status, message, param, code}} for a request it refuses
    handle.options(multiplexed_model_id="llava-tiny").answer.remote(messages, images, sampling)
        -> the last of those events only (non-streamed requests)

Models load on first use through Serve's model multiplexing (requests for a model go to replicas that
hold it; the least recently used model is dropped past `max_models_per_replica`). Each model has its own
DynamicBatcher; they share one lock, so the device runs one batch at a time and a batch holds one model.
A request is checked alone before it joins a batch (its template, its image placeholders, its prompt
length), so one bad request never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import torch
from PIL import Image
from ray import serve

from llava_platform.config import SamplingSpec
from llava_platform.data.templates import Message, TemplateError
from llava_platform.inference.batcher import BatchStats, DynamicBatcher
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.serve.metrics import ModelMetrics
from llava_platform.serve.spec import ServeAppSpec, ServedModelSpec
from llava_platform.storage import Storage

__all__ = ["LlavaModel"]



def load_engine(model: ServedModelSpec, storage: Storage) -> InferenceEngine:
    """The served model's engine, on the replica's GPU when it has one (Serve sets CUDA_VISIBLE_DEVICES to the GPUs
    of num_gpus); an object-store checkpoint is copied to the local cache first."""
    path = storage.local_checkpoint(model.checkpoint)
    overrides = {"dtype": model.dtype, "quantization": model.quantization, "template": model.template}
    device = "cuda" if torch.cuda.is_available() else None
    return InferenceEngine.from_checkpoint(path, device, **{k: v for k, v in overrides.items() if v is not None})


class LlavaModel:
    async def __init__(self, spec: ServeAppSpec):
        self.spec = spec
        self.storage = Storage(spec.storage)
        self.metrics = ModelMetrics()
        self.device_lock: asyncio.Lock | None = None  # made on the replica's event loop
        # wrapped here, not decorated: the LRU size comes from the config (and Serve keeps its cache on a function)
        async def load(name: str) -> DynamicBatcher:
            return await self._load(name)

        self.get_batcher = serve.multiplexed(max_num_models_per_replica=spec.max_models_per_replica or len(spec.models))(load)
        # the default model loads before the replica reports ready: a new (autoscaled) replica takes requests only
        # once it can answer them, instead of holding its first ones through a checkpoint copy and load
        await self.get_batcher(spec.models[0].name)

    async def _load(self, name: str) -> DynamicBatcher:
        model = self.spec.model(name)
        if model is None:  # the ingress answers 404 before asking; this is a second line
            raise KeyError(f"no served model is named {name!r}")
        engine = await asyncio.to_thread(load_engine, model, self.storage)
        self.device_lock = self.device_lock or asyncio.Lock()

        def on_batch(stats: BatchStats) -> None:
            self.metrics.batch(name, stats.size, stats.queue_waits_s)

        return DynamicBatcher(engine, self.spec.batching.max_batch_size, self.spec.batching.max_wait_ms / 1000,
                              self.device_lock, on_batch)  # fmt: skip

    async def generate(self, messages: list[Message], images: list[Image.Image], sampling: SamplingSpec
                       ) -> AsyncIterator[dict]:  # fmt: skip
        """Stream one request's text; the caller's cancellation (client gone) stops its row."""
        arrived = time.monotonic()
        name = serve.get_multiplexed_model_id() or self.spec.models[0].name
        batcher = await self.get_batcher(name)
        request = GenerationRequest(messages, images, sampling)
        refusal = await self._refusal(batcher.engine, request)
        if refusal is not None:
            yield refusal
            return
        first = True
        async with contextlib.aclosing(batcher.stream(request)) as events:  # closed early: the row stops at once
            async for event in events:
                if first and event.delta:
                    self.metrics.ttft.observe(time.monotonic() - arrived, tags={"model": name})
                    first = False
                out: dict = {"delta": event.delta}
                if event.result is not None:
                    result = event.result
                    self.metrics.finished(name, result.prompt_tokens, result.completion_tokens)
                    out["result"] = {"text": result.text, "prompt_tokens": result.prompt_tokens,
                                     "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason}  # fmt: skip
                yield out

    async def answer(self, messages: list[Message], images: list[Image.Image], sampling: SamplingSpec) -> dict:
        """The whole answer in one reply ({"result": ...} or {"error": ...}): a non-streamed request costs one
        message back instead of one per token."""
        async with contextlib.aclosing(self.generate(messages, images, sampling)) as events:
            async for event in events:
                if "error" in event or "result" in event:
                    return event
        raise RuntimeError("the generation ended without a result")

    async def _refusal(self, engine: InferenceEngine, request: GenerationRequest) -> dict | None:
        """The error event for a request that cannot join a batch, or None. Checked alone, before it joins."""
        try:
            prompt_tokens = await asyncio.to_thread(_prompt_tokens, engine, request)
        except TemplateError as e:
            return {"error": {"status": 400, "message": f"messages: {e}", "param": "messages", "code": "invalid_conversation"}}
        except (ValueError, OSError) as e:  # the processor refused an input (an image it cannot resize, ...)
            return {"error": {"status": 400, "message": f"the model's processor refused this request: {e}",
                              "param": "messages", "code": "invalid_value"}}  # fmt: skip
        limit = self.spec.limits.max_prompt_tokens
        if prompt_tokens > limit:
            return {"error": {"status": 400, "message": f"the prompt is {prompt_tokens} tokens (images included), over "
                              f"the limit of {limit} (limits.max_prompt_tokens)", "param": "messages",
                              "code": "context_length_exceeded"}}  # fmt: skip
        return None

    async def info(self, name: str) -> dict:
        """What /model/info shows of one model (loading it if this replica has not yet)."""
        engine = (await self.get_batcher(name)).engine
        spec = engine.bundle.spec
        return {
            "model": name,
            "checkpoint": self.spec.model(name).checkpoint,
            "template": engine.template.name,
            "image_mode": spec.image_mode,
            "parameters": sum(p.numel() for p in engine.model.parameters()),
            "dtype": str(engine.model.dtype).removeprefix("torch."),
            "quantization": spec.quantization,
            "device": str(engine.model.device),
        }

    async def check_health(self) -> None:
        """Serve's health check: the replica's event loop answers, and CUDA (when used) still works (checked off the
        loop: a synchronize waits for the running batch)."""
        if torch.cuda.is_available():
            await asyncio.to_thread(torch.cuda.synchronize)


def _prompt_tokens(engine: InferenceEngine, request: GenerationRequest) -> int:
    """The request's prompt length, images included (raises TemplateError for a conversation that does not fit the
    template or placeholders that do not match the images). Its encoding stays on the request for its batch."""
    return engine.encode(request).get("input_ids").shape[1]
