"""The inference engine: batched = one by one, multi-image prompts, streaming, stops, seeds, token counts."""

import pytest

from conftest import make_image
from llava_platform.config import SamplingSpec
from llava_platform.data.templates import Message, TemplateError
from llava_platform.inference.engine import GenerationRequest, InferenceEngine


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return InferenceEngine(tiny_bundle)


def ask(question, *images):
    placeholders = "<image>\n" * len(images)
    return GenerationRequest([Message("user", placeholders + question)], list(images))


REQUESTS = [
    ask("What color is the circle?", make_image(64, 64, 1)),
    ask("How many objects are there in this rather long question about the picture?", make_image(30, 80, 2)),
    ask("Same or different?", make_image(64, 64, 3), make_image(50, 20, 4)),  # two images in one prompt
    ask("No image at all?"),
]


def test_batched_generation_equals_one_by_one(engine):
    sampling = SamplingSpec(max_new_tokens=10)
    batched = engine.generate(REQUESTS, sampling)
    alone = [engine.generate([r], sampling)[0] for r in REQUESTS]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(r.text for r in batched)
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in alone]
    # 36 image tokens per image on top of the text
    assert batched[2].prompt_tokens - batched[0].prompt_tokens > 36


def test_token_counts_and_length_finish(engine):
    [result] = engine.generate(REQUESTS[:1], SamplingSpec(max_new_tokens=7))
    assert result.finish_reason == "length" and result.completion_tokens == 7
    prompt = engine.prepare(REQUESTS[:1])["input_ids"]
    assert result.prompt_tokens == prompt.shape[1]


def test_stop_string_cuts_text_and_finishes(engine):
    [free] = engine.generate(REQUESTS[:1], SamplingSpec(max_new_tokens=12))
    text = free.text
    # the first position (past 0) where a 2-character string occurs for the first time
    k = next(k for k in range(1, len(text) - 1) if text[k : k + 2] not in text[: k + 1])
    [stopped] = engine.generate(REQUESTS[:1], SamplingSpec(max_new_tokens=12, stop=[text[k : k + 2]]))
    assert stopped.finish_reason == "stop" and free.finish_reason == "length"
    assert stopped.text == text[:k]
    assert stopped.completion_tokens < 12


def test_streaming_deltas_add_up_to_the_result(engine):
    sampling = SamplingSpec(max_new_tokens=9)
    deltas: dict[int, str] = {}
    finals = {}
    for event in engine.stream(REQUESTS, sampling):
        deltas[event.index] = deltas.get(event.index, "") + event.delta
        if event.result is not None:
            finals[event.index] = event.result
    assert sorted(finals) == [0, 1, 2, 3]
    assert all(deltas[i] == finals[i].text for i in finals)
    assert [r.text for r in engine.generate(REQUESTS, sampling)] == [finals[i].text for i in range(4)]


def test_sampling_seed_is_reproducible(engine):
    hot = dict(temperature=1.5, top_p=1.0, max_new_tokens=12)
    first = engine.generate(REQUESTS[:2], SamplingSpec(seed=7, **hot))
    again = engine.generate(REQUESTS[:2], SamplingSpec(seed=7, **hot))
    other = engine.generate(REQUESTS[:2], SamplingSpec(seed=8, **hot))
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.text for r in first] != [r.text for r in other]


def test_image_count_must_match_placeholders(engine):
    bad = GenerationRequest([Message("user", "<image>\nWhat?")], [make_image(8, 8), make_image(8, 8)])
    with pytest.raises(TemplateError, match="request 0: the messages have 1 <image> placeholders but 2 images were given"):
        engine.generate([bad])
    with pytest.raises(TemplateError, match="must end with a user turn"):
        engine.generate([GenerationRequest([Message("user", "hi"), Message("assistant", "yo")])])


def test_closing_a_stream_stops_generation(engine):
    import threading

    before = threading.active_count()
    stream = engine.stream(REQUESTS[:1], SamplingSpec(max_new_tokens=100_000))
    first = next(stream)
    assert first.index == 0 and first.delta
    stream.close()  # returns once generate() has stopped: the cancel criterion ends it at the next step
    assert threading.active_count() == before
