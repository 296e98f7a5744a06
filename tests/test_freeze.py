"""Freeze policies per stage and per-component learning rates."""

import copy

import pytest
import torch

from llava_platform.config import LoraSpec
from llava_platform.model.freeze import apply_freeze, component_of, param_groups
from llava_platform.model.lora import apply_lora


def trainable_components(model) -> dict[str, set[bool]]:
    seen: dict[str, set[bool]] = {}
    for name, p in model.named_parameters():
        seen.setdefault(component_of(name), set()).add(p.requires_grad)
    return seen


@pytest.fixture
def model(tiny_bundle):
    return copy.deepcopy(tiny_bundle.model)


def test_stage_policies(model):
    apply_freeze(model, "pretrain")
    assert trainable_components(model) == {"vision_tower": {False}, "projector": {True}, "llm": {False}}
    summary = apply_freeze(model, "finetune")
    assert trainable_components(model) == {"vision_tower": {False}, "projector": {True}, "llm": {True}}
    assert summary["vision_tower"].startswith("0.00M/") and summary["llm"].split("/")[0] == summary["llm"].split("/")[1]
    apply_freeze(model, "pretrain", train_vision_tower=True)
    assert trainable_components(model) == {"vision_tower": {True, False}, "projector": {True}, "llm": {False}}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    # the tiny tower's features are its last layer's output: only the post-norm (of the pooled CLS) never trains
    frozen_tower = {n for n, p in model.named_parameters() if component_of(n) == "vision_tower" and not p.requires_grad}
    assert frozen_tower == {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"}
    assert "lm_head.weight" not in trained and "model.multi_modal_projector.linear_2.bias" in trained


def test_param_groups_lrs_and_decay(model):
    apply_freeze(model, "finetune", train_vision_tower=True)
    groups = param_groups(model, lr=2e-5, projector_lr=1e-4, vision_lr=2e-6, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert {n: g["lr"] for n, g in by_name.items()} == {
        "llm": 2e-5, "llm_no_decay": 2e-5, "projector": 1e-4, "projector_no_decay": 1e-4,
        "vision_tower": 2e-6, "vision_tower_no_decay": 2e-6,
    }  # fmt: skip
    assert by_name["llm"]["weight_decay"] == 0.1 and by_name["llm_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in by_name["llm_no_decay"]["params"])
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n_trainable


def test_pretrain_step_changes_only_the_projector(model, tiny_bundle):
    from conftest import make_image

    apply_freeze(model, "pretrain")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2), lr=1e-2)
    inputs = tiny_bundle.processor(text=["<image>a red circle"], images=[make_image(64, 64)], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    optimizer.step()
    changed = {component_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"projector"}


def test_lora_finetune_keeps_peft_choice(model):
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8))
    chosen = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    apply_freeze(peft_model, "finetune")
    assert {n for n, p in peft_model.named_parameters() if p.requires_grad} == chosen  # adapters + projector copy
    apply_freeze(peft_model, "finetune", train_vision_tower=True)
    now = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert now - chosen == {n for n in now if component_of(n) == "vision_tower"} and now - chosen
    assert not any("post_layernorm" in n for n in now)
    groups = {g["name"]: g for g in param_groups(peft_model, lr=2e-4, projector_lr=1e-3)}
    # adapters are matrices and Llama has no biases: no llm_no_decay group
    assert set(groups) == {"llm", "projector", "projector_no_decay", "vision_tower", "vision_tower_no_decay"}
    assert groups["projector"]["lr"] == 1e-3 and groups["llm"]["lr"] == 2e-4
    assert sum(len(g["params"]) for g in groups.values()) == len(now)
    with pytest.raises(ValueError, match="LoRA is for stage 2: remove model.lora from the pretrain spec"):
        apply_freeze(peft_model, "pretrain")
