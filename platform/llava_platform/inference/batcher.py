"""Dynamic batching over the engine: concurrent requests decode together, each streaming its own events.

    batcher = DynamicBatcher(engine, max_batch_size=16, max_wait_s=0.01)
    async for event in batcher.stream(GenerationRequest(messages, images, sampling)):   # from many tasks at once
        print(event.delta, end="")

Requests that arrive while the device is idle are gathered for at most `max_wait_s` after the
first one (or until `max_batch_size`) and decoded by one engine.stream call on a worker thread.
Every row keeps its own sampling, seed, stops and limit (see engine.py); a row's result is
delivered as soon as it finishes, and a caller that stops iterating (client gone, task
cancelled) sets its row's cancel event, which ends that row alone at the next step.

No continuous batching: a request that arrives while a batch decodes waits for the next batch
(generate() cannot take new rows mid-decode). A short request in a long batch still returns as
soon as its own row ends. Batchers that share a device share `device_lock`,
so a replica serving several models runs one batch at a time and a batch never mixes models.
No Ray here: the Serve replica wraps this class, and benchmarks run it in-process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from llava_platform.inference.engine import GenerationRequest, InferenceEngine, StreamEvent

__all__ = ["BatchStats", "DynamicBatcher"]


@dataclass
class BatchStats:
    """What one batch was: handed to `on_batch` (the replica's metrics)."""

    size: int
    queue_waits_s: list[float]  # per request: arrival -> its batch starts


@dataclass(eq=False)  # found in the waiting list by identity
class _Waiting:
    request: GenerationRequest
    events: asyncio.Queue  # StreamEvent items, an exception, or None (the batch ended without a result for it)
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, engine: InferenceEngine, max_batch_size: int = 16, max_wait_s: float = 0.01,
                 device_lock: asyncio.Lock | None = None, on_batch: Callable[[BatchStats], None] | None = None):  # fmt: skip
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.device_lock = device_lock or asyncio.Lock()
        self.on_batch = on_batch
        self._waiting: list[_Waiting] = []
        self._arrival = asyncio.Event()
        self._runner: asyncio.Task | None = None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """This request's events (index 0 refers to it), the last one carrying its result."""
        request.cancel = request.cancel or threading.Event()
        waiting = _Waiting(request, asyncio.Queue())
        self._waiting.append(waiting)
        self._arrival.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())
        try:
            while (item := await waiting.events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield StreamEvent(0, item.delta, item.result)
                if item.result is not None:
                    return
        finally:  # finished, or the caller left: a row still decoding stops, a request still waiting never starts
            request.cancel.set()
            if waiting in self._waiting:
                self._waiting.remove(waiting)

    async def _run(self) -> None:
        """Forever: wait for a request, gather a batch, decode it (one batch at a time on the device). If this loop
        fails or is cancelled (the model unloaded), every request it holds gets the error: none waits forever."""
        batch: list[_Waiting] = []
        try:
            while True:
                if not self._waiting:
                    self._arrival.clear()
                    await self._arrival.wait()
                    continue
                deadline = self._waiting[0].arrived + self.max_wait_s
                while len(self._waiting) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), left)
                    except asyncio.TimeoutError:
                        break
                async with self.device_lock:
                    batch, self._waiting = self._waiting[: self.max_batch_size], self._waiting[self.max_batch_size :]
                    batch = [w for w in batch if not w.request.cancel.is_set()]
                    if batch:
                        await self._decode(batch)
                    batch = []
        except BaseException as e:
            error = e if isinstance(e, Exception) else RuntimeError("the model was unloaded while this request waited")
            for w in batch + self._waiting:
                w.events.put_nowait(error)
            self._waiting = []
            raise

    def close(self) -> None:
        """Stop the batching loop and let the engine go (the model is unloaded); requests still waiting get an error.
        Safe from any thread: Serve's model multiplexing calls it (as `__del__`) from a worker thread."""
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            try:
                runner.get_loop().call_soon_threadsafe(runner.cancel)
            except RuntimeError:  # the loop is closed: nothing runs any more
                pass

    __del__ = close

    async def _decode(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(batch), [started - w.arrived for w in batch]))

        def deliver(i: int, item) -> None:
            loop.call_soon_threadsafe(batch[i].events.put_nowait, item)

        def decode() -> None:  # on a worker thread: generate() holds the GIL only between kernels
            try:
                for event in self.engine.stream([w.request for w in batch]):
                    deliver(event.index, event)
            except Exception as e:  # every request of the batch learns why
                for i in range(len(batch)):
                    deliver(i, e)
            for i in range(len(batch)):
                deliver(i, None)  # after a result it is never read; a cancelled row's reader has left

        await asyncio.to_thread(decode)
