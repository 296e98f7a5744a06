"""FLOP accounting: 6N per token when everything trains, less when parts are frozen, the LM head per
predicted token only; a 4-bit packed weight counts as the weight it stands for (a ZeRO-3 partition
too: tests/test_train_jobs.py, zero_run)."""

import copy

import pytest

from llava_platform.config import LoraSpec, ModelSpec
from llava_platform.model import load_checkpoint
from llava_platform.model.freeze import apply_freeze
from llava_platform.model.lora import apply_lora
from llava_platform.train.flops import StepShape, mfu, training_flops

SHAPE = StepShape(sequences=4, text_tokens=4 * 100, seq_len=100, images=4, patches_per_image=65, predicted_tokens=4 * 10)


def counts(model):
    """Weights per component; "llm" without its input embedding and LM head (untied in the tiny preset)."""
    vocab, hidden = model.config.text_config.vocab_size, model.config.text_config.hidden_size
    by = {"vision": 0, "proj": 0, "llm": -2 * vocab * hidden, "head": vocab * hidden}
    for name, p in model.named_parameters():
        key = "vision" if "vision_tower" in name else "proj" if "multi_modal_projector" in name else "llm"
        by[key] += p.numel()
    return by


def test_full_training_is_six_n_plus_attention(tiny_bundle):
    model = copy.deepcopy(tiny_bundle.model)
    apply_freeze(model, "finetune", train_vision_tower=True)
    n = counts(model)
    cfg = model.config
    vision_tokens = 4 * 65
    # the tower's post-norm never reaches the image features: frozen (model.freeze), gradients pass it, 4N
    idle = sum(p.numel() for name, p in model.named_parameters() if "vision_tower" in name and not p.requires_grad)
    assert idle == 2 * cfg.vision_config.hidden_size
    expected = 6 * ((n["vision"] - idle) * vision_tokens + 2 * cfg.vision_config.num_hidden_layers * cfg.vision_config.hidden_size * 65 * vision_tokens)
    expected += 4 * idle * vision_tokens
    expected += 6 * n["proj"] * vision_tokens
    expected += 6 * (n["llm"] * 400 + 2 * cfg.text_config.num_hidden_layers * cfg.text_config.hidden_size * 100 * 400)
    expected += 6 * n["head"] * 40  # only the 40 predicted positions go through the LM head
    assert training_flops(model, SHAPE) == pytest.approx(expected)


def test_frozen_parts_cost_less(tiny_bundle):
    model = copy.deepcopy(tiny_bundle.model)
    apply_freeze(model, "finetune", train_vision_tower=True)
    everything = training_flops(model, SHAPE)
    apply_freeze(model, "finetune")
    stage2 = training_flops(model, SHAPE)
    apply_freeze(model, "pretrain")
    stage1 = training_flops(model, SHAPE)
    assert everything > stage2 > stage1
    n = counts(model)
    # stage 2 drops exactly the tower's backward (4N per vision token, attention included; its idle post-norm: 2N)
    cfg = model.config
    vision_fwd = n["vision"] * 260 + 2 * cfg.vision_config.num_hidden_layers * cfg.vision_config.hidden_size * 65 * 260
    idle = 2 * cfg.vision_config.hidden_size
    assert everything - stage2 == pytest.approx(4 * vision_fwd - 2 * idle * 260)
    # stage 1: the frozen LLM and its head still back-propagate activations to the projector (4N, not 6N)
    llm = n["llm"] * 400 + 2 * cfg.text_config.num_hidden_layers * cfg.text_config.hidden_size * 100 * 400
    assert stage2 - stage1 == pytest.approx(2 * llm + 2 * n["head"] * 40)


def test_lora_base_passes_gradients_at_4n(tiny_bundle):
    stage2 = copy.deepcopy(tiny_bundle.model)
    apply_freeze(stage2, "finetune")
    lora = apply_lora(copy.deepcopy(tiny_bundle.model), LoraSpec(r=4, alpha=8))
    apply_freeze(lora, "finetune", train_llm=False)
    adapters = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    n = counts(stage2)
    frozen = n["llm"] * 400 + n["head"] * 40
    # the frozen base weights lose their weight gradients (2N of 6N); the adapters add 6N of their own
    assert training_flops(stage2, SHAPE) - training_flops(lora, SHAPE) == pytest.approx(2 * frozen - 6 * adapters * 400)


def test_4bit_weights_count_in_full(tiny_bundle, tiny_checkpoint):
    pytest.importorskip("bitsandbytes")
    quantized = load_checkpoint(tiny_checkpoint, ModelSpec(checkpoint=str(tiny_checkpoint), quantization="4bit")).model
    reference = copy.deepcopy(tiny_bundle.model)
    for model in (quantized, reference):
        apply_freeze(model, "pretrain")
    assert quantized.model.language_model.layers[0].mlp.up_proj.weight.numel() < reference.model.language_model.layers[0].mlp.up_proj.weight.numel()
    assert training_flops(quantized, SHAPE) == pytest.approx(training_flops(reference, SHAPE))


def test_mfu():
    assert mfu(989e12 * 0.4 * 8, seconds=1.0, devices=8, peak_tflops=989.0) == pytest.approx(0.4)
