"""A canned judge for review tests: an OpenAI-compatible /v1/chat/completions over real HTTP, replying by the
judge prompt's question ("[Question]\\n<text>\\n\\n"); a reply of None is an HTTP 500.

    with CannedJudge({"Q1": "8 6\\nbecause", "Q2": None}) as judge:
        client = openai.OpenAI(base_url=judge.url, api_key="x", max_retries=0)
        ...; judge.requests   # every request body, in arrival order
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CannedJudge:
    def __init__(self, replies: dict[str, str | None]):
        self.replies = replies
        self.requests: list[dict] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append(body)
                question = body["messages"][1]["content"].split("[Question]\n", 1)[1].split("\n\n", 1)[0]
                reply = judge.replies[question]
                if self.path != "/v1/chat/completions" or reply is None:
                    self._send(500, {"error": {"message": "judge overloaded", "type": "server_error"}})
                    return
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": reply}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest's output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> CannedJudge:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
