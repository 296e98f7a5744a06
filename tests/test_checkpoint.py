"""Checkpoints: HF layout + processor + spec, written atomically, answering the same in plain transformers."""

import os

import pytest
import torch
import yaml
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from conftest import make_image
from llava_platform.config import ModelSpec, SamplingSpec
from llava_platform.data.templates import Message
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.model import build_model, load_checkpoint, save_checkpoint
from llava_platform.model.checkpoint import SPEC_FILE, atomic_directory


def test_layout_and_resolved_spec(tiny_checkpoint):
    files = set(os.listdir(tiny_checkpoint))
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja", SPEC_FILE} <= files
    saved = yaml.safe_load((tiny_checkpoint / SPEC_FILE).read_text())
    assert saved["template"] == "mistral_instruct" and saved["image_mode"] == "pad" and saved["preset"] == "tiny"
    assert not [p for p in os.listdir(tiny_checkpoint.parent) if p.startswith(".")]  # no temp dirs left behind
    bundle = load_checkpoint(tiny_checkpoint)  # no other argument needed
    assert bundle.template.name == "mistral_instruct"
    # the tokenizer alone also carries the chat template
    from transformers import AutoTokenizer

    messages = [Message("user", "<image>\nWhat is it?")]
    prompt = AutoTokenizer.from_pretrained(tiny_checkpoint).apply_chat_template(
        [{"role": "user", "content": messages[0].content}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == bundle.template.render(messages, add_generation_prompt=True).text


def test_atomic_directory_never_leaves_a_half_written_final(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "model.safetensors").write_text("partial")
            raise RuntimeError("worker died mid-save")
    assert os.listdir(tmp_path) == []
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError
    assert (final / "v").read_text() == "1" and os.listdir(tmp_path) == ["ckpt"]  # the old one survives
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("3")
    assert (final / "v").read_text() == "3" and os.listdir(tmp_path) == ["ckpt"]


def test_checkpoint_without_spec_needs_a_template(tiny_checkpoint, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare)
    (bare / SPEC_FILE).unlink()
    with pytest.raises(ValueError, match=r"no conversation template.*set model.template \(e.g. vicuna_v1"):
        load_checkpoint(bare)
    assert load_checkpoint(bare, ModelSpec(checkpoint=str(bare), template="vicuna_v1")).template.name == "vicuna_v1"
    with pytest.raises(OSError):
        load_checkpoint(tmp_path / "missing", ModelSpec(checkpoint=str(tmp_path / "missing"), template="vicuna_v1"))


def plain_transformers_answer(path, cls, question, image, max_new_tokens):
    """What a user of plain transformers gets, with no llava_platform code at all."""
    processor = AutoProcessor.from_pretrained(path)
    model = cls.from_pretrained(path).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0][inputs["input_ids"].shape[1] :]
    return processor.decode(new, skip_special_tokens=True), len(new)


@pytest.mark.parametrize("image_mode, cls", [("pad", LlavaForConditionalGeneration), ("anyres", LlavaNextForConditionalGeneration)])
def test_engine_and_plain_transformers_answer_identically(image_mode, cls, tmp_path):
    torch.manual_seed(3)
    path = save_checkpoint(build_model(ModelSpec(preset="tiny", image_mode=image_mode)), tmp_path / image_mode)
    image = make_image(90, 50, seed=4)
    expected, n_tokens = plain_transformers_answer(path, cls, "What shape is at the top left?", image, 16)
    engine = InferenceEngine.from_checkpoint(str(path))
    request = GenerationRequest([Message("user", "<image>\nWhat shape is at the top left?")], [image])
    [result] = engine.generate([request], SamplingSpec(max_new_tokens=16))
    assert expected.strip() and result.text == expected.lstrip()
    assert result.completion_tokens == n_tokens


def test_foreign_checkpoint_image_mode_is_read_off_its_processor(tmp_path):
    import shutil

    from llava_platform.data.images import build_image_processor

    torch.manual_seed(0)
    bundle = build_model(ModelSpec(preset="tiny", image_mode="square"))
    path = save_checkpoint(bundle, tmp_path / "square")
    (path / SPEC_FILE).unlink()  # as if saved by plain transformers
    assert load_checkpoint(path, ModelSpec(checkpoint=str(path), template="vicuna_v1")).spec.image_mode == "square"
    shutil.rmtree(path)
    bundle.processor.image_processor = build_image_processor("pad", 64)
    path = save_checkpoint(bundle, tmp_path / "pad")
    (path / SPEC_FILE).unlink()
    assert load_checkpoint(path, ModelSpec(checkpoint=str(path), template="vicuna_v1")).spec.image_mode == "pad"


def test_random_init_refuses_quantization():
    with pytest.raises(ValueError, match="model.quantization '4bit' applies when loading weights"):
        build_model(ModelSpec(preset="tiny", quantization="4bit"))


def test_a_template_given_at_load_replaces_the_saved_one_everywhere(tiny_checkpoint, tmp_path):
    """model.template over a checkpoint (e.g. a finetune's data.template): the processor renders it, and a save keeps it."""
    bundle = load_checkpoint(tiny_checkpoint, ModelSpec(checkpoint=str(tiny_checkpoint), template="vicuna_v1"))
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert bundle.processor.apply_chat_template(messages, add_generation_prompt=True).endswith("USER: hi ASSISTANT:")
    again = load_checkpoint(save_checkpoint(bundle, tmp_path / "resaved"))
    assert again.template.name == "vicuna_v1"
    assert again.processor.apply_chat_template(messages, add_generation_prompt=True).endswith("USER: hi ASSISTANT:")
