"""Dynamic batching: concurrent requests share batches, keep their own answers, and leave alone."""

import asyncio

import pytest

from conftest import make_image
from llava_platform.config import SamplingSpec
from llava_platform.data.templates import Message
from llava_platform.inference.batcher import DynamicBatcher
from llava_platform.inference.engine import GenerationRequest, InferenceEngine


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return InferenceEngine(tiny_bundle)


def request(i: int, **sampling) -> GenerationRequest:
    question = ["What color is it?", "How many shapes are there?", "Where is the square?"][i % 3]
    return GenerationRequest([Message("user", "<image>\n" + question)], [make_image(40 + i, 40, seed=i)],
                             sampling=SamplingSpec(max_new_tokens=6 + i % 5, **sampling))  # fmt: skip


async def collect(batcher, req) -> str:
    text = ""
    async for event in batcher.stream(req):
        text += event.delta
        if event.result is not None:
            assert event.result.text == text
    return text


def test_concurrent_requests_share_batches_and_keep_their_answers(engine):
    sizes = []
    batcher = DynamicBatcher(engine, max_batch_size=4, max_wait_s=0.05, on_batch=lambda s: sizes.append(s.size))

    async def main():
        return await asyncio.gather(*(collect(batcher, request(i, seed=i, temperature=0.8 * (i % 2))) for i in range(10)))

    answers = asyncio.run(main())
    alone = [engine.generate([request(i, seed=i, temperature=0.8 * (i % 2))])[0].text for i in range(10)]
    assert answers == alone
    assert sizes == [4, 4, 2]  # all 10 wait before the first batch starts


def test_a_caller_that_leaves_stops_its_row_alone(engine):
    batcher = DynamicBatcher(engine, max_batch_size=2, max_wait_s=0.05)
    long = GenerationRequest(request(0).messages, request(0).images, sampling=SamplingSpec(max_new_tokens=10_000))

    async def leave_after_first_event():
        stream = batcher.stream(long)
        await stream.__anext__()
        await stream.aclose()  # what a cancelled Serve call does to it
        assert long.cancel.is_set()

    async def main():
        _, answer = await asyncio.gather(leave_after_first_event(), collect(batcher, request(1)))
        for _ in range(100):  # the batch ends (the device is free) soon: the long row did not decode its 10k tokens
            if not batcher.device_lock.locked():
                break
            await asyncio.sleep(0.05)
        assert not batcher.device_lock.locked()
        return answer

    answer = asyncio.run(asyncio.wait_for(main(), 60))
    assert answer == engine.generate([request(1)])[0].text


def test_a_failed_batch_reaches_each_caller_and_the_next_batch_runs(engine):
    batcher = DynamicBatcher(engine, max_batch_size=2, max_wait_s=0.05)
    bad = GenerationRequest([Message("user", "no placeholder")], [make_image(8, 8)])  # 0 placeholders, 1 image

    async def main():
        first = await asyncio.gather(collect(batcher, bad), collect(batcher, request(2)), return_exceptions=True)
        return first, await collect(batcher, request(2))

    (bad_error, good_error), after = asyncio.run(main())
    assert "placeholders" in str(bad_error) and "placeholders" in str(good_error)
    assert after == engine.generate([request(2)])[0].text
