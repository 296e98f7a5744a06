"""Serving throughput, overhead and time to first token, on one running app, with the engine in this process as
the baseline.

    python benchmarks/serve_throughput.py                       # deploys serve_apps/tiny.yaml on a local Ray
    python benchmarks/serve_throughput.py --url http://127.0.0.1:8000 --api-key $KEY --model llava-tiny

Measured, each against a baseline of the same run:
  throughput   requests/s and tokens/s at concurrency 32 against concurrency 1 (one request at a time: unbatched)
  overhead     p50 latency of a 1-token request through HTTP + Serve against the same request to the engine here
  TTFT         time to the first streamed token, at concurrency 1 and 32

Requests are the synthetic scenes of serve_apps/examples with greedy decoding and short answers (the tiny
model stops after a few tokens). They go out through http.client on kept-alive connections, one per client
thread: on a 2-core machine the load generator shares the CPUs with the app, and the openai client's own
per-request work would otherwise be a large part of what is measured.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.client
import json
import math
import statistics
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "serve_apps" / "examples"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app; default: deploy serve_apps/tiny.yaml on a local Ray here")
    parser.add_argument("--api-key", default="none", help="the app's API key, if it has one")
    parser.add_argument("--model", default="llava-tiny")
    parser.add_argument("--checkpoint", default=str(REPO / "jobs/assets/tiny-base"), help="the served model, for the "
                        "in-process baseline")  # fmt: skip
    parser.add_argument("--requests", type=int, default=96, help="requests per throughput measurement")
    parser.add_argument("--max-tokens", type=int, default=16)
    return parser.parse_args()


@functools.cache
def examples() -> list[tuple[bytes, str]]:
    """The example scenes' image bytes and questions, read once."""
    return [((EXAMPLES / e["image"]).read_bytes(), e["question"]) for e in json.loads((EXAMPLES / "examples.json").read_text())]


def chat_request(i: int, max_tokens: int) -> dict:
    image, question = examples()[i % len(examples())]
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}


def deploy_locally() -> str:
    """serve_apps/tiny.yaml's app on a local Ray in this process (no key, no dashboard); its URL."""
    import yaml
    from ray import serve

    from llava_platform.serve.app import build_app

    config = yaml.safe_load((REPO / "serve_apps/tiny.yaml").read_text())
    args = config["applications"][0]["args"]
    args.update(ui=False, examples_folder=None)
    args["models"][0]["checkpoint"] = str(REPO / args["models"][0]["checkpoint"])
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    serve.run(build_app(args), name="llava", route_prefix="/")
    return "http://127.0.0.1:8123"


class Client:
    """One kept-alive HTTP connection per thread; requests are prepared JSON bytes."""

    def __init__(self, url: str, api_key: str, model: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise SystemExit(f"--url {url}: an http:// URL of the app (this client speaks plain HTTP)")
        self.host, self.port = parts.hostname, parts.port or 80
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self.model = model
        self.local = threading.local()

    def body(self, i: int, max_tokens: int, stream: bool = False) -> bytes:
        return json.dumps({"model": self.model, "stream": stream, **chat_request(i, max_tokens)}).encode()

    def post(self, body: bytes) -> http.client.HTTPResponse:
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
        self.local.connection.request("POST", "/v1/chat/completions", body, self.headers)
        response = self.local.connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        return response

    def completion_tokens(self, body: bytes) -> int:
        return json.loads(self.post(body).read())["usage"]["completion_tokens"]

    def first_token_s(self, body: bytes) -> float:
        """Seconds to the first streamed text (the rest of the stream is read to the end)."""
        started = time.perf_counter()
        first = float("nan")
        response = self.post(body)
        for line in response:
            if math.isnan(first) and line.startswith(b"data: {") and b'"content": "' in line and b'"content": ""' not in line:
                first = time.perf_counter() - started
        return first


def timed_requests(client: Client, count: int, concurrency: int, max_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) for `count` requests, `concurrency` at a time."""
    bodies = [client.body(i, max_tokens) for i in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(client.completion_tokens, bodies))
    return time.perf_counter() - started, tokens


def time_to_first_token(client: Client, concurrency: int, max_tokens: int) -> list[float]:
    bodies = [client.body(i, max_tokens, stream=True) for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(client.first_token_s, bodies))


def direct_latencies(checkpoint: str, count: int) -> list[float]:
    """The same 1-token requests to the engine in this process (image decode and processor included)."""
    from llava_platform.config import SamplingSpec
    from llava_platform.data.images import load_image
    from llava_platform.data.templates import Message
    from llava_platform.inference.engine import GenerationRequest, InferenceEngine

    engine = InferenceEngine.from_checkpoint(checkpoint)
    latencies = []
    for i in range(count):
        image, question = examples()[i % len(examples())]
        started = time.perf_counter()
        request = GenerationRequest([Message("user", "<image>\n" + question)], [load_image(image)])
        engine.generate([request], SamplingSpec(max_new_tokens=1))
        latencies.append(time.perf_counter() - started)
    return latencies


def http_latencies(client: Client, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        body = client.body(i, 1)
        started = time.perf_counter()
        client.completion_tokens(body)
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    args = parse_args()
    client = Client(args.url or deploy_locally(), args.api_key, args.model)
    timed_requests(client, 8, 8, args.max_tokens)  # warm-up: the model loads, the batcher starts

    one_s, one_tokens = timed_requests(client, args.requests, 1, args.max_tokens)
    many_s, many_tokens = timed_requests(client, args.requests, 32, args.max_tokens)
    print(f"throughput ({args.requests} requests, max_tokens {args.max_tokens}, greedy):")
    print(f"  concurrency 1:  {args.requests / one_s:.1f} requests/s, {one_tokens / one_s:.0f} tokens/s")
    print(f"  concurrency 32: {args.requests / many_s:.1f} requests/s, {many_tokens / many_s:.0f} tokens/s "
          f"({one_s / many_s:.2f}x concurrency 1)")  # fmt: skip

    count = max(8, args.requests // 3)
    direct = statistics.median(direct_latencies(args.checkpoint, count))
    served = statistics.median(http_latencies(client, count))
    print(f"overhead (1-token requests, p50 of {count}): engine here {direct * 1000:.1f} ms, through HTTP + Serve "
          f"{served * 1000:.1f} ms: {(served - direct) * 1000:.1f} ms added")  # fmt: skip

    for concurrency in (1, 32):
        ttft = sorted(time_to_first_token(client, concurrency, args.max_tokens))
        print(f"time to first token at concurrency {concurrency}: p50 {statistics.median(ttft) * 1000:.0f} ms, "
              f"max {ttft[-1] * 1000:.0f} ms")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
