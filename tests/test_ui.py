"""The Serve dashboard (serve/ui.py) in a real browser: headless Chromium against the gradio app mounted on FastAPI.

The backend is a small class that streams a deterministic answer word by word ("<model> sees a WxH image, turn N")
and records what it was asked; `gate` lets a test hold a stream after its first words to see the partial answer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import uvicorn
from browser import chromium_page
from fastapi import FastAPI
from PIL import Image
from playwright.sync_api import Page, expect

from llava_platform.config import SamplingSpec
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message
from llava_platform.serve.ui import MAX_NEW_TOKENS, mount_ui

expect.set_options(timeout=10_000)
HELD_AFTER = 3  # words streamed before a closed gate holds the rest


@dataclass
class Call:
    model: str
    messages: list[Message]
    images: list[Image.Image]
    sampling: SamplingSpec


class EchoBackend:
    """A ChatBackend: answers "<model> sees a WxH image, turn N" a word at a time, and records every call."""

    def __init__(self, names: list[str]):
        self.names = names
        self.calls: list[Call] = []
        self.gate = threading.Event()  # cleared: streams stop after HELD_AFTER words until it is set
        self.gate.set()
        self.failing: set[str] = set()  # models whose answers raise

    def model_names(self) -> list[str]:
        return list(self.names)

    async def model_info(self, model: str) -> dict:
        return {"model": model, "template": "vicuna_v1", "image_mode": "pad", "dtype": "bfloat16"}

    async def stream_chat(self, model, messages, images, sampling):
        self.calls.append(Call(model, list(messages), list(images), sampling))
        if model in self.failing:
            raise RuntimeError("engine out of memory")
        seen = f"a {images[0].width}x{images[0].height}" if images else "no"
        turn = sum(m.role == "user" for m in messages)
        for i, word in enumerate(f"{model} sees {seen} image, turn {turn}".split()):
            if i == HELD_AFTER:
                deadline = time.monotonic() + 10  # a failed test must not hang the server
                while not self.gate.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.005)
            yield word if i == 0 else " " + word


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread on a free port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def png(path, width: int, height: int, colour: str = "red") -> str:
    Image.new("RGB", (width, height), colour).save(path)
    return str(path)


@pytest.fixture(scope="module")
def example_image(tmp_path_factory) -> str:
    return png(tmp_path_factory.mktemp("examples") / "square.png", 24, 24, "blue")


@pytest.fixture(scope="module")
def open_app(example_image):
    backend = EchoBackend(["tiny-a", "tiny-b"])
    app = FastAPI()
    mount_ui(app, backend, path="/ui", examples=[(example_image, "What colour is it?")])
    with served(app) as url:
        yield f"{url}/ui/", backend


@pytest.fixture
def dashboard(open_app):
    url, backend = open_app
    backend.calls.clear()
    backend.failing.clear()
    backend.gate.set()
    yield url, backend
    backend.gate.set()


def ask(page: Page, question: str) -> None:
    box = page.get_by_placeholder("Ask about the image")
    box.fill(question)
    box.press("Enter")


def test_chat_streams_the_answer_and_keeps_the_conversation(dashboard, tmp_path):
    url, backend = dashboard
    with chromium_page() as page:
        page.goto(url)
        page.locator("#chat-image input[type=file]").set_input_files(png(tmp_path / "red.png", 40, 30))
        bot = page.locator("#chat [data-testid=bot]")
        backend.gate.clear()
        ask(page, "What is it?")
        expect(bot.last).to_have_text("tiny-a sees a")  # the first words, while the backend holds the rest
        backend.gate.set()
        expect(bot.last).to_have_text("tiny-a sees a 40x30 image, turn 1")
        expect(page.locator("#chat [data-testid=user]")).to_have_text(["What is it?"])  # no placeholder shown
        (first,) = backend.calls
        assert first.messages == [Message("user", IMAGE_PLACEHOLDER + "\nWhat is it?")]
        assert [im.size for im in first.images] == [(40, 30)]
        assert first.sampling == SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS)

        ask(page, "And now?")  # the whole conversation again, the image still with the first turn
        expect(bot).to_have_text(["tiny-a sees a 40x30 image, turn 1", "tiny-a sees a 40x30 image, turn 2"])
        second = backend.calls[-1]
        assert second.messages == [
            Message("user", IMAGE_PLACEHOLDER + "\nWhat is it?"),
            Message("assistant", "tiny-a sees a 40x30 image, turn 1"),
            Message("user", "And now?"),
        ]
        assert [im.size for im in second.images] == [(40, 30)]

        # a new image starts a new conversation
        page.locator("#chat-image input[type=file]").set_input_files(png(tmp_path / "green.png", 16, 8, "green"))
        expect(bot).to_have_count(0)
        ask(page, "What is this one?")
        expect(bot).to_have_text(["tiny-a sees a 16x8 image, turn 1"])
        assert backend.calls[-1].messages == [Message("user", IMAGE_PLACEHOLDER + "\nWhat is this one?")]

        # Clear: no image, no conversation; a text-only question has no placeholder
        page.locator("#clear").click()
        expect(bot).to_have_count(0)
        ask(page, "Hello?")
        expect(bot).to_have_text(["tiny-a sees no image, turn 1"])
        assert backend.calls[-1].messages == [Message("user", "Hello?")]
        assert backend.calls[-1].images == []

        page.locator("#chat").get_by_role("button", name="Clear").click()  # the chat's own trash icon
        expect(bot).to_have_count(0)
        ask(page, "Hello again?")
        expect(bot).to_have_text(["tiny-a sees no image, turn 1"])


def test_model_picker_info_and_examples(dashboard):
    url, backend = dashboard
    with chromium_page() as page:
        page.goto(url)
        info = page.locator("#model-info")
        expect(info).to_contain_text("tiny-a")
        expect(info).to_contain_text("vicuna_v1")

        page.get_by_label("Model", exact=True).click()
        page.get_by_role("option", name="tiny-b").click()
        expect(info).to_contain_text("tiny-b")

        page.get_by_text("What colour is it?").first.click()  # the example fills the image and the question
        expect(page.get_by_placeholder("Ask about the image")).to_have_value("What colour is it?")
        expect(page.locator("#chat-image img")).to_have_count(1)
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#chat [data-testid=bot]")).to_have_text(["tiny-b sees a 24x24 image, turn 1"])
        assert backend.calls[-1].model == "tiny-b"


def test_side_by_side_streams_both_answers_at_once(dashboard, tmp_path):
    url, backend = dashboard
    with chromium_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Side by side").click()
        page.locator("#cmp-image input[type=file]").set_input_files(png(tmp_path / "red.png", 32, 32))
        expect(page.get_by_label("Model B")).to_have_value("tiny-b")
        backend.gate.clear()
        page.get_by_label("Question").last.fill("Which is it?")
        page.get_by_role("button", name="Ask both").click()
        a, b = page.locator("#answer-a textarea"), page.locator("#answer-b textarea")
        # both held mid-answer at the same moment: the two streams run together, not one after the other
        expect(a).to_have_value("tiny-a sees a")
        expect(b).to_have_value("tiny-b sees a")
        backend.gate.set()
        expect(a).to_have_value("tiny-a sees a 32x32 image, turn 1")
        expect(b).to_have_value("tiny-b sees a 32x32 image, turn 1")
        assert sorted(c.model for c in backend.calls) == ["tiny-a", "tiny-b"]
        for call in backend.calls:
            assert call.messages == [Message("user", IMAGE_PLACEHOLDER + "\nWhich is it?")]


def test_backend_errors_are_shown_as_messages_not_traces(dashboard):
    url, backend = dashboard
    backend.failing.add("tiny-a")
    with chromium_page() as page:
        page.goto(url)
        ask(page, "What is it?")
        expect(page.get_by_text("tiny-a: engine out of memory")).to_be_visible()
        expect(page.get_by_placeholder("Ask about the image")).to_have_value("What is it?")  # back, to retry
        expect(page.locator("#chat [data-testid=bot]")).to_have_count(0)

        ask(page, "  ")
        expect(page.get_by_text("Type a question first.")).to_be_visible()
        ask(page, "Is this <image> ok?")
        expect(page.get_by_text("A question cannot contain <image>")).to_be_visible()
        assert len(backend.calls) == 1

        page.get_by_role("tab", name="Side by side").click()  # one side fails, the other answers
        page.get_by_label("Question").last.fill("Which is it?")
        page.get_by_role("button", name="Ask both").click()
        expect(page.locator("#answer-a textarea")).to_have_value("[failed] tiny-a: engine out of memory")
        expect(page.locator("#answer-b textarea")).to_have_value("tiny-b sees no image, turn 1")
        assert "Traceback" not in page.content()


def test_the_api_key_is_the_login_password(tmp_path):
    backend = EchoBackend(["tiny"])
    app = FastAPI()
    mount_ui(app, backend, path="/ui", api_key="s3cret")
    with served(app) as url, chromium_page() as page:
        with pytest.raises(urllib.error.HTTPError) as e:  # gradio's routes need the login cookie
            urllib.request.urlopen(f"{url}/ui/config")
        assert e.value.code == 401

        page.goto(f"{url}/ui/")
        expect(page.get_by_text("password: the API key")).to_be_visible()
        page.get_by_label("username").fill("anyone")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
        expect(page.get_by_placeholder("Ask about the image")).to_have_count(0)

        page.get_by_label("username").fill("anyone")  # the failed login emptied both fields
        page.get_by_label("password").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        ask(page, "Hello?")
        expect(page.locator("#chat [data-testid=bot]")).to_have_text(["tiny sees no image, turn 1"])
        expect(page.get_by_label("Model", exact=True)).to_have_count(0)  # one model: no picker


def test_mount_ui_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="no models"):
        mount_ui(FastAPI(), EchoBackend([]))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mount_ui(FastAPI(), EchoBackend(["tiny"]), examples=[(tmp_path / "missing.png", "What is it?")])
