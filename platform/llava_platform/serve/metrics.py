"""Prometheus metrics of the Serve app, through Ray's metrics API (exported by every Ray node's metrics agent,
`ray start --metrics-export-port`, under the `ray_` prefix).

    llava_requests_total{route, status}         requests answered, by route and HTTP status (ingress)
    llava_prompt_tokens_total{model}            prompt tokens of finished generations (model replica)
    llava_completion_tokens_total{model}        generated tokens (model replica)
    llava_time_to_first_token_seconds{model}    request arrival at the replica -> first text (model replica)
    llava_queue_wait_seconds{model}             arrival -> its batch starts decoding (model replica)
    llava_batch_size{model}                     requests decoded together, one observation per batch
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

__all__ = ["IngressMetrics", "ModelMetrics"]

_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]


class IngressMetrics:
    def __init__(self):
        self.requests = Counter("llava_requests_total", "requests answered, by route and HTTP status",
                                tag_keys=("route", "status"))  # fmt: skip

    def request(self, route: str, status: int) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})


class ModelMetrics:
    def __init__(self):
        self.prompt_tokens = Counter("llava_prompt_tokens_total", "prompt tokens", tag_keys=("model",))
        self.completion_tokens = Counter("llava_completion_tokens_total", "generated tokens", tag_keys=("model",))
        self.ttft = Histogram("llava_time_to_first_token_seconds", "arrival at the replica to the first text",
                              boundaries=_SECONDS, tag_keys=("model",))  # fmt: skip
        self.queue_wait = Histogram("llava_queue_wait_seconds", "arrival to the start of its batch",
                                    boundaries=_SECONDS, tag_keys=("model",))  # fmt: skip
        self.batch_size = Histogram("llava_batch_size", "requests decoded together", boundaries=_BATCH_SIZES,
                                    tag_keys=("model",))  # fmt: skip

    def batch(self, model: str, size: int, queue_waits_s: list[float]) -> None:
        self.batch_size.observe(size, tags={"model": model})
        for wait in queue_waits_s:
            self.queue_wait.observe(wait, tags={"model": model})

    def finished(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens, tags={"model": model})
        if completion_tokens:
            self.completion_tokens.inc(completion_tokens, tags={"model": model})
