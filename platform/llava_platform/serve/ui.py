"""The Serve app's web dashboard: chat with a served model about an image, or compare two models side by side.

    app = FastAPI()
    mount_ui(app, backend, path="/ui", api_key=os.environ.get("LLAVA_API_KEY"), examples=[("cat.jpg", "What is it?")])

`backend` is anything with the three methods of `ChatBackend`; the ingress passes itself (its model handles).
Mount in the replica, where the backend is: `@serve.ingress(app)` pickles `app` when the class is decorated, and an
app with gradio mounted does not pickle (weakrefs); use `@serve.ingress()` and build the app, `mount_ui(app, self)`
included, in the deployment's `__serve_build_asgi_app__(self)`. Serve runs the app's lifespan, which starts
gradio's queue (mount_gradio_app hooks it there); served without its lifespan, the page never gets an answer.

Chat follows LLaVA's CLI: the image goes with the first user turn as "<image>\\n" + question, every later turn
sends the whole conversation again, and a question about a different image (or none) starts a new conversation.
The side-by-side tab asks two models (or one model twice, with temperature > 0) the same single question about one
image, both answers streaming at once.

Authentication. With `api_key` set, the page is behind gradio's own login (`auth=` of `gr.mount_gradio_app`):
any non-empty user name, password = the API key. A good login sets an http-only cookie holding a random session
token, and every gradio route (page config, uploads, queue) checks it; without it the browser gets the login form
and the routes 401. The cookie, not the `Authorization: Bearer` header, is what the browser sends, so the
ingress's own API-key check must leave `path` (and everything under it) to gradio. With `api_key=None` the
dashboard is open, like the API.

Replicas: this works behind ONE ingress replica only; pin the ingress deployment to `num_replicas: 1` (the model
deployments it calls through handles scale freely). Gradio keeps everything a browser session needs in the
process that served it, and Serve's proxy routes each HTTP request on its own, with no session affinity:
  - login: the session token lives in that process's `App.tokens` dict, and the cookie's name carries a random
    per-process id (`access-token-<cookie_id>`), so another replica (or a restarted one) sees no login: 401;
  - the queue: an event is joined with `POST <path>/gradio_api/queue/join` and its results come back over a
    separate `GET <path>/gradio_api/queue/data?session_hash=...` (server-sent events), which must reach the same
    process; on another replica the session is unknown and the stream 404s;
  - an upload (`POST <path>/gradio_api/upload`) lands in that process's temp dir (GRADIO_TEMP_DIR), and the
    question that uses it names that local path; another replica has no such file;
  - the conversation (`gr.State`) is kept per browser session in that process's memory.
The REST API has none of this (each request carries its whole conversation). If the API must scale out, move the
dashboard to a deployment of its own (one replica, its own route prefix) and let the API's ingress scale.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, Protocol

import gradio as gr
import PIL.Image
from fastapi import FastAPI

from llava_platform.config import SamplingSpec
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message

__all__ = ["ChatBackend", "build_dashboard", "mount_ui"]

log = logging.getLogger(__name__)

MAX_UPLOAD = "20mb"  # the largest image a user may upload
MAX_NEW_TOKENS = 512  # the dashboard's default answer length (LLaVA's web UI's); the API's is SamplingSpec's
Turn = dict[str, str]  # {"role": ..., "content": ...}, as kept in gr.State (plain data: gradio deep-copies it)


class ChatBackend(Protocol):
    """What the dashboard asks of the ingress."""

    def model_names(self) -> list[str]: ...  # served model names, first = default

    async def model_info(self, model: str) -> dict: ...  # e.g. {"model": ..., "template": ..., "dtype": ..., ...}

    def stream_chat(self, model: str, messages: list[Message], images: list[PIL.Image.Image],
                    sampling: SamplingSpec) -> AsyncIterator[str]: ...  # async generator of text deltas


def mount_ui(
    app: FastAPI,
    backend: ChatBackend,
    path: str = "/ui",
    api_key: str | None = None,
    examples: Sequence[tuple[str | Path, str]] = (),
) -> FastAPI:
    """Mount the dashboard on `app` at `path`; with `api_key`, behind a login whose password is the key."""
    demo = build_dashboard(backend, examples)
    auth = None
    if api_key is not None:
        key = api_key.encode()

        def auth(username: str, password: str) -> bool:
            return secrets.compare_digest(password.encode(), key)

    return gr.mount_gradio_app(
        app, demo, path=path, auth=auth, auth_message="Log in with any user name; password: the API key.",
        max_file_size=MAX_UPLOAD, ssr_mode=False,
    )  # fmt: skip


def build_dashboard(backend: ChatBackend, examples: Sequence[tuple[str | Path, str]] = ()) -> gr.Blocks:
    """The gradio Blocks: a chat tab and a side-by-side tab sharing the sampling controls."""
    names = list(backend.model_names())
    if not names:
        raise ValueError("the backend serves no models (model_names() is empty): nothing to chat with")
    examples = [[str(image), question] for image, question in examples]
    missing = [image for image, _ in examples if not Path(image).is_file()]
    if missing:
        raise FileNotFoundError(f"example images not found: {missing}; pass existing files in `examples`")

    # A question continues the conversation the page shows, if it is about the image that conversation started
    # with (images arrive as the upload's path); otherwise it starts a new one. Deciding from what the question
    # carries, rather than resetting on the image's change event, keeps a question sent right after an upload
    # (before that event has run) in the right conversation.
    async def chat(model, image: str | None, question, shown: list, conv: dict, temperature, top_p, max_new_tokens):
        if (question := _question(question)) is None:
            yield gr.skip()
            return
        earlier: list[Turn] = conv["turns"] if shown and conv["image"] == image else []
        first = IMAGE_PLACEHOLDER + "\n" + question if image is not None and not earlier else question
        turns = [*earlier, {"role": "user", "content": first}]
        yield "", _display(turns, pending=""), gr.skip()  # the question at once, then the answer as it grows
        answer = ""
        try:
            async with aclosing(_answer(backend, model, turns, image, temperature, top_p, max_new_tokens)) as answers:
                async for answer in answers:
                    yield gr.skip(), _display(turns, pending=answer), gr.skip()
        except _AnswerFailed as e:
            # a toast, and back to before the question so the user can retry (a gr.Error would cover the
            # whole conversation with an "Error" badge until the next event)
            gr.Warning(html.escape(str(e)))
            yield question, _display(earlier), {"image": image, "turns": earlier}
            return
        turns.append({"role": "assistant", "content": answer})
        yield gr.skip(), _display(turns), {"image": image, "turns": turns}

    async def answer_both(model_a, model_b, image: str | None, question, temperature, top_p, max_new_tokens):
        if (question := _question(question)) is None:
            yield gr.skip()
            return
        turns = [{"role": "user", "content": IMAGE_PLACEHOLDER + "\n" + question if image is not None else question}]
        texts, changed = ["", ""], asyncio.Event()

        async def run(side: int, model: str) -> None:
            answers = _answer(backend, model, turns, image, temperature, top_p, max_new_tokens)
            try:
                async with aclosing(answers):
                    async for text in answers:
                        texts[side] = text
                        changed.set()
            except _AnswerFailed as e:  # the other side goes on
                gr.Warning(html.escape(str(e)))
                texts[side] = f"[failed] {e}"
            finally:
                changed.set()

        # one event streams both boxes: the page runs the events of one click one after the other
        tasks = [asyncio.create_task(run(side, model)) for side, model in enumerate((model_a, model_b))]
        try:
            yield "", ""
            while not all(task.done() for task in tasks):
                await changed.wait()
                changed.clear()
                yield texts[0], texts[1]
            yield texts[0], texts[1]  # what came in while the last yield waited for the page
        finally:  # also when the user clears or leaves: stop both generations
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def show_info(model: str) -> dict:
        try:
            return await backend.model_info(model)
        except Exception as e:
            gr.Warning(html.escape(f"{model}: no model info: {_reason(e)}"))
            return {"model": model, "error": _reason(e)}

    with gr.Blocks(title="LLaVA", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        conv = gr.State({"image": None, "turns": []})
        with gr.Tabs():
            with gr.Tab("Chat"):
                with gr.Row():
                    with gr.Column(scale=1):
                        model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1)
                        image = gr.Image(type="filepath", label="Image", height=320, elem_id="chat-image")
                        with gr.Accordion("Model info", open=True):
                            info = gr.JSON(label="Model info", elem_id="model-info")
                    with gr.Column(scale=2):
                        chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=460)
                        question = gr.Textbox(label="Question", show_label=False,
                                              placeholder="Ask about the image; Enter sends")  # fmt: skip
                        with gr.Row():
                            send = gr.Button("Send", variant="primary")
                            clear = gr.Button("Clear", elem_id="clear")
                if examples:
                    gr.Examples(examples, inputs=[image, question], label="Examples")
            with gr.Tab("Side by side"):
                with gr.Row():
                    model_a = gr.Dropdown(names, value=names[0], label="Model A")
                    model_b = gr.Dropdown(names, value=names[min(1, len(names) - 1)], label="Model B")
                with gr.Row():
                    cmp_image = gr.Image(type="filepath", label="Image", height=320, elem_id="cmp-image")
                    with gr.Column():
                        cmp_question = gr.Textbox(label="Question", placeholder="Enter sends to both models")
                        with gr.Row():
                            compare = gr.Button("Ask both", variant="primary")
                            cmp_clear = gr.Button("Clear", elem_id="cmp-clear")
                with gr.Row():
                    answer_a = gr.Textbox(label="Answer A", lines=8, interactive=False, elem_id="answer-a")
                    answer_b = gr.Textbox(label="Answer B", lines=8, interactive=False, elem_id="answer-b")
                if examples:
                    gr.Examples(examples, inputs=[cmp_image, cmp_question], label="Examples")
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=SamplingSpec.model_fields["temperature"].default, step=0.05,
                                        label="Temperature (0: greedy)")  # fmt: skip
                top_p = gr.Slider(0.05, 1.0, value=SamplingSpec.model_fields["top_p"].default, step=0.05, label="Top p")
                max_new_tokens = gr.Slider(1, 2048, value=MAX_NEW_TOKENS, step=1, label="Max new tokens")
        sampling = [temperature, top_p, max_new_tokens]

        # always_last: a question sent while an answer still streams runs after it, on the finished conversation
        asked = gr.on([send.click, question.submit], chat, [model, image, question, chatbot, conv, *sampling],
                      [question, chatbot, conv], trigger_mode="always_last")  # fmt: skip
        image.change(None, None, chatbot, js="() => [[]]")  # a new image: the page drops the old conversation at once
        clear.click(lambda: (None, "", [], {"image": None, "turns": []}), None, [image, question, chatbot, conv],
                    cancels=[asked])  # fmt: skip
        chatbot.clear(lambda: {"image": None, "turns": []}, None, conv, cancels=[asked])  # the chat's trash icon
        demo.load(show_info, model, info)
        model.change(show_info, model, info)

        both = gr.on([compare.click, cmp_question.submit], answer_both,
                     [model_a, model_b, cmp_image, cmp_question, *sampling], [answer_a, answer_b])  # fmt: skip
        cmp_clear.click(lambda: (None, "", "", ""), None, [cmp_image, cmp_question, answer_a, answer_b], cancels=[both])
    # gradio's default runs one event per listener at a time, for all users together; the backend batches
    demo.queue(default_concurrency_limit=None)
    return demo


class _AnswerFailed(Exception):
    """The backend failed to answer; the message names the model and says why, for the user."""


async def _answer(backend: ChatBackend, model: str, turns: list[Turn], image: str | None, temperature, top_p,
                  max_new_tokens) -> AsyncIterator[str]:  # fmt: skip
    """The answer so far after each streamed delta; any failure becomes an _AnswerFailed naming the model."""
    try:
        sampling = SamplingSpec(temperature=temperature, top_p=top_p, max_new_tokens=int(max_new_tokens))
        messages = [Message(t["role"], t["content"]) for t in turns]
        images = [_open_rgb(image)] if turns[0]["content"].startswith(IMAGE_PLACEHOLDER) else []
        # closed explicitly, so that a cancelled or abandoned chat stops the generation behind it at once
        async with aclosing(backend.stream_chat(model, messages, images, sampling)) as deltas:
            text = ""
            async for delta in deltas:
                text += delta
                yield text
    except Exception as e:
        log.warning("dashboard: %s failed", model, exc_info=True)  # the stack trace goes to the log, not the user
        raise _AnswerFailed(f"{model}: {_reason(e)}") from e


def _open_rgb(path: str) -> PIL.Image.Image:
    with PIL.Image.open(path) as image:
        return image.convert("RGB")


def _question(text: str | None) -> str | None:
    """The question to ask, or None after a warning that says what is wrong with it."""
    question = (text or "").strip()
    if not question:
        gr.Warning("Type a question first.")
        return None
    if IMAGE_PLACEHOLDER in question:
        gr.Warning(html.escape(f"A question cannot contain {IMAGE_PLACEHOLDER}: upload the image instead."))
        return None
    return question


def _display(turns: list[Turn], pending: str | None = None) -> list[dict[str, Any]]:
    """Chatbot messages: the turns without the image placeholder, plus the answer being streamed."""
    shown = [{"role": t["role"], "content": t["content"].removeprefix(IMAGE_PLACEHOLDER + "\n")} for t in turns]
    return shown if pending is None else [*shown, {"role": "assistant", "content": pending}]


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__
