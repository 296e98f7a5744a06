"""Named model presets: they only pin numbers and names; `assemble.py` does the building (a leaf of the loading chain).

Each preset pins the vision tower and LLM (hub ids, plus their shapes so that
`init: random` needs no download), the projector, the conversation template and
the image handling. `tiny` has no hub ids: it is always built from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "PRESETS", "get_preset", "ANYRES_336_PINPOINTS"]

from llava_platform.config import did_you_mean
from llava_platform.data.images import ANYRES_336_PINPOINTS

CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
VICUNA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
)  # fmt: skip
VICUNA_13B = dict(VICUNA_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40)


@dataclass(frozen=True)
class Preset:
    name: str
    template: str
    image_mode: str  # square | pad | anyres
    projector: str
    vision_config: dict[str, Any]  # CLIPVisionConfig kwargs (shapes for init: random)
    text_config: dict[str, Any]  # LlamaConfig kwargs
    vision_tower: str | None = None  # hub id of the pretrained tower (None: tiny, built here)
    llm: str | None = None  # hub id of the pretrained LLM
    image_grid_pinpoints: list[tuple[int, int]] | None = None
    vision_feature_layer: int = -2  # LLaVA-1.5: penultimate layer
    vision_feature_select_strategy: str = "default"  # drop CLS
    notes: str = field(default="", compare=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="tiny",
            # No system prompt: a from-scratch LLM gains nothing from one, and it would be ~30% of each sample.
            template="mistral_instruct",
            image_mode="pad",
            projector="mlp2x_gelu",
            # 96 px, patch 16 -> 6x6 = 36 image tokens; ~0.1 M vision params. The number of image tokens is
            # what lets a from-scratch model learn small objects: on data it was not tuned on (random init,
            # 300 + 750 steps), 16 tokens (64 px) scored 69.0 / 32.5% (grid_scenes / free_scenes), 16 tokens
            # of 32-px patches at 128 px 33% on free_scenes, 36 tokens 80.5 / 46%, 64 tokens (128 px)
            # 80.5 / 50.5% at 1.78x the training time (36 tokens: 1.19x). Its last layer feeds the
            # projector: a tower trained from scratch has no contrastive head to skip.
            vision_config=dict(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=96, patch_size=16, projection_dim=64, hidden_act="quick_gelu",
            ),  # fmt: skip
            vision_feature_layer=-1,
            # vocab_size is taken from the tiny tokenizer; ~0.6 M LLM params. initializer_range 128**-0.5
            # instead of Llama's 0.02 (a 4096-wide default): with 0.02 the attention logits start near 0,
            # and the model spends most of a 6-minute budget on the answer priors before it learns to
            # look answers up in the image (held-out accuracy after 34k stage-2 samples: 72% vs 95.5%).
            text_config=dict(
                hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=8, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                initializer_range=128**-0.5,
            ),  # fmt: skip
            notes="CPU preset: random init, byte-level tokenizer built by code, learns the synthetic task",
        ),
        Preset(
            name="llava-1.5-7b",
            template="vicuna_v1",
            image_mode="pad",
            projector="mlp2x_gelu",
            vision_config=CLIP_L_336,
            text_config=VICUNA_7B,
            vision_tower="openai/clip-vit-large-patch14-336",
            llm="lmsys/vicuna-7b-v1.5",
        ),
        Preset(
            name="llava-1.5-13b",
            template="vicuna_v1",
            image_mode="pad",
            projector="mlp2x_gelu",
            vision_config=CLIP_L_336,
            text_config=VICUNA_13B,
            vision_tower="openai/clip-vit-large-patch14-336",
            llm="lmsys/vicuna-13b-v1.5",
        ),
        Preset(
            name="llava-next-7b",
            template="vicuna_v1",
            image_mode="anyres",
            projector="mlp2x_gelu",
            vision_config=CLIP_L_336,
            text_config=VICUNA_7B,
            vision_tower="openai/clip-vit-large-patch14-336",
            llm="lmsys/vicuna-7b-v1.5",
            image_grid_pinpoints=ANYRES_336_PINPOINTS,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; {did_you_mean(name, PRESETS)}known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
