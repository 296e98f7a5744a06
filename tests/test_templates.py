"""Templates render the original LLaVA prompt strings; labels train exactly the assistant replies."""

import pytest

from llava_platform.data.encode import IGNORE_INDEX, Encoded, encode_rendered, expand_image_tokens
from llava_platform.data.templates import TEMPLATES, Message, TemplateError, get_template, message_text
from llava_platform.model.tokenizer import build_tiny_tokenizer

VICUNA_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA2_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
TWO_TURNS = [
    Message("user", "<image>\nWhat is shown?"),
    Message("assistant", "A red circle."),
    Message("user", "How many?"),
    Message("assistant", "One."),
]

# Strings as llava/conversation.py's get_prompt() (and preprocess_plain) produce them.
EXPECTED = {
    "vicuna_v1": f"{VICUNA_SYS} USER: <image>\nWhat is shown? ASSISTANT: A red circle.</s>USER: How many? ASSISTANT: One.</s>",
    "llava_llama_2": f"[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n<image>\nWhat is shown? [/INST] A red circle. </s><s>[INST] How many? [/INST] One. </s>",
    "mistral_instruct": "[INST] <image>\nWhat is shown? [/INST] A red circle. </s>[INST] How many? [/INST] One. </s>",
    "chatml_direct": (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is shown?<|im_end|>"
        "<|im_start|>assistant\nA red circle.<|im_end|><|im_start|>user\nHow many?<|im_end|><|im_start|>assistant\nOne.<|im_end|>"
    ),
}
EXPECTED_GENERATION = {
    "vicuna_v1": f"{VICUNA_SYS} USER: <image>\nWhat is shown? ASSISTANT:",
    "llava_llama_2": f"[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n<image>\nWhat is shown? [/INST]",
    "mistral_instruct": "[INST] <image>\nWhat is shown? [/INST]",
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is shown?<|im_end|><|im_start|>assistant\n",
    "plain": "<image>",
}
TRAINED = {
    "vicuna_v1": [" A red circle.</s>", " One.</s>"],
    "llava_llama_2": [" A red circle. </s>", " One. </s>"],
    "mistral_instruct": [" A red circle. </s>", " One. </s>"],
    "chatml_direct": ["A red circle.<|im_end|>", "One.<|im_end|>"],
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_render_matches_original_llava(name):
    rendered = get_template(name).render(TWO_TURNS)
    assert rendered.text == EXPECTED[name]
    assert [rendered.text[a:b] for a, b in rendered.trained_spans] == TRAINED[name]
    assert get_template(name).render(TWO_TURNS[:1], add_generation_prompt=True).text == EXPECTED_GENERATION[name]


def test_plain_keeps_only_image_and_caption():
    plain = get_template("plain")
    rendered = plain.render([Message("user", "<image>\nDescribe it."), Message("assistant", "a red circle")])
    assert rendered.text == "<image>a red circle\n"
    assert [rendered.text[a:b] for a, b in rendered.trained_spans] == ["a red circle\n"]
    assert plain.render([Message("user", "<image>\n")], add_generation_prompt=True).text == EXPECTED_GENERATION["plain"]
    with pytest.raises(TemplateError, match="exactly one user turn"):
        plain.render(TWO_TURNS)


def test_system_message_replaces_default_system():
    msgs = [Message("system", "Be brief."), *TWO_TURNS[:2]]
    assert get_template("vicuna_v1").render(msgs).text.startswith("Be brief. USER: <image>\nWhat is shown?")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_jinja_chat_template_equals_python_render(name, system, tokenizer):
    template = get_template(name)
    turns = TWO_TURNS[:2] if name == "plain" else TWO_TURNS
    msgs = ([Message("system", system)] if system else []) + turns
    tokenizer.chat_template = template.chat_template()
    as_dicts = [{"role": m.role, "content": m.content} for m in msgs]
    assert tokenizer.apply_chat_template(as_dicts, tokenize=False) == template.render(msgs).text
    gen = tokenizer.apply_chat_template(as_dicts[:-1], tokenize=False, add_generation_prompt=True)
    assert gen == template.render(msgs[:-1], add_generation_prompt=True).text
    # HF-style content parts: images become "<image>\n" before the text
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    expected = template.render([Message("user", message_text(parts[0]["content"]))], add_generation_prompt=True).text
    assert tokenizer.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == expected


def test_role_order_is_checked():
    vicuna = get_template("vicuna_v1")
    with pytest.raises(TemplateError, match="turn 0 is from 'assistant', expected 'user'"):
        vicuna.render([Message("assistant", "hi"), Message("user", "x")])
    with pytest.raises(TemplateError, match="turn 2 is from 'assistant'"):
        vicuna.render([Message("user", "a"), Message("assistant", "b"), Message("assistant", "c")])
    with pytest.raises(TemplateError, match="must end with an assistant turn"):
        vicuna.render(TWO_TURNS[:3])
    with pytest.raises(TemplateError, match="must end with a user turn"):
        vicuna.render(TWO_TURNS[:2], add_generation_prompt=True)
    with pytest.raises(TemplateError, match=r"unknown conversation template 'vicuna'; did you mean 'vicuna_v1'\?"):
        get_template("vicuna")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_labels_train_exactly_the_assistant_replies(name, tokenizer):
    encoded = encode_rendered(tokenizer, get_template(name).render(TWO_TURNS))
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.labels[0] == IGNORE_INDEX
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "".join(TRAINED[name])
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(encoded.input_ids, encoded.labels))
    # the prompt's tokens are a prefix of the full sequence: what is trained is what generation continues
    prompt = tokenizer(get_template(name).render(TWO_TURNS[:1], add_generation_prompt=True).text)["input_ids"]
    assert encoded.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in encoded.labels[: len(prompt)])


def test_image_tokens_expand_and_are_never_trained(tokenizer):
    encoded = encode_rendered(tokenizer, get_template("vicuna_v1").render(TWO_TURNS))
    image_id = tokenizer.image_token_id
    expanded = expand_image_tokens(encoded, image_id, [64])
    assert expanded.input_ids.count(image_id) == 64
    assert len(expanded.input_ids) == len(encoded.input_ids) + 63
    assert all(label == IGNORE_INDEX for t, label in zip(expanded.input_ids, expanded.labels) if t == image_id)
    assert expanded.num_trained == encoded.num_trained
    with pytest.raises(ValueError, match="the text has 1 <image> placeholders but the sample has 2 images"):
        expand_image_tokens(encoded, image_id, [64, 64])
    assert Encoded([1, 2], [IGNORE_INDEX, IGNORE_INDEX]).num_trained == 0
