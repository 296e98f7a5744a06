"""The Serve app as users run it: `serve deploy` of serve_apps/tiny.yaml (plus a second model from S3, an API key,
autoscaling 1-2) to the shared `ray start --head` cluster, then the real openai client, HTTP, a WebSocket and
headless Chromium against it.

One deployment serves the whole module (deploying costs ~20 s); it is shut down at the module's end, so the
training tests find the cluster's CPUs free.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import secrets
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from PIL import Image

from conftest import REPO, lora_model, make_image, run_job
from llava_platform.batch.answers import read_answers
from llava_platform.config import LoraSpec
from llava_platform.eval.review import ReviewItem
from serving import ServedApp, metrics_text, tiny_config

KEY = secrets.token_hex(16)
EXAMPLES = REPO / "serve_apps" / "examples"
SCENE = EXAMPLES / "scene1.png"
QUESTION = "What color is the circle?"
IMAGE_HOST = "127.0.0.2"  # the test-only allowlist's host (loopback, but not the 127.0.0.1 the tests must see refused)

pytestmark = pytest.mark.slow


def adapter_checkpoint(base_checkpoint: Path, out: Path) -> Path:
    """LoRA adapters (non-zero, so they change the answers) saved as an adapter checkpoint over `base_checkpoint`."""
    from llava_platform.model import ModelBundle, load_checkpoint, save_checkpoint

    base = load_checkpoint(base_checkpoint)
    spec = base.spec.model_copy(update={"lora": LoraSpec(r=4, alpha=8, dropout=0.0)})
    return save_checkpoint(ModelBundle(lora_model(base), base.processor, base.template, spec), out)


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint, tmp_path_factory) -> Path:
    return adapter_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("adapters") / "tiny-lora")


@pytest.fixture(scope="module")
def app(ray_client, s3_server, tiny_checkpoint, adapters, tmp_path_factory):
    random_model = s3_server.upload_folder(tiny_checkpoint, "serve/tiny-random")  # served from the object store
    config = tiny_config(
        models=[{"name": "llava-tiny", "checkpoint": "jobs/assets/tiny-base"},
                {"name": "tiny-random", "checkpoint": random_model},
                {"name": "tiny-lora", "checkpoint": str(adapters)}],
        storage={"endpoint_url": s3_server.endpoint},
        auth={"api_key_env": "LLAVA_TEST_KEY"},
        image_fetch={"allow_hosts": [IMAGE_HOST], "timeout_s": 3},
        limits={"max_tokens": 256, "max_prompt_tokens": 1024, "max_images": 2, "max_body_bytes": 2_000_000,
                "max_image_pixels": 4_000_000},
        model_deployment={"num_cpus": 1, "max_ongoing_requests": 16, "max_queued_requests": 24,
                          "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                                          "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
                                          "look_back_period_s": 1}},
        examples_folder=str(EXAMPLES),
    )  # fmt: skip
    config["applications"][0]["runtime_env"] = {"env_vars": {"LLAVA_TEST_KEY": KEY}}
    # relative paths (jobs/assets/tiny-base) are read where the app is built: make them absolute for the cluster
    config["applications"][0]["args"]["models"][0]["checkpoint"] = str(REPO / "jobs/assets/tiny-base")
    served = ServedApp(ray_client, config, tmp_path_factory.mktemp("serve"))
    yield served
    served.shutdown()


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=app.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def data_url(path_or_bytes) -> str:
    data = Path(path_or_bytes).read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_message(question: str, *urls: str) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
                                         {"type": "text", "text": question}]}]  # fmt: skip


def post(app, path: str, body: bytes | dict, key: str | None = KEY, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(app.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def get(app, path: str, key: str | None = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(app.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def huge_png_header(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- the OpenAI API


def test_openai_client_answers_as_jobs_chat_does(app, client):
    chat = run_job("chat", "--checkpoint", "jobs/assets/tiny-base", "--image", str(SCENE), "--prompt", QUESTION,
                   "--max-new-tokens", "64")  # fmt: skip
    assert chat.returncode == 0, chat.stderr[-2000:]
    expected = chat.stdout.removesuffix("\n")

    reply = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, data_url(SCENE)))
    assert reply.choices[0].message.content == expected and expected.strip()
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 36 and reply.usage.completion_tokens >= 1  # 36 image tokens in the prompt

    stream = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, data_url(SCENE)),
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens and not chunks[-1].choices

    assert [m.id for m in client.models.list().data] == ["llava-tiny", "tiny-random", "tiny-lora"]


def test_more_models_are_served_by_name_from_the_object_store_and_as_adapters(app, client, tiny_bundle, adapters):
    from llava_platform.config import SamplingSpec
    from llava_platform.data.templates import Message
    from llava_platform.inference.engine import GenerationRequest, InferenceEngine

    image = make_image(48, 48, seed=3)
    request = GenerationRequest([Message("user", "<image>\nWhat is it?")], [image])
    answers = {}
    for name, engine in [("tiny-random", InferenceEngine(tiny_bundle)), ("tiny-lora", InferenceEngine.from_checkpoint(str(adapters)))]:
        [expected] = engine.generate([request], SamplingSpec(max_new_tokens=12))
        reply = client.chat.completions.create(model=name, max_tokens=12,
                                               messages=image_message("What is it?", data_url(png_bytes(image))))  # fmt: skip
        assert reply.choices[0].message.content == expected.text, name
        assert reply.usage.completion_tokens == expected.completion_tokens
        answers[name] = expected.text
    assert answers["tiny-lora"] != answers["tiny-random"]  # the adapters over that base change its answer


def test_system_multi_turn_two_images_seed_stop_and_prompt_limit(app, client):
    """The request's conversation reaches the template as the engine's messages (a system turn, earlier turns, two
    images where their parts stand), and each sampling parameter does what it says."""
    from llava_platform.config import SamplingSpec
    from llava_platform.data.templates import Message
    from llava_platform.inference.engine import GenerationRequest, InferenceEngine

    scenes = [SCENE, EXAMPLES / "scene2.png"]
    messages = [
        {"role": "system", "content": "You answer about pictures."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(scenes[0])}},
                                     {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "blue"},
        {"role": "user", "content": [{"type": "text", "text": "And here?"},
                                     {"type": "image_url", "image_url": {"url": data_url(scenes[1])}}]},
    ]  # fmt: skip
    reply = client.chat.completions.create(model="llava-tiny", messages=messages, max_tokens=12)
    engine = InferenceEngine.from_checkpoint(str(REPO / "jobs/assets/tiny-base"))
    images = [Image.open(p).convert("RGB") for p in scenes]
    [expected] = engine.generate([GenerationRequest(
        [Message("system", "You answer about pictures."), Message("user", "<image>\n" + QUESTION),
         Message("assistant", "blue"), Message("user", "And here?\n<image>")], images)], SamplingSpec(max_new_tokens=12))
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens  # both images' tokens counted

    hot = dict(model="tiny-random", messages=image_message("Tell me a long story.", data_url(SCENE)), max_tokens=24,
               temperature=1.0)  # fmt: skip
    first, again, other = (client.chat.completions.create(seed=s, **hot).choices[0].message.content for s in (7, 7, 8))
    assert first == again != other
    greedy = client.chat.completions.create(**{**hot, "temperature": 0}).choices[0].message.content
    # a 2-character stop that first occurs at k (not at the start, where the answer's leading space was dropped)
    k = next(k for k in range(2, len(greedy) - 1) if greedy[k : k + 2] not in greedy[: k + 1] and not greedy[k].isspace())
    stopped = client.chat.completions.create(**{**hot, "temperature": 0}, stop=[greedy[k : k + 2]]).choices[0]
    assert stopped.message.content == greedy[:k] and stopped.finish_reason == "stop"

    status, body = post(app, "/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 3000}]})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert "limits.max_prompt_tokens" in body["error"]["message"]


def test_32_concurrent_greedy_requests_are_batched_and_answer_as_alone(app, client):
    scenes = sorted(EXAMPLES.glob("*.png"))
    questions = ["What color is the circle?", "What shape is at the top left?", "Is there a green triangle?",
                 "How many shapes are there?"]  # fmt: skip
    requests = [(data_url(scenes[i % len(scenes)]), questions[i % len(questions)], 8 + i % 9) for i in range(32)]

    def ask(request):
        url, question, max_tokens = request
        return client.chat.completions.create(model="llava-tiny", messages=image_message(question, url),
                                              max_tokens=max_tokens).choices[0].message.content  # fmt: skip

    before = batch_counts(app)
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, requests))
    alone = [ask(r) for r in requests]
    assert together == alone

    deadline = time.time() + 30  # the replicas report their metrics every second; the export lags a little
    while True:
        batches, larger = (now - then for now, then in zip(batch_counts(app), before))
        if larger >= 1 or time.time() > deadline:
            break
        time.sleep(1)
    assert larger >= 1, f"no batch of more than one request among {batches} batches"


def batch_counts(app) -> tuple[float, float]:
    """(batches observed, batches of more than one request), from the llava_batch_size histogram of llava-tiny."""
    total = ones = 0.0
    for line in metrics_text(app.cluster).splitlines():
        if line.startswith("ray_llava_batch_size_count") and 'model="llava-tiny"' in line:
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith("ray_llava_batch_size_bucket") and 'le="1.0"' in line and 'model="llava-tiny"' in line:
            ones += float(line.rsplit(" ", 1)[1])
    return total, total - ones


# --------------------------------------------------------------------------- bad input


class ImageServer:
    """A local http server on 127.0.0.2 (the test-only allowlist) serving the example scene."""

    def __init__(self):
        body = SCENE.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((IMAGE_HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_an_image_url_is_fetched_from_an_allowed_host(app, client):
    server = ImageServer()
    try:
        url = f"http://{IMAGE_HOST}:{server.port}/scene.png"
        fetched = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, url))
        inline = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, data_url(SCENE)))
        assert fetched.choices[0].message.content == inline.choices[0].message.content
    finally:
        server.server.shutdown()


def chat_body(*urls: str, **extra) -> dict:
    return {"model": "llava-tiny", "messages": image_message(QUESTION, *urls), "max_tokens": 4, **extra}


truncated_png = png_bytes(make_image(64, 64))[:300]
BAD_REQUESTS = [  # (name, body, expected status, text the message must hold, expected param)
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON", None),
    ("missing messages", {"model": "llava-tiny"}, 400, "messages: required field is missing", "messages"),
    ("messages of the wrong type", {"messages": "hi"}, 400, "messages", "messages"),
    ("temperature of the wrong type", chat_body(temperature="hot"), 400, "temperature", "temperature"),
    ("unknown field", chat_body(frobnicate=1), 400, "Unrecognized request argument supplied: frobnicate", "frobnicate"),
    ("n=5", chat_body(n=5), 400, "n=5", "n"),
    ("max_tokens over the limit", chat_body(max_tokens=100_000), 400, "limits.max_tokens", "max_tokens"),
    ("unknown model", {**chat_body(), "model": "gpt-4o"}, 404, "The model 'gpt-4o' does not exist", "model"),
    ("a non-image", chat_body(data_url(b"this is not an image at all")), 400, "image", "messages[0].content[0].image_url.url"),
    ("a truncated PNG", chat_body(data_url(truncated_png)), 400, "image", "messages[0].content[0].image_url.url"),
    ("a 30000x30000 header", chat_body(data_url(huge_png_header())), 413, "30000x30000", "messages[0].content[0].image_url.url"),
    ("too many images", chat_body(*[data_url(SCENE)] * 3), 400, "limits.max_images", "messages"),
    ("127.0.0.1", chat_body("http://127.0.0.1:8000/x.png"), 400, "public", "messages[0].content[0].image_url.url"),
    ("[::1]", chat_body("http://[::1]:8000/x.png"), 400, "public", "messages[0].content[0].image_url.url"),
    ("10.0.0.1", chat_body("http://10.0.0.1/x.png"), 400, "public", "messages[0].content[0].image_url.url"),
    ("metadata", chat_body("http://169.254.169.254/latest/meta-data/"), 400, "public", "messages[0].content[0].image_url.url"),
    ("a name resolving to loopback", chat_body("http://localhost:8000/x.png"), 400, "public",
     "messages[0].content[0].image_url.url"),
    ("a file URL", chat_body("file:///etc/passwd"), 400, "file", "messages[0].content[0].image_url.url"),
]  # fmt: skip


@pytest.mark.parametrize("name, body, status, text, param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_a_4xx_in_openais_error_body(app, name, body, status, text, param):
    got, reply = post(app, "/v1/chat/completions", body)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert text in error["message"] and error["param"] == param, error


def test_limits_keys_and_the_server_answering_afterwards(app, client):
    status, reply = post(app, "/v1/chat/completions", b"{" + b" " * 2_100_000 + b"}")
    assert status == 413 and "limits.max_body_bytes" in reply["error"]["message"]
    status, reply = post(app, "/v1/chat/completions", chat_body(), key=None)
    assert status == 401 and reply["error"]["code"] == "invalid_api_key" and "Bearer" in reply["error"]["message"]
    assert post(app, "/v1/chat/completions", chat_body(), key="wrong")[0] == 401
    assert get(app, "/health", key=None) == (200, {"status": "ok"})
    assert get(app, "/v1/models", key=None)[0] == 401
    # the client raises its own classes from the error body
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=app.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=image_message(QUESTION, data_url(SCENE)))
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client.chat.completions.create(model="llava-tiny", n=2, messages=image_message(QUESTION, data_url(SCENE)))
    # and it still answers
    reply = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, data_url(SCENE)))
    assert reply.choices[0].message.content.strip()


# --------------------------------------------------------------------------- the LLaVA API


def test_llava_api_analyze_info_and_websocket(app, client):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    image = base64.b64encode(SCENE.read_bytes()).decode()
    expected = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, data_url(SCENE)))
    status, reply = post(app, "/analyze", {"image": image, "question": QUESTION})
    assert status == 200 and reply["status"] == "success"
    assert reply["answer"] == expected.choices[0].message.content
    status, refused = post(app, "/analyze", {"image": "not base64!", "question": QUESTION})
    assert status == 400 and refused["status"] == "error" and refused["error"]["param"] == "image"

    status, info = get(app, "/model/info")
    assert status == 200
    assert info["model"] == "llava-tiny" and info["template"] == "mistral_instruct" and info["image_mode"] == "pad"
    assert info["dtype"] == "float32" and info["quantization"] == "none" and info["parameters"] > 100_000
    assert info["replicas"]["max_replicas"] == 2 and info["served_models"] == ["llava-tiny", "tiny-random", "tiny-lora"]
    status, lora_info = get(app, "/model/info?model=tiny-lora")
    assert status == 200 and lora_info["model"] == "tiny-lora" and lora_info["checkpoint"].endswith("tiny-lora")

    ws_url = app.url.replace("http", "ws") + "/ws"
    with connect(f"{ws_url}?api_key={KEY}") as socket:
        socket.send(json.dumps({"type": "analyze", "image": image, "question": QUESTION}))
        tokens, answer = [], None
        while answer is None:
            message = json.loads(socket.recv(timeout=60))
            if message["type"] == "token":
                tokens.append(message["text"])
            else:
                answer = message
        assert answer["type"] == "answer" and answer["answer"] == reply["answer"] == "".join(tokens)
        socket.send("{not json")  # a bad message is answered, and the socket stays open
        error = json.loads(socket.recv(timeout=60))
        assert error["type"] == "error" and error["error"]["code"] == "invalid_value"
    with pytest.raises((InvalidStatus, ConnectionClosed)) as refused:  # no key: the handshake is refused (403)
        with connect(ws_url) as socket:  # or, past a proxy that accepted it, the socket closes with 1008
            socket.send(json.dumps({"type": "analyze", "image": image, "question": QUESTION}))
            socket.recv(timeout=30)
    if isinstance(refused.value, InvalidStatus):
        assert refused.value.response.status_code == 403
    else:
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008


# --------------------------------------------------------------------------- fuzzing


def test_openapi_fuzzing_finds_no_server_error(app, tmp_path):
    """schemathesis generates requests from the app's own OpenAPI schema (valid and invalid ones, all operations):
    none may be answered with a 5xx. Small max_tokens keeps generation short."""
    import subprocess
    import sys

    st = str(Path(sys.executable).parent / "schemathesis")
    done = subprocess.run(
        [st, "run", app.url + "/openapi.json", "--checks", "not_a_server_error", "-n", "110", "--seed", "1",
         "-H", f"Authorization: Bearer {KEY}", "--request-timeout", "60", "--no-shrink", "--max-failures", "5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its cache folder goes there
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated and int(generated[1]) >= 500 and generated[1] == generated[2], done.stdout[-2000:]


# --------------------------------------------------------------------------- operations


def chat_random(client, max_tokens: int, **kwargs):
    return client.chat.completions.create(model="tiny-random", max_tokens=max_tokens, temperature=0,
                                          messages=image_message("Describe it.", data_url(SCENE)), **kwargs)  # fmt: skip


def wait_replicas(app, running: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while app.replicas() != {"RUNNING": running}:
        assert time.time() < deadline, f"replicas: {app.replicas()}, waited for {running} RUNNING"
        time.sleep(0.5)


def test_a_client_that_disconnects_stops_its_generation(app, client):
    """With one replica, a request queued behind a long generation waits for it, unless the client that asked for it
    left: then its row stops at the next step and the next request runs at once."""
    long_prompt = image_message("Tell me a long story.", data_url(SCENE))  # the random model's greedy answer: 256+ tokens
    wait_replicas(app, 1, 60)
    started = time.time()
    full = client.chat.completions.create(model="tiny-random", max_tokens=256, temperature=0, messages=long_prompt)
    full_s = time.time() - started
    assert full.usage.completion_tokens == 256, "the precondition: this prompt decodes to the limit"
    with client.chat.completions.with_streaming_response.create(
            model="tiny-random", max_tokens=256, temperature=0, stream=True, messages=long_prompt) as response:  # fmt: skip
        lines = response.iter_lines()
        assert next(lines).startswith("data:")  # the stream is flowing; then the client leaves
    started = time.time()
    chat_random(client, 1)
    assert time.time() - started < full_s / 2, (time.time() - started, full_s)


def test_a_full_queue_is_refused_at_once(app):
    """16 ongoing per replica + 24 queued at the ingress: the rest of 100 simultaneous requests get 503 within seconds,
    where a queued one would wait for 256-token answers ahead of it. Text only: 100 images at once queue in the
    ingress's decoding threads before they reach the model's queue (a refusal then took 3.5 s), and this is about the
    model's queue."""
    long_prompt = [{"role": "user", "content": "Tell me a long story."}]

    def ask(_):
        started = time.time()
        status, reply = post(app, "/v1/chat/completions", {"model": "tiny-random", "max_tokens": 256, "temperature": 0,
                                                           "messages": long_prompt})  # fmt: skip
        return status, reply, time.time() - started

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(ask, range(100)))
    refused = [(r, s) for status, r, s in results if status == 503]
    assert {status for status, _, _ in results} <= {200, 503}
    assert len(refused) >= 20, len(refused)
    assert all(reply["error"]["code"] == "server_overloaded" and seconds < 3 for reply, seconds in refused), \
        sorted(seconds for _, seconds in refused)[-3:]


def test_autoscaling_goes_to_two_replicas_under_load_and_back_to_one(app, client):
    wait_replicas(app, 1, 60)
    stop = threading.Event()

    def load():
        while not stop.is_set():
            chat_random(client, 128)

    with ThreadPoolExecutor(12) as pool:
        for _ in range(12):
            pool.submit(load)
        try:
            wait_replicas(app, 2, 60)
        finally:
            stop.set()
    wait_replicas(app, 1, 60)  # downscale_delay_s: 4


def test_a_killed_model_replica_is_replaced_without_losing_requests(app, ray_client):
    """SIGKILL a model replica under load: requests in flight fail with a 503 (never hang) and succeed on one retry;
    Serve starts a new replica, and the app answers without a restart."""
    import os
    import signal

    from ray.util.state import list_actors

    client = openai.OpenAI(base_url=app.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    failures: list[str] = []

    def ask_with_one_retry(i: int) -> str:
        for attempt in range(2):
            try:
                return chat_random(client, 64).choices[0].message.content
            except openai.APIStatusError as e:
                failures.append(f"{e.status_code} {e.body}")
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    wait_replicas(app, 1, 60)
    alive = list_actors(address=ray_client.dashboard, filters=[("state", "=", "ALIVE")])  # this cluster's, by address
    [replica] = [a for a in alive if a.class_name.endswith("LlavaModel")]
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(ask_with_one_retry, i) for i in range(24)]
        time.sleep(0.5)
        pending = sum(not a.done() for a in answers)
        os.kill(replica.pid, signal.SIGKILL)
        results = [a.result(timeout=120) for a in answers]
    assert pending >= 8, "the kill should land under load"
    assert len(results) == 24 and all(results)
    assert all(f.startswith("503") for f in failures), failures
    print(f"replica killed under load: {len(failures)} of 24 requests failed once (503), all answered on retry")
    wait_replicas(app, 1, 60)
    assert chat_random(client, 4).choices[0].message.content


def test_a_review_judged_by_this_server_reports_replies_without_a_score(app, client, tmp_path, monkeypatch):
    """jobs.evaluate's GPT-assisted review with this platform's own server as the judge (any OpenAI-compatible
    endpoint): the tiny model answers the questions, then judges them; a reply with no score is counted, not guessed."""
    from llava_platform.config import load
    from llava_platform.eval.job import run_evaluation
    from llava_platform.eval.review import judge_messages, load_rules, parse_scores
    from llava_platform.eval.spec import EvalJobSpec

    lines = [{"question_id": f"q{i}", "image": f"scene{i}.png", "text": "Describe the image.", "category": category,
              "caption": "shapes on a grid", "reference": "A red circle."} for i, category in enumerate(["conv", "detail", "conv"])]  # fmt: skip
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "rules.json").write_text(json.dumps({"default": {"role": "Assistant", "prompt": "Score both 1-10."}}))
    monkeypatch.setenv("LLAVA_TEST_KEY", KEY)
    spec = load(REPO / "jobs/configs/tiny_batch.yaml", EvalJobSpec, [
        f"batch.input={tmp_path / 'questions.jsonl'}", f"batch.image_folder={EXAMPLES}", f"batch.output={tmp_path / 'out'}",
        "task.name=bench", "task.metric=review", f"task.judge.base_url={app.url}/v1", "task.judge.model=llava-tiny",
        "task.judge.api_key_env=LLAVA_TEST_KEY", f"task.judge.rules={tmp_path / 'rules.json'}", "task.judge.max_tokens=8",
        "task.judge.temperature=0"])  # fmt: skip
    metrics = run_evaluation(spec, log=lambda line: None)

    judged = {r["question_id"]: r for r in metrics["judged"]}
    assert sorted(judged) == ["q0", "q1", "q2"] and not any(r["error"] for r in judged.values())
    answers = {r["question_id"]: r["text"] for r in read_answers(str(tmp_path / "out"))}
    rules = load_rules(str(tmp_path / "rules.json"))
    for line in lines:  # each reply is what the server says to that judge prompt (greedy), read as parse_scores reads it
        item = ReviewItem(line["question_id"], line["category"], line["text"], line["caption"], line["reference"],
                          answers[line["question_id"]])  # fmt: skip
        direct = client.chat.completions.create(model="llava-tiny", messages=judge_messages(item, rules), max_tokens=8,
                                                temperature=0)  # fmt: skip
        assert judged[item.question_id]["reply"] == direct.choices[0].message.content
        assert judged[item.question_id]["scores"] == parse_scores(direct.choices[0].message.content)
    overall = metrics["scores"]["all"]
    unscored = sum(r["scores"] is None for r in judged.values())
    assert (overall["count"], overall["unscored"], overall["scored"]) == (3, unscored, 3 - unscored)
    assert metrics["scores"]["conv"]["count"] == 2 and metrics["scores"]["detail"]["count"] == 1


def test_the_throughput_benchmark_runs_against_the_app(app):
    """benchmarks/serve_throughput.py against this app (a few requests: its figures are README / RESULTS.md's)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "benchmarks/serve_throughput.py", "--url", app.url, "--api-key", KEY,
                           "--requests", "8", "--max-tokens", "4"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"concurrency 32: [\d.]+ requests/s, \d+ tokens/s \([\d.]+x concurrency 1\)", done.stdout)
    assert re.search(r"overhead .* engine here [\d.]+ ms, through HTTP \+ Serve [\d.]+ ms", done.stdout)
    assert re.search(r"time to first token at concurrency 32: p50 \d+ ms", done.stdout), done.stdout


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_in_chromium_logs_in_uploads_asks_and_streams_the_answer(app, client):
    """Debian's chromium, headless: the login page takes the API key, an uploaded scene and a question get the
    model's streamed answer on the page, the same answer the API gives."""
    from playwright.sync_api import expect

    from browser import chromium_page

    expected = client.chat.completions.create(model="llava-tiny", messages=image_message(QUESTION, data_url(SCENE)),
                                              max_tokens=64).choices[0].message.content  # fmt: skip
    with chromium_page(timeout_s=60) as page:
        page.goto(app.url + "/ui/")
        page.get_by_label("username").fill("user")
        page.get_by_label("password").fill(KEY)
        page.get_by_role("button", name="Login").click()
        page.locator("#chat-image input[type=file]").set_input_files(str(SCENE))
        expect(page.locator("#chat-image img")).to_have_count(1)
        box = page.get_by_placeholder("Ask about the image")
        box.fill(QUESTION)
        box.press("Enter")
        expect(page.locator("#chat [data-testid=bot]")).to_have_text([expected.strip()])
        expect(page.locator("#model-info")).to_contain_text("mistral_instruct")
