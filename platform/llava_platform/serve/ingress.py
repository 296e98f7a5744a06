"""The HTTP ingress: OpenAI-compatible and LLaVA routes, the WebSocket and the dashboard, on one FastAPI app.

    POST /v1/chat/completions   OpenAI chat completions (JSON or server-sent events)
    GET  /v1/models             served model names
    POST /analyze               {"image": base64, "question"} -> {"answer", "status"}   (the LLaVA API)
    GET  /model/info            model, template, image mode, parameters, dtype, quantization, replicas
    GET  /health                no key needed
    WS   /ws                    {"type": "analyze", "image", "question"} -> {"type": "token"}..., {"type": "answer"}
    /ui                         the gradio dashboard (serve/ui.py)

The ingress runs on CPU: it checks the key, the body and every limit, decodes and fetches images,
and hands the model deployment (serve/replica.py) a ready request through a DeploymentHandle.
Answers stream back row by row from the replica's batches. A client that leaves cancels its call,
which stops its row on the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from llava_platform.config import SamplingSpec
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message
from llava_platform.inference.engine import GenerationResult
from llava_platform.serve import openai_schema as oa
from llava_platform.serve.auth import RequireApiKey, api_key_from_env, bearer, key_matches
from llava_platform.serve.errors import ApiError, BodyLimit, install_error_handlers
from llava_platform.serve.image_fetch import FetchPolicy
from llava_platform.serve.image_inputs import ImageInputError, ImageLimits, image_from_base64, image_from_url
from llava_platform.serve.metrics import IngressMetrics
from llava_platform.serve.spec import ServeAppSpec

__all__ = ["ApiIngress", "ModelClient", "build_api"]

logger = logging.getLogger("llava_platform.serve")

UI_PATH = "/ui"


class ModelClient:
    """The model deployment as the routes and the dashboard see it: limits checked, answers streamed."""

    def __init__(self, spec: ServeAppSpec, handle: DeploymentHandle):
        self.spec = spec
        self.handle = handle
        limits, fetch = spec.limits, spec.image_fetch
        self.image_limits = ImageLimits(max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels,
                                        max_images=limits.max_images, max_side=limits.max_image_side)  # fmt: skip
        self.fetch_policy = FetchPolicy(timeout_s=fetch.timeout_s, max_redirects=fetch.max_redirects,
                                        allow_hosts=tuple(fetch.allow_hosts))  # fmt: skip

    # ------------------------------------------------------------------ checks

    def model_name(self, requested: str | None, param: str = "model") -> str:
        model = self.spec.model(requested)
        if model is None:
            served = ", ".join(m.name for m in self.spec.models)
            raise ApiError(404, f"The model '{requested}' does not exist; served: {served} (GET /v1/models)", param,
                           "model_not_found")  # fmt: skip
        return model.name

    def sampling(self, max_tokens: int | None, temperature: float | None, top_p: float | None = None,
                 stop: list[str] | None = None, seed: int | None = None, param: str = "max_tokens") -> SamplingSpec:  # fmt: skip
        limits = self.spec.limits
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ApiError(400, f"{param}={max_tokens} is over the limit of {limits.max_tokens} (limits.max_tokens)",
                           param, "max_tokens_too_large")  # fmt: skip
        if stop and len(stop) > limits.max_stop_strings:
            raise ApiError(400, f"stop: {len(stop)} stop strings, over the limit of {limits.max_stop_strings} "
                           "(limits.max_stop_strings)", "stop", "too_many_stop_strings")  # fmt: skip
        return self.spec.sampling.to_sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                              stop=stop or None, seed=seed)  # fmt: skip

    def check_image_count(self, count: int, param: str) -> None:
        if count > self.spec.limits.max_images:
            raise ApiError(400, f"{param}: {count} images, over the limit of {self.spec.limits.max_images} per request "
                           "(limits.max_images)", param, "too_many_images")  # fmt: skip

    async def resolve_images(self, refs: list[oa.ImageRef]) -> list[Image.Image]:
        """Decode data: URLs and fetch http(s) ones (SSRF-checked), off the event loop, all at once."""
        self.check_image_count(len(refs), "messages")
        if not self.spec.image_fetch.enabled:
            for ref in refs:
                if not ref.url.startswith("data:"):
                    raise ApiError(400, f"{ref.param}: this server takes data: URLs only (image_fetch.enabled: false)",
                                   ref.param, "unsupported_url")  # fmt: skip

        fetches = (_image(image_from_url, r.url, self.image_limits, self.fetch_policy, r.param) for r in refs)
        return list(await asyncio.gather(*fetches))

    async def decode_base64(self, data: str, param: str) -> Image.Image:
        return await _image(image_from_base64, data, self.image_limits, param)

    # ------------------------------------------------------------------ calls

    async def events(self, model: str, messages: list[Message], images: list[Image.Image],
                     sampling: SamplingSpec) -> AsyncIterator[dict]:  # fmt: skip
        """The replica's events for one request; a refused request or a full queue raises ApiError before the first.
        Leaving the iteration early (client gone) cancels the call, which stops the row on the replica."""
        call = self.handle.options(stream=True, multiplexed_model_id=model).generate.remote(messages, images, sampling)
        finished = False  # the call ended (answered or failed): nothing to cancel
        try:
            with _replica_errors():
                event = await _next_event(call)
                if "error" in event:
                    finished = True
                    raise ApiError(**event["error"])
                while True:
                    finished = "result" in event  # the answer is whole: a consumer that stops now cancels nothing
                    yield event
                    if finished:
                        return
                    event = await _next_event(call)
        except ApiError:
            finished = True
            raise
        finally:
            if not finished:  # the client left, or the task was cancelled: stop the row on the replica
                call.cancel()

    async def answer(self, model: str, messages: list[Message], images: list[Image.Image], sampling: SamplingSpec) -> dict:
        """The whole answer (the replica's result), in one reply."""
        with _replica_errors():
            reply = await self.handle.options(multiplexed_model_id=model).answer.remote(messages, images, sampling)
        if "error" in reply:
            raise ApiError(**reply["error"])
        return reply["result"]

    async def info(self, model: str) -> dict:
        with _replica_errors():  # asked of a replica that holds the model (no other loads it for this)
            info = await self.handle.options(multiplexed_model_id=model).info.remote(model)
        deployment = self.spec.model_deployment
        replicas = deployment.autoscaling.to_serve() if deployment.autoscaling else {"num_replicas": deployment.num_replicas or 1}
        return {**info, "replicas": replicas, "served_models": [m.name for m in self.spec.models]}

    # ------------------------------------------------------------------ the dashboard's ChatBackend

    def model_names(self) -> list[str]:
        return [m.name for m in self.spec.models]

    async def model_info(self, model: str) -> dict:
        return await self.info(model)

    async def stream_chat(self, model: str, messages: list[Message], images: list[Image.Image],
                          sampling: SamplingSpec) -> AsyncIterator[str]:  # fmt: skip
        self.check_image_count(len(images), "images")
        # the dashboard's slider does not know this app's limit: a longer answer is cut to it, not refused
        max_tokens = min(sampling.max_new_tokens, self.spec.limits.max_tokens)
        capped = self.sampling(max_tokens, sampling.temperature, sampling.top_p, sampling.stop, sampling.seed)
        try:
            async with contextlib.aclosing(self.events(model, messages, images, capped)) as events:
                async for event in events:
                    if event["delta"]:
                        yield event["delta"]
        except ApiError as e:
            raise ValueError(e.message) from None  # the dashboard shows the message


async def _image(decode, *args) -> Image.Image:
    """An image decoded (or fetched) off the event loop; a refused one as the 4xx its error names."""
    try:
        return await asyncio.to_thread(decode, *args)
    except ImageInputError as e:
        raise ApiError(e.status, str(e), e.param, e.code) from None


async def _next_event(call) -> dict:
    """The replica's next event; its stream ending before a result is a replica failure (the client may retry)."""
    try:
        return await call.__anext__()
    except StopAsyncIteration:
        raise ApiError(503, "the model replica ended the answer early; retry", code="replica_unavailable") from None


@contextlib.contextmanager
def _replica_errors():
    """A full queue, or a replica that died or is gone, as the 503 a client retries."""
    try:
        yield
    except BackPressureError:
        raise ApiError(503, "the server is at capacity (model_deployment.max_queued_requests); retry shortly",
                       code="server_overloaded") from None  # fmt: skip
    except (DeploymentUnavailableError, RayActorError) as e:  # a replica died (it is being replaced) or is gone
        logger.warning("model replica unavailable: %s", e)
        raise ApiError(503, "the model replica failed and is being replaced; retry shortly",
                       code="replica_unavailable") from None  # fmt: skip


class CountRequests:
    """ASGI wrapper: every HTTP answer counted by route and status, those of the key and body checks included."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # an exception that escapes with no answer started

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")  # set by FastAPI's router on this scope; absent when refused before it
            self.metrics.request(getattr(route, "path", "other"), status)


class AnalyzeRequest(BaseModel):
    """The LLaVA API's request: one base64 image and one question."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1, description="the image, base64 (a data: URL prefix is accepted too)")
    question: str = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)


def analyze_messages(question: str) -> list[Message]:
    """The image goes first, then the question, as in LLaVA's CLI (and jobs.chat)."""
    if IMAGE_PLACEHOLDER in question:
        raise ApiError(400, f"question: may not contain {IMAGE_PLACEHOLDER!r}", "question", "invalid_value")
    return [Message("user", IMAGE_PLACEHOLDER + "\n" + question)]


def _sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def build_api(client: ModelClient, api_key: str | None, examples: list[tuple[str, str]] | None = None) -> ASGIApp:
    """The FastAPI app of one ingress replica, wrapped in the body limit and the API key check."""
    spec = client.spec
    app = FastAPI(title="llava-platform", version="1", description="OpenAI-compatible and LLaVA APIs for LLaVA models")
    install_error_handlers(app, status_field_paths=("/analyze",))
    metrics = IngressMetrics()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m.name, "object": "model", "created": 0, "owned_by": "llava-platform"}
                                           for m in spec.models]}  # fmt: skip

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: oa.ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        model = client.model_name(body.model)
        sampling = client.sampling(body.requested_max_tokens(), body.temperature, body.top_p, body.stop, body.seed,
                                   "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")  # fmt: skip
        messages, refs = oa.to_engine_messages(body)
        images = await client.resolve_images(refs)
        completion_id = oa.new_id()
        if not body.stream:
            result = await client.answer(model, messages, images, sampling)
            return JSONResponse(oa.completion(completion_id, model, _result(result)))
        events = client.events(model, messages, images, sampling)
        first = await events.__anext__()  # errors before the first event are still an HTTP status
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def sse() -> AsyncIterator[bytes]:
            try:
                yield _sse(oa.chunk(completion_id, model, {"role": "assistant", "content": ""}))
                event = first
                while True:
                    if event["delta"]:
                        yield _sse(oa.chunk(completion_id, model, {"content": event["delta"]}))
                    if "result" in event:
                        result = _result(event["result"])
                        yield _sse(oa.chunk(completion_id, model, {}, result.finish_reason))
                        if include_usage:
                            yield _sse(oa.chunk(completion_id, model, None, usage_counts=oa.usage(result)))
                        yield _sse("[DONE]")
                        return
                    event = await events.__anext__()
            except ApiError as e:  # headers are sent: the error goes as an event
                yield _sse(e.body())
            except Exception:  # a failure of ours mid-stream: still an event the client can read, then the end
                logger.exception("the stream of %s failed", completion_id)
                yield _sse(ApiError(500, "internal error: the answer failed mid-stream", code="internal_error").body())
            finally:
                await events.aclose()  # the client left: cancel the call, which stops the row

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/analyze")
    async def analyze(body: AnalyzeRequest) -> dict:
        model = client.model_name(body.model)
        sampling = client.sampling(body.max_tokens, body.temperature)
        image = await client.decode_base64(body.image, "image")
        result = await client.answer(model, analyze_messages(body.question), [image], sampling)
        return {"answer": result["text"], "status": "success", "model": model}

    @app.get("/model/info")
    async def model_info(model: str | None = Query(None, description="a served model; default: the first")) -> dict:
        return await client.info(client.model_name(model))

    @app.websocket("/ws")
    async def ws(socket: WebSocket, key: str | None = Query(None, alias="api_key")) -> None:
        given = key or bearer(dict(socket.scope["headers"]))
        if api_key is not None and not key_matches(given, api_key):
            await socket.close(code=1008, reason="missing or incorrect API key (?api_key=<key>)")
            return
        await socket.accept()
        try:
            while True:
                await _ws_turn(socket, client)
        except WebSocketDisconnect:
            return

    if spec.ui:
        from llava_platform.serve.ui import mount_ui

        mount_ui(app, client, path=UI_PATH, api_key=api_key, examples=examples or [])
    # outermost first: every answer counted, then the key (before any body is read), then the body's size
    wrapped: ASGIApp = BodyLimit(app, spec.limits.max_body_bytes)
    if api_key is not None:
        wrapped = RequireApiKey(wrapped, api_key, own_auth_prefixes=(UI_PATH, "/ws"))
    return CountRequests(wrapped, metrics)


class _WsAnalyze(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(pattern="^analyze$")
    image: str = Field(min_length=1)
    question: str = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)


async def _ws_turn(socket: WebSocket, client: ModelClient) -> None:
    """One message in, streamed tokens and the answer out; a bad message is an error message, the socket stays."""
    message = await socket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
    try:
        try:
            request = _WsAnalyze.model_validate_json(raw)
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "message"
            raise ApiError(400, f"{where}: {error['msg']}", where, "invalid_value") from None
        model = client.model_name(request.model)
        image = await client.decode_base64(request.image, "image")
        text = ""
        events = client.events(model, analyze_messages(request.question), [image], client.sampling(request.max_tokens, None))
        async with contextlib.aclosing(events):  # the socket closing mid-answer stops the row
            async for event in events:
                if event["delta"]:
                    await socket.send_json({"type": "token", "text": event["delta"]})
                if "result" in event:
                    text = event["result"]["text"]
        await socket.send_json({"type": "answer", "answer": text, "status": "success", "model": model})
    except ApiError as e:
        await socket.send_json({"type": "error", "status": "error", **e.body()})


def _result(result: dict) -> GenerationResult:
    return GenerationResult(**result)


def load_examples(folder: str | None) -> list[tuple[str, str]]:
    """(image path, question) pairs from folder/examples.json ([{"image": "a.png", "question": "..."}])."""
    if folder is None:
        return []
    root = Path(folder)
    return [(str(root / e["image"]), e["question"]) for e in json.loads((root / "examples.json").read_text())]


@serve.ingress()
class ApiIngress:
    """The ingress deployment: its FastAPI app is built on the replica (`__serve_build_asgi_app__`), from the spec."""

    def __init__(self, spec: ServeAppSpec, model: DeploymentHandle):
        self.client = ModelClient(spec, model)
        self.api_key = api_key_from_env(spec.auth.api_key_env)
        self.examples = load_examples(spec.examples_folder)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return build_api(self.client, self.api_key, self.examples)

