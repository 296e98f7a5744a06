"""LoRA lands on the LLM's linear layers only; the merged model answers like the adapter model."""

import copy

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import lora_model, make_image
from llava_platform.config import LoraSpec, ModelSpec
from llava_platform.model import ModelBundle, build_model, load_checkpoint, save_checkpoint
from llava_platform.model.freeze import component_of
from llava_platform.model.lora import apply_lora, llm_linear_names, merge_lora


def test_adapters_only_on_llm_linears(tiny_bundle):
    model = lora_model(tiny_bundle)
    adapted = {n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith(".lora_A")}
    assert adapted and all(component_of(n + ".weight") == "llm" and "lm_head" not in n for n in adapted)
    layers = tiny_bundle.model.config.text_config.num_hidden_layers
    assert len(adapted) == 7 * layers == len(llm_linear_names(tiny_bundle.model))  # q k v o gate up down
    # trainable = exactly A and B of every adapter + the projector's trained copy (its original stays frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {f"{n}.lora_{ab}.default.weight" for n in adapted for ab in "AB"}
    projector = {f"base_model.model.model.multi_modal_projector.modules_to_save.default.{n}"
                 for n, _ in tiny_bundle.model.model.multi_modal_projector.named_parameters()}  # fmt: skip
    assert trainable == adapters | projector
    only_qv = lora_model(tiny_bundle, target_modules=["q_proj", "v_proj"])
    assert sum(n.endswith(".lora_A") for n, _ in only_qv.named_modules()) == 2 * layers


def test_projector_frozen_when_not_trained(tiny_bundle):
    model = lora_model(tiny_bundle, train_projector=False)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_on_llava_next_trains_image_newline_with_the_projector():
    next_model = build_model(ModelSpec(preset="tiny", image_mode="anyres")).model
    assert type(next_model).__name__ == "LlavaNextForConditionalGeneration"
    with_projector = apply_lora(copy.deepcopy(next_model), LoraSpec(r=4, alpha=8))
    assert with_projector.base_model.model.model.image_newline.requires_grad  # a Parameter: peft cannot wrap it
    without = apply_lora(next_model, LoraSpec(r=4, alpha=8, train_projector=False))
    assert not without.base_model.model.model.image_newline.requires_grad


def test_unknown_target_module_is_named(tiny_bundle):
    with pytest.raises(ValueError, match=r"model.lora.target_modules: \['qproj'\] are not linear layers of the LLM"):
        apply_lora(copy.deepcopy(tiny_bundle.model), LoraSpec(target_modules=["qproj"]))


def test_merged_model_equals_adapter_model(tiny_bundle, tmp_path):
    model = lora_model(tiny_bundle)
    inputs = tiny_bundle.processor(text=["USER: <image>\nWhat? ASSISTANT: red"], images=[make_image(40, 64)], return_tensors="pt")
    with torch.no_grad():
        adapter_logits = model(**inputs).logits
        merged = merge_lora(model)
        merged_logits = merged(**inputs).logits
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-5)
    assert not torch.allclose(merged_logits, tiny_bundle.model(**inputs).logits, atol=1e-3)  # the adapters mattered

    path = save_checkpoint(ModelBundle(merged, tiny_bundle.processor, tiny_bundle.template, tiny_bundle.spec), tmp_path / "merged")
    plain = LlavaForConditionalGeneration.from_pretrained(path)
    plain_inputs = AutoProcessor.from_pretrained(path)(text=["USER: <image>\nWhat? ASSISTANT: red"], images=[make_image(40, 64)], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**plain_inputs).logits, merged_logits, atol=1e-5)


def test_adapter_checkpoint_loads_with_its_template_or_the_one_given(tiny_checkpoint, tmp_path):
    """An adapter checkpoint (merge_lora: false) rebuilds its base; model.template at load replaces the saved one."""
    base = load_checkpoint(tiny_checkpoint)  # adapters are trained over a saved stage-1 model
    spec = base.spec.model_copy(update={"lora": LoraSpec(r=4, alpha=8, dropout=0.0)})
    path = save_checkpoint(ModelBundle(lora_model(base), base.processor, base.template, spec), tmp_path / "adapters")
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    saved = load_checkpoint(path)
    assert saved.template.name == saved.spec.template == "mistral_instruct"
    given = load_checkpoint(path, ModelSpec(checkpoint=str(path), template="vicuna_v1"))
    assert given.template.name == given.spec.template == "vicuna_v1"
    assert given.processor.apply_chat_template(messages, add_generation_prompt=True).endswith("USER: hi ASSISTANT:")
    inputs = base.processor(text=["[INST] <image>\nWhat? [/INST] red"], images=[make_image(40, 64)], return_tensors="pt")
    with torch.no_grad():  # the same adapters under either template, and they change the base's answer
        logits = saved.model(**inputs).logits
        assert torch.allclose(logits, given.model(**inputs).logits, atol=1e-6)
        assert not torch.allclose(logits, base.model(**inputs).logits, atol=1e-3)
