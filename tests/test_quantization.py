"""4-bit / 8-bit loading (bitsandbytes): the LLM is quantized, the vision tower, projector and lm_head are not.

bitsandbytes 0.50 has CPU kernels for both (it logs that the optional `kernels` package is missing
and falls back to its own), so these run without a GPU; the weights really are packed (uint8 / int8).
"""

import pytest
import torch
from torch import nn

from conftest import make_image
from llava_platform.config import LoraSpec, ModelSpec
from llava_platform.model import load_checkpoint
from llava_platform.model.lora import apply_lora

bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("bits, layer, storage, min_cosine", [
    ("4bit", "Linear4bit", torch.uint8, 0.95),  # nf4: two weights per byte
    ("8bit", "Linear8bitLt", torch.int8, 0.99),
])  # fmt: skip
def test_quantized_load(tiny_bundle, tiny_checkpoint, bits, layer, storage, min_cosine):
    bundle = load_checkpoint(tiny_checkpoint, ModelSpec(checkpoint=str(tiny_checkpoint), quantization=bits))
    kinds = {}
    for name, module in bundle.model.named_modules():
        if isinstance(module, nn.Linear):
            part = "lm_head" if name == "lm_head" else name.split(".")[1]
            kinds.setdefault(part, set()).add(type(module).__name__)
    assert kinds == {"vision_tower": {"Linear"}, "multi_modal_projector": {"Linear"}, "language_model": {layer}, "lm_head": {"Linear"}}
    assert bundle.model.model.language_model.layers[0].mlp.down_proj.weight.dtype == storage
    inputs = bundle.processor(text=["<image>hello, what colour is it?"], images=[make_image(64, 64)], return_tensors="pt")
    with torch.no_grad():
        logits = bundle.model(**inputs).logits
        reference = tiny_bundle.model(**inputs).logits
    assert torch.isfinite(logits).all()
    # the same function, up to quantization error (measured: cosine 0.98 for 4bit, 0.9998 for 8bit)
    assert torch.nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0) > min_cosine


def test_qlora_wraps_the_4bit_llm(tiny_checkpoint):
    bundle = load_checkpoint(tiny_checkpoint, ModelSpec(checkpoint=str(tiny_checkpoint), quantization="4bit"))
    model = apply_lora(bundle.model, LoraSpec(r=4, alpha=8))
    adapted = [n for n, m in model.named_modules() if n.endswith(".lora_A")]
    assert len(adapted) == 7 * bundle.model.config.text_config.num_hidden_layers
    inputs = bundle.processor(text=["<image>a red circle"], images=[make_image(64, 64)], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
