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


def with_sampling(request, **sampling):
    return GenerationRequest(request.messages, request.images, sampling=SamplingSpec(**sampling))


def test_each_row_keeps_its_own_sampling_in_a_batch(engine):
    """Greedy, seeded sampling at two temperatures, and different limits in one batch: each row's text is what
    it gets alone."""
    rows = [
        with_sampling(REQUESTS[0], max_new_tokens=10),
        with_sampling(REQUESTS[1], temperature=1.5, seed=3, max_new_tokens=12),
        with_sampling(REQUESTS[2], temperature=0.7, top_p=0.5, seed=4, max_new_tokens=5),
        with_sampling(REQUESTS[3], max_new_tokens=3),
    ]
    batched = engine.generate(rows)
    alone = [engine.generate([r])[0] for r in rows]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]
    assert batched[3].completion_tokens == 3 and batched[2].completion_tokens <= 5
    # the seeded row does not follow the greedy answer
    [greedy] = engine.generate([with_sampling(REQUESTS[1], max_new_tokens=12)])
    assert batched[1].text != greedy.text


def test_a_row_stops_on_its_own_stop_string_only(engine):
    [free] = engine.generate(REQUESTS[:1], SamplingSpec(max_new_tokens=12))
    text = free.text
    k = next(k for k in range(1, len(text) - 1) if text[k : k + 2] not in text[: k + 1])
    stopped, other = engine.generate([with_sampling(REQUESTS[0], max_new_tokens=12, stop=[text[k : k + 2]]),
                                      with_sampling(REQUESTS[0], max_new_tokens=12)])  # fmt: skip
    assert stopped.text == text[:k] and stopped.finish_reason == "stop"
    assert other.text == text and other.finish_reason == "length"
    # generate() itself stops the row (not only the text cut): alone with a huge limit, it ends at once
    done = engine.generate([with_sampling(REQUESTS[0], max_new_tokens=100_000, stop=[text[k : k + 2]])])[0]
    assert done.text == text[:k] and done.completion_tokens <= 12


def test_a_short_row_returns_before_the_long_one_ends(engine):
    rows = [with_sampling(REQUESTS[0], max_new_tokens=40), with_sampling(REQUESTS[1], max_new_tokens=2)]
    order = [(e.index, e.result is not None) for e in engine.stream(rows)]
    short_done = order.index((1, True))
    assert (0, True) in order[short_done + 1 :]  # the long row finished after
    assert sum(1 for i, _ in order[short_done + 1 :] if i == 0) >= 10  # and kept streaming meanwhile


def test_cancelling_one_row_stops_it_alone(engine):
    import threading

    cancel = threading.Event()  # the cancelled row could decode 100k tokens: the stream ends only if it stops
    rows = [with_sampling(REQUESTS[0], max_new_tokens=30), with_sampling(REQUESTS[1], max_new_tokens=100_000)]
    rows[1].cancel = cancel
    [expected] = engine.generate(rows[:1])
    seen = {0: 0, 1: 0}
    results = {}
    for event in engine.stream(rows):
        seen[event.index] += 1
        if event.index == 1 and seen[1] == 2:
            cancel.set()
        if event.result is not None:
            results[event.index] = event.result
    assert seen[1] == 2 and 1 not in results  # no event after the cancel, and no result
    assert results[0].text == expected.text


@pytest.mark.parametrize("image_mode", ["pad", "anyres"])
def test_requests_encoded_one_by_one_batch_as_the_processor_batches_them(image_mode):
    """prepare() pads requests the engine encoded one at a time (the Serve replica encodes each request alone, to
    check its length); the batch equals the processor's own batched call, anyres patch counts differing included."""
    import torch

    from llava_platform.config import ModelSpec
    from llava_platform.model import build_model

    torch.manual_seed(0)
    engine = InferenceEngine(build_model(ModelSpec(preset="tiny", image_mode=image_mode)))
    requests = [ask("Wide?", make_image(200, 40, 1)), ask("No image?"), ask("Two?", make_image(40, 120, 2), make_image(64, 64, 3))]
    ours = engine.prepare(requests)
    prompts = [engine.template.render(r.messages, add_generation_prompt=True).text for r in requests]
    theirs = engine.processor(text=prompts, images=[i for r in requests for i in r.images], padding=True,
                              padding_side="left", return_tensors="pt")  # fmt: skip
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key
    assert all(r.encoded is None for r in requests)  # used once, not kept
    if image_mode == "anyres":  # patch counts differ from request to request: padded to match
        assert len({tuple(engine.encode(r)["pixel_values"].shape) for r in requests if r.images}) > 1
    batched = engine.generate(requests, SamplingSpec(max_new_tokens=6))
    assert [r.text for r in batched] == [engine.generate([r], SamplingSpec(max_new_tokens=6))[0].text for r in requests]
