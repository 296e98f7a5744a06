"""Original-LLaVA checkpoints convert to HF layout and compute what the original code computes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration

from conftest import make_image, plain_tokenizer, run_job
from llava_platform.config import ModelSpec
from llava_platform.model import build_model, save_checkpoint

PROMPT = "USER: <image>\nWhat is it? ASSISTANT:"


def original_projector(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(32, 64)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))


def write_original(root, projector="mlp2x_gelu", **config_overrides):
    """A tiny checkpoint in the original LLaVA layout: flat llava_llama config, model.mm_projector.* keys."""
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                              num_attention_heads=2, image_size=32, patch_size=8))  # fmt: skip
    vision.save_pretrained(root / "clip")
    tokenizer = plain_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4))  # fmt: skip
    proj = original_projector(projector)
    ckpt = root / "llava-original"
    ckpt.mkdir()
    state = dict(llm.state_dict()) | {f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / "model.safetensors"))
    config = llm.config.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": str(root / "clip"), "mm_projector_type": projector, "mm_hidden_size": 32,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tune_mm_mlp_adapter": False,
    } | config_overrides  # fmt: skip
    (ckpt / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(ckpt)
    return ckpt, vision.eval(), llm.eval(), proj.eval(), tokenizer


def original_logits(vision, llm, proj, tokenizer, pixel_values):
    """What llava/model/llava_arch.py computes: penultimate-layer patch features -> projector -> spliced at the image."""
    before = tokenizer("USER: ", return_tensors="pt")["input_ids"]  # with BOS, as tokenizer_image_token does
    after = tokenizer("\nWhat is it? ASSISTANT:", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        features = vision(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]  # drop CLS
        embed = llm.get_input_embeddings()
        inputs_embeds = torch.cat([embed(before), proj(features), embed(after)], dim=1)
        return llm(inputs_embeds=inputs_embeds).logits


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "linear"])
def test_conversion_matches_the_original_forward(tmp_path, projector):
    ckpt, vision, llm, proj, tokenizer = write_original(tmp_path, projector)
    bundle = build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))
    model = bundle.model.eval()
    assert bundle.spec.image_mode == "pad" and model.config.vision_feature_select_strategy == "default"
    # weights carried over
    first = proj if projector == "linear" else proj[0]
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, first.weight)
    if projector == "mlp2x_gelu":
        assert torch.equal(model.model.multi_modal_projector.linear_2.weight, proj[2].weight)
    assert torch.equal(model.lm_head.weight[: llm.config.vocab_size], llm.lm_head.weight)
    assert torch.equal(model.model.language_model.layers[1].self_attn.o_proj.weight, llm.model.layers[1].self_attn.o_proj.weight)

    inputs = bundle.processor(text=[PROMPT], images=[make_image(50, 30)], return_tensors="pt")
    assert int((inputs["input_ids"] == bundle.tokenizer.image_token_id).sum()) == 16
    expected = original_logits(vision, llm, proj, tokenizer, inputs["pixel_values"])
    with torch.no_grad():
        logits = model(**inputs).logits[..., : llm.config.vocab_size]
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-5)

    # saved, it loads in plain transformers and computes the same
    path = save_checkpoint(bundle, tmp_path / "hf")
    plain = LlavaForConditionalGeneration.from_pretrained(path).eval()
    plain_inputs = AutoProcessor.from_pretrained(path)(text=[PROMPT], images=[make_image(50, 30)], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**plain_inputs).logits[..., : llm.config.vocab_size], expected, atol=1e-5)


def test_anyres_original_swaps_pinpoints_and_keeps_image_newline(tmp_path):
    ckpt, *_ = write_original(tmp_path, image_aspect_ratio="anyres", image_grid_pinpoints=[[32, 64], [32, 96]],
                              mm_patch_merge_type="spatial_unpad")  # fmt: skip
    newline = torch.randn(64)
    state = load_file(str(ckpt / "model.safetensors"))
    save_file(state | {"model.image_newline": newline}, str(ckpt / "model.safetensors"))
    bundle = build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))
    assert type(bundle.model).__name__ == "LlavaNextForConditionalGeneration"
    assert bundle.model.config.image_grid_pinpoints == [[64, 32], [96, 32]]  # original (w, h) -> HF (h, w)
    assert torch.equal(bundle.model.model.image_newline, newline)


def test_conversion_errors_name_the_field(tmp_path):
    ckpt, *_ = write_original(tmp_path)
    with pytest.raises(ValueError, match=r"set model.template \(or --template\): vicuna_v1 for LLaVA-1.5"):
        build_model(ModelSpec(original_checkpoint=str(ckpt)))
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"mm_use_im_start_end": True}))
    with pytest.raises(ValueError, match=r"config.json: mm_use_im_start_end: true .* is not supported"):
        build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))
    (ckpt / "config.json").write_text(json.dumps(config | {"mm_vision_tower": str(tmp_path / "no-such-clip")}))
    with pytest.raises(ValueError, match=r"mm_vision_tower '.*no-such-clip' cannot be loaded .*point it at a local copy"):
        build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))


def test_convert_cli(tmp_path):
    ckpt, *_ = write_original(tmp_path)
    result = run_job("convert_checkpoint", "--original", str(ckpt), "--template", "vicuna_v1", "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert "image mode pad, template vicuna_v1" in result.stdout
    assert LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").config.projector_hidden_act == "gelu"
