"""Original-LLaVA checkpoints convert to HF layout and compute what the original code computes.

The references below re-state, for a tiny model, what haotian-liu/LLaVA does at inference:
mm_utils.process_images (pad: expand2square + CLIP preprocessing; anyres: (width, height) pinpoints)
and llava_arch.prepare_inputs_labels_for_multimodal (penultimate-layer patch features -> mm_projector
-> spliced where IMAGE_TOKEN_INDEX=-200 sits; anyres: base tile + unpadded grid + image_newline per row).
"""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoProcessor, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM,
    LlavaForConditionalGeneration,
)  # fmt: skip

from conftest import make_image, plain_tokenizer, run_job
from llava_platform.config import ModelSpec
from llava_platform.model import build_model, save_checkpoint

PROMPT = "USER: <image>\nWhat is it? ASSISTANT:"
IMAGE_SIZE, PATCH = 32, 8  # 4x4 patches per tile


def original_projector(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(32, 64)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))


def save_bin_shards(state: dict[str, torch.Tensor], ckpt, shards: int) -> None:
    """pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json, as LLaVA-1.5's release ships."""
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, ckpt / name)
        weight_map |= dict.fromkeys(part, name)
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_original(root, projector="mlp2x_gelu", tie=False, shards=0, tuned_tower=False, **config_overrides):
    """A tiny checkpoint in the original LLaVA layout: flat llava_llama config, model.mm_projector.* keys.

    shards > 0: fp16 pytorch_model*.bin shards with an index and the rotary inv_freq buffers old
    transformers saved; tuned_tower: the tower's own (changed) weights under model.vision_tower.vision_tower.*.
    """
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH))  # fmt: skip
    vision.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(root / "clip")
    tokenizer = plain_tokenizer()  # no <image>, no pad: what an original checkpoint ships
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tie))  # fmt: skip
    proj = original_projector(projector)
    state = dict(llm.state_dict()) | {f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}
    if tie:
        del state["lm_head.weight"]  # save_pretrained drops the tied copy
    if tuned_tower:
        with torch.no_grad():
            for p in vision.parameters():
                p.add_(0.01 * torch.randn_like(p))
        state |= {f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in vision.state_dict().items()}
        state["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    ckpt = root / "llava-original"
    ckpt.mkdir()
    if shards:
        with torch.no_grad():  # the reference computes with exactly the fp16-rounded weights
            for module in (llm, proj, vision):
                for p in module.parameters():
                    p.copy_(p.half().float())
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        state |= {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(8) for i in range(2)}
        save_bin_shards(state, ckpt, shards)
    else:
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


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    side = max(image.size)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def original_pixels(clip_dir, image: Image.Image) -> torch.Tensor:
    """process_images with image_aspect_ratio 'pad': pad with the mean colour, then the tower's CLIP processor."""
    clip = CLIPImageProcessor.from_pretrained(clip_dir)
    padded = expand2square(image, tuple(int(255 * m) for m in clip.image_mean))
    return clip(padded, return_tensors="pt")["pixel_values"]  # (1, 3, S, S)


def original_logits(llm, tokenizer, image_features: torch.Tensor) -> torch.Tensor:
    """The text of PROMPT embedded around the image features, as tokenizer_image_token + the splice do."""
    before = tokenizer("USER: ", return_tensors="pt")["input_ids"]  # with BOS, as tokenizer_image_token does
    after = tokenizer("\nWhat is it? ASSISTANT:", add_special_tokens=False, return_tensors="pt")["input_ids"]
    embed = llm.get_input_embeddings()
    with torch.no_grad():
        inputs_embeds = torch.cat([embed(before), image_features[None], embed(after)], dim=1)  # (1, T, C)
        return llm(inputs_embeds=inputs_embeds).logits


def patch_features(vision, proj, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) -> (N, P, C): penultimate layer, CLS dropped (mm_vision_select_feature: patch), projected."""
    with torch.no_grad():
        return proj(vision(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:])


def converted_logits(model, processor, image, vocab: int) -> torch.Tensor:
    inputs = processor(text=[PROMPT], images=[image], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**inputs).logits[..., :vocab]  # rows past `vocab` are the added <image> / <pad>


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "linear"])
def test_conversion_matches_the_original_forward(tmp_path, projector):
    ckpt, vision, llm, proj, tokenizer = write_original(tmp_path, projector)
    bundle = build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))
    model = bundle.model.eval()
    assert bundle.spec.image_mode == "pad" and model.config.vision_feature_select_strategy == "default"
    # weights carried over
    first = proj if projector == "linear" else proj[0]
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, first.weight)
    assert torch.equal(model.model.multi_modal_projector.linear_1.bias, first.bias)
    if projector == "mlp2x_gelu":
        assert torch.equal(model.model.multi_modal_projector.linear_2.weight, proj[2].weight)
    assert torch.equal(model.lm_head.weight[: llm.config.vocab_size], llm.lm_head.weight)
    assert torch.equal(model.get_input_embeddings().weight[: llm.config.vocab_size], llm.get_input_embeddings().weight)
    assert torch.equal(model.model.language_model.layers[1].self_attn.o_proj.weight, llm.model.layers[1].self_attn.o_proj.weight)
    assert "<image>" not in tokenizer.get_vocab() and bundle.tokenizer.image_token_id >= llm.config.vocab_size

    image = make_image(50, 30)
    inputs = bundle.processor(text=[PROMPT], images=[image], return_tensors="pt")
    assert int((inputs["input_ids"] == bundle.tokenizer.image_token_id).sum()) == 16  # (32 / 8)^2, CLS dropped
    assert torch.equal(inputs["pixel_values"], original_pixels(tmp_path / "clip", image))  # same preprocessing too
    expected = original_logits(llm, tokenizer, patch_features(vision, proj, original_pixels(tmp_path / "clip", image))[0])
    logits = converted_logits(model, bundle.processor, image, llm.config.vocab_size)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)

    # saved, it loads in plain transformers and computes the same
    path = save_checkpoint(bundle, tmp_path / "hf")
    plain = LlavaForConditionalGeneration.from_pretrained(path)
    torch.testing.assert_close(converted_logits(plain, AutoProcessor.from_pretrained(path), image, llm.config.vocab_size),
                               expected, atol=1e-5, rtol=0)  # fmt: skip


def test_sharded_fp16_bin_with_tied_embeddings_and_tuned_tower(tmp_path):
    # torch_dtype float16: what the released configs say; the converted model is float32 (spec.dtype)
    ckpt, vision, llm, proj, tokenizer = write_original(tmp_path, tie=True, shards=2, tuned_tower=True, torch_dtype="float16")
    assert not list(ckpt.glob("*.safetensors")) and (ckpt / "pytorch_model.bin.index.json").exists()
    bundle = build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))
    model = bundle.model
    assert model.config.text_config.dtype == torch.float32  # no stale float16 in the saved text_config
    converted_tower = model.model.vision_tower
    assert torch.equal(converted_tower.embeddings.patch_embedding.weight, vision.embeddings.patch_embedding.weight)
    assert not torch.equal(converted_tower.embeddings.patch_embedding.weight,
                           CLIPVisionModel.from_pretrained(tmp_path / "clip").embeddings.patch_embedding.weight)  # fmt: skip
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.dtype == torch.float32

    image = make_image(40, 64, seed=1)
    expected = original_logits(llm, tokenizer, patch_features(vision, proj, original_pixels(tmp_path / "clip", image))[0])
    torch.testing.assert_close(converted_logits(model, bundle.processor, image, llm.config.vocab_size), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- anyres (LLaVA-NeXT)


def original_best_resolution(image_wh: tuple[int, int], pinpoints_wh) -> tuple[int, int]:
    """mm_utils.select_best_resolution: sizes and pinpoints are (width, height); most effective, then least wasted."""
    width, height = image_wh

    def score(p):
        scale = min(p[0] / width, p[1] / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        return effective, -(p[0] * p[1] - effective)

    return max(pinpoints_wh, key=score)


def original_unpad(grid: torch.Tensor, image_wh: tuple[int, int]) -> torch.Tensor:
    """Crop (C, H, W) features back to the image's aspect ratio (the letterbox padding holds no image)."""
    width, height = image_wh
    _, cur_h, cur_w = grid.shape
    if width / height > cur_w / cur_h:
        pad = (cur_h - int(height * cur_w / width)) // 2
        return grid[:, pad : cur_h - pad, :]
    pad = (cur_w - int(width * cur_h / height)) // 2
    return grid[:, :, pad : cur_w - pad]


def original_anyres_features(features: torch.Tensor, newline: torch.Tensor, image_wh, pinpoints_wh) -> torch.Tensor:
    """spatial_unpad merge: (1 + gh*gw, P, C) tile features -> (T, C): base tile, then grid rows each ending in newline."""
    side = IMAGE_SIZE // PATCH
    best_w, best_h = original_best_resolution(image_wh, pinpoints_wh)
    grid_w, grid_h = best_w // IMAGE_SIZE, best_h // IMAGE_SIZE
    assert features.shape[0] == 1 + grid_w * grid_h, "the converted processor cut a different tile grid"
    grid = features[1:].view(grid_h, grid_w, side, side, -1)
    grid = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # (C, gh*side, gw*side)
    grid = original_unpad(grid, image_wh)
    grid = torch.cat([grid, newline[:, None, None].expand(*grid.shape[:-1], 1)], dim=-1)  # newline closes each row
    return torch.cat([features[0], grid.flatten(1, 2).transpose(0, 1)], dim=0)


@pytest.mark.parametrize("as_string", [False, True])
def test_anyres_matches_the_original_with_width_height_pinpoints(tmp_path, as_string):
    # (width, height) as the original lists them; not symmetric, so a missed swap picks another grid
    pinpoints_wh = [[64, 32], [32, 96]]
    ckpt, vision, llm, proj, tokenizer = write_original(
        tmp_path, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
        image_grid_pinpoints=str(pinpoints_wh) if as_string else pinpoints_wh,
    )  # fmt: skip
    newline = torch.randn(64)
    state = load_file(str(ckpt / "model.safetensors"))
    save_file(state | {"model.image_newline": newline}, str(ckpt / "model.safetensors"))
    bundle = build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1"))
    assert type(bundle.model).__name__ == "LlavaNextForConditionalGeneration"
    assert bundle.model.config.image_grid_pinpoints == [[32, 64], [96, 32]]  # original (w, h) -> HF (h, w)
    assert torch.equal(bundle.model.model.image_newline, newline)

    image = make_image(50, 30)  # landscape: the original picks 64 wide x 32 high, a 2x1 grid
    inputs = bundle.processor(text=[PROMPT], images=[image], return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 3  # base + 2 tiles
    features = original_anyres_features(patch_features(vision, proj, inputs["pixel_values"][0]), newline, image.size, pinpoints_wh)
    assert int((inputs["input_ids"] == bundle.tokenizer.image_token_id).sum()) == features.shape[0]
    expected = original_logits(llm, tokenizer, features)
    torch.testing.assert_close(converted_logits(bundle.model, bundle.processor, image, llm.config.vocab_size),
                               expected, atol=1e-5, rtol=0)  # fmt: skip


# ----------------------------------------------------------------------------- errors and the CLI


def test_conversion_errors_name_the_field(tmp_path):
    ckpt, *_ = write_original(tmp_path)
    spec = ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1")
    with pytest.raises(ValueError, match=r"set model.template \(or --template\): vicuna_v1 for LLaVA-1.5"):
        build_model(ModelSpec(original_checkpoint=str(ckpt)))
    with pytest.raises(ValueError, match=r"model.quantization '4bit' is not applied while converting.*convert it first"):
        build_model(ModelSpec(original_checkpoint=str(ckpt), template="vicuna_v1", quantization="4bit"))
    config = json.loads((ckpt / "config.json").read_text())

    def with_config(**fields):
        (ckpt / "config.json").write_text(json.dumps(config | fields))

    with_config(mm_use_im_start_end=True)
    with pytest.raises(ValueError, match=r"config.json: mm_use_im_start_end: true .* is not supported"):
        build_model(spec)
    with_config(mm_vision_tower=str(tmp_path / "no-such-clip"))
    with pytest.raises(ValueError, match=r"mm_vision_tower '.*no-such-clip' cannot be loaded .*point it at a local copy"):
        build_model(spec)
    with_config(mm_projector_type="linear")  # the weights are a Sequential: 0.* and 2.*
    with pytest.raises(ValueError, match=r"\(projector\): weights do not fit.*check mm_projector_type \('linear'\)"):
        build_model(spec)
    with_config(mm_hidden_size=48)
    with pytest.raises(ValueError, match=r"mm_hidden_size 48 but mm_vision_tower .* has hidden_size 32"):
        build_model(spec)
    with_config(image_aspect_ratio="anyres")  # no mm_patch_merge_type: the original's default is flat
    with pytest.raises(ValueError, match=r"mm_patch_merge_type 'flat' with image_aspect_ratio anyres"):
        build_model(spec)
    with_config(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad")
    with pytest.raises(ValueError, match=r"anyres with spatial_unpad but no model.image_newline"):
        build_model(spec)
    with_config(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad", image_grid_pinpoints="[[64, 32],")
    with pytest.raises(ValueError, match=r"image_grid_pinpoints .* is not a list of \[width, height\] pairs"):
        build_model(spec)
    with_config()
    for file in ckpt.glob("*token*"):
        file.unlink()
    with pytest.raises(ValueError, match=r"(?s)no loadable tokenizer .*copy the tokenizer files of the checkpoint's LLM"):
        build_model(spec)


def test_convert_cli(tmp_path):
    ckpt, _, llm, *_ = write_original(tmp_path)
    result = run_job("convert_checkpoint", "--original", str(ckpt), "--template", "vicuna_v1", "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert "image mode pad, template vicuna_v1" in result.stdout
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert model.config.projector_hidden_act == "gelu"
    assert torch.equal(model.lm_head.weight[: llm.config.vocab_size], llm.lm_head.weight)
    assert "<image>" in AutoProcessor.from_pretrained(tmp_path / "hf").tokenizer.get_vocab()

    bad = run_job("convert_checkpoint", "--original", str(ckpt), "--template", "no_such", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "no_such" in bad.stderr and not (tmp_path / "x").exists()
