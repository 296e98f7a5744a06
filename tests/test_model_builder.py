"""Building models: presets, components (CLIP / SigLIP + any LLM), projector types, random-init shapes."""

import pytest
import torch
from transformers import (
    CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel,
)  # fmt: skip

from conftest import make_image, plain_tokenizer
from llava_platform.config import ModelSpec
from llava_platform.model import build_model, load_checkpoint, save_checkpoint
from llava_platform.model.projector import MlpProjector


def image_tokens(bundle, image) -> int:
    ids = bundle.processor(text=["<image>"], images=[image], return_tensors="pt")["input_ids"][0]
    return int((ids == bundle.tokenizer.image_token_id).sum())


def test_tiny_preset(tiny_bundle):
    model, config = tiny_bundle.model, tiny_bundle.model.config
    assert isinstance(model, LlavaForConditionalGeneration)
    assert config.vision_feature_layer == -1 and config.vision_feature_select_strategy == "default"
    assert image_tokens(tiny_bundle, make_image(90, 50)) == 36  # (96 / 16)^2 patches, CLS dropped
    vocab = model.get_input_embeddings().num_embeddings
    assert vocab % 64 == 0 and vocab >= len(tiny_bundle.tokenizer)
    assert tiny_bundle.spec.template == "mistral_instruct" and tiny_bundle.spec.image_mode == "pad"
    inputs = tiny_bundle.processor(text=["<image>a red circle"], images=[make_image(64, 64)], return_tensors="pt")
    assert torch.isfinite(model(**inputs, labels=inputs["input_ids"]).loss)


def test_tiny_anyres_builds_llava_next():
    bundle = build_model(ModelSpec(preset="tiny", image_mode="anyres"))
    assert isinstance(bundle.model, LlavaNextForConditionalGeneration)
    assert bundle.model.config.image_grid_pinpoints == [[96, 192], [192, 96], [192, 192], [288, 96], [96, 288]]  # in tiles of 96
    image = make_image(120, 60)
    inputs = bundle.processor(text=["<image>wide"], images=[image], return_tensors="pt")
    assert inputs["image_sizes"].tolist() == [[60, 120]] and image_tokens(bundle, image) > 36  # base view + tiles
    with torch.no_grad():
        assert torch.isfinite(bundle.model(**inputs).logits).all()


@pytest.mark.parametrize("preset, billions, cls", [
    ("llava-1.5-7b", 7.06, LlavaForConditionalGeneration),
    ("llava-1.5-13b", 13.35, LlavaForConditionalGeneration),
    ("llava-next-7b", 7.06, LlavaNextForConditionalGeneration),
])  # fmt: skip
def test_random_init_presets_have_the_published_shapes(preset, billions, cls):
    bundle = build_model(ModelSpec(preset=preset, init="random", dtype="bfloat16"), device="meta")  # shapes only
    assert isinstance(bundle.model, cls)
    assert sum(p.numel() for p in bundle.model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert bundle.model.config.text_config.vocab_size == 32000 and bundle.model.config.vision_config.image_size == 336


def test_linear_and_deep_projectors(tmp_path):
    linear = build_model(ModelSpec(preset="tiny", image_mode="pad"))  # preset projector is mlp2x_gelu
    assert linear.model.config.projector_hidden_act == "gelu"
    from llava_platform.model.projector import install_projector

    linear.model.config.projector_hidden_act = "linear"
    install_projector(linear.model, "linear")
    proj = linear.model.model.multi_modal_projector
    assert torch.equal(proj.linear_2.weight, torch.eye(proj.linear_2.out_features))

    torch.manual_seed(0)
    deep = build_model(ModelSpec(preset="tiny"))
    install_projector(deep.model, "mlp3x_gelu")
    assert isinstance(deep.model.model.multi_modal_projector, MlpProjector) and deep.model.config.projector_type == "mlp3x_gelu"
    inputs = deep.processor(text=["<image>x"], images=[make_image(64, 64)], return_tensors="pt")
    with torch.no_grad():
        before = deep.model(**inputs).logits
        reloaded = load_checkpoint(save_checkpoint(deep, tmp_path / "deep"))
        assert isinstance(reloaded.model.model.multi_modal_projector, MlpProjector)
        assert torch.allclose(reloaded.model(**inputs).logits, before, atol=1e-6)


def small_llm_dir(tmp_path):
    """A tiny Llama + its tokenizer, saved as a hub LLM would be."""
    tokenizer = plain_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    return tmp_path / "llm", llm


def test_from_components_clip(tmp_path):
    llm_dir, llm = small_llm_dir(tmp_path)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                              image_size=32, patch_size=8))  # fmt: skip
    vision.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.5]).save_pretrained(tmp_path / "clip")
    spec = ModelSpec(components={"vision_tower": str(tmp_path / "clip"), "llm": str(llm_dir), "projector": "mlp2x_gelu"}, template="vicuna_v1")
    bundle = build_model(spec)
    model = bundle.model
    assert bundle.tokenizer.image_token_id == model.config.image_token_index and bundle.tokenizer.pad_token == "<pad>"
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(bundle.tokenizer) == llm.config.vocab_size + 2
    assert torch.equal(emb[: llm.config.vocab_size], llm.get_input_embeddings().weight)
    assert torch.equal(model.model.language_model.layers[1].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(model.model.vision_tower.embeddings.patch_embedding.weight,
                       vision.embeddings.patch_embedding.weight)  # fmt: skip
    assert list(bundle.processor.image_processor.image_mean) == [0.1, 0.2, 0.3]  # the tower's own normalisation
    assert image_tokens(bundle, make_image(50, 40)) == 16 and model.config.vision_feature_select_strategy == "default"
    inputs = bundle.processor(text=["<image>hello"], images=[make_image(32, 32)], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_from_components_siglip_keeps_every_patch(tmp_path):
    llm_dir, _ = small_llm_dir(tmp_path)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=32, patch_size=8)).save_pretrained(tmp_path / "siglip")  # fmt: skip
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    bundle = build_model(ModelSpec(components={"vision_tower": str(tmp_path / "siglip"), "llm": str(llm_dir)}, image_mode="square", template="chatml_direct"))
    assert bundle.model.config.vision_feature_select_strategy == "full"  # no CLS token to drop
    assert image_tokens(bundle, make_image(32, 32)) == 16
    assert list(bundle.processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    inputs = bundle.processor(text=["<image>hello"], images=[make_image(32, 32)], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(bundle.model(**inputs).logits).all()


def test_bad_names_fail_before_loading():
    with pytest.raises(ValueError, match=r"unknown model preset 'llava-1.5-7'; did you mean 'llava-1.5-7b'\?"):
        build_model(ModelSpec(preset="llava-1.5-7"))
    with pytest.raises(ValueError, match=r"unknown conversation template 'vicunna'"):
        build_model(ModelSpec(preset="tiny", template="vicunna"))
    with pytest.raises(ValueError, match=r"model.template: required with model.components .* it is never guessed"):
        build_model(ModelSpec(components={"vision_tower": "v", "llm": "l"}))


def test_full_strategy_keeps_cls_in_the_count():
    bundle = build_model(ModelSpec(preset="tiny", vision_feature_select_strategy="full"))
    assert bundle.model.config.image_seq_length == 37 == image_tokens(bundle, make_image(64, 64))  # 6 x 6 patches + CLS
    inputs = bundle.processor(text=["<image>x"], images=[make_image(64, 64)], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(bundle.model(**inputs).logits).all()
