"""Which parameters train in each stage, and optimizer groups with per-component learning rates.

    stage 1 (pretrain)  projector only                      (LLaVA: tune_mm_mlp_adapter)
    stage 2 (finetune)  projector + LLM (embeddings, lm_head)  or, with LoRA, projector + adapters
    either stage        + vision tower if asked, with its own learning rate: the layers that reach the
                        image features (those after model.config.vision_feature_layer, the post-norm and
                        pooling head never get a gradient, so they stay frozen)
    tiny preset         random-init LLM: stage 1 trains it too (train.train_llm)

Not part of the loading chain: it imports nothing from the package, and only training uses it.
"""

from __future__ import annotations

import re
from typing import Literal

from torch import nn

__all__ = ["component_of", "apply_freeze", "param_groups", "unused_vision_parameters", "COMPONENTS"]

COMPONENTS = ("vision_tower", "projector", "llm")


def component_of(name: str) -> str:
    """'model.language_model.layers.0.mlp.up_proj.weight' -> 'llm' (peft's 'base_model.model.' prefix allowed)."""
    name = name.removeprefix("base_model.model.")
    if name.startswith("model.vision_tower."):
        return "vision_tower"
    if name.startswith(("model.multi_modal_projector.", "model.image_newline")):
        return "projector"
    if name.startswith(("model.language_model.", "lm_head.")):
        return "llm"
    raise ValueError(f"parameter {name!r} belongs to no known LLaVA component")


# CLIP / SigLIP vision parameters on the way to a hidden state: the embeddings, the pre-norm, encoder layers
# ("vision_model." inside the tower where a CLIPVisionModel is loaded whole, not where it is built from a config)
_FEEDS_HIDDEN_STATES = re.compile(r"vision_tower\.(?:vision_model\.)?(?:embeddings\.|pre_layrnorm\.|encoder\.layers\.(\d+)\.)")


def unused_vision_parameters(model: nn.Module) -> set[str]:
    """Vision tower parameters that never reach the image features: encoder layers after the hidden state the
    projector reads (config.vision_feature_layer: LLaVA-1.5 takes the second-to-last), the post-norm and a
    pooling head. Trained, they would get no gradient: DDP would need find_unused_parameters."""
    layers = model.config.vision_feature_layer
    count = model.config.vision_config.num_hidden_layers
    # hidden_states[k] is the output of encoder layer k - 1 (hidden_states[0]: the embeddings)
    needed = max(k if k >= 0 else count + 1 + k for k in (layers if isinstance(layers, list) else [layers]))
    unused = set()
    for name, _ in model.named_parameters():
        if component_of(name) != "vision_tower":
            continue
        feeds = _FEEDS_HIDDEN_STATES.search(name)
        if feeds is None or (feeds.group(1) is not None and int(feeds.group(1)) >= needed):
            unused.add(name)
    return unused


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def apply_freeze(model: nn.Module, stage: Literal["pretrain", "finetune"], train_vision_tower: bool = False,
                 train_llm: bool | None = None) -> dict[str, str]:  # fmt: skip
    """Set requires_grad per component; returns {component: 'trainable/total'} parameter counts for the log.

    train_llm=None follows the stage; True in stage 1 is for a random-init LLM (the tiny preset),
    which has no language to keep frozen.
    """
    if _is_peft(model) and stage == "pretrain":
        raise ValueError("LoRA is for stage 2: remove model.lora from the pretrain spec (stage 1 trains the projector only)")
    wanted = {"projector": True, "vision_tower": train_vision_tower, "llm": stage == "finetune" if train_llm is None else train_llm}
    unused = unused_vision_parameters(model) if train_vision_tower else set()
    for name, param in model.named_parameters():
        component = component_of(name)
        if _is_peft(model) and component != "vision_tower":
            continue  # peft already chose: adapters and modules_to_save train, the frozen base does not
        param.requires_grad_(wanted[component] and name not in unused)
    counts = {c: [0, 0] for c in COMPONENTS}
    for name, param in model.named_parameters():
        c = counts[component_of(name)]
        c[0] += param.numel() if param.requires_grad else 0
        c[1] += param.numel()
    return {c: f"{t / 1e6:.2f}M/{n / 1e6:.2f}M" for c, (t, n) in counts.items()}


def param_groups(model: nn.Module, lr: float, projector_lr: float | None = None, vision_lr: float | None = None,
                 weight_decay: float = 0.0, muon: bool = False) -> list[dict]:  # fmt: skip
    """torch.optim groups: one per (component, kind) with that component's lr; biases and norms get no decay.

    muon=True puts the linear layers' weights (attention, MLP, projector, LoRA adapters; not the LM head) in
    groups of their own marked "muon": True, for train.muon.MuonWithAdamW; embeddings, head, norms and biases
    stay AdamW's.
    """
    lrs = {"llm": lr, "projector": projector_lr or lr, "vision_tower": vision_lr or lr}
    linear: set[int] = set()
    if muon:
        head = model.get_output_embeddings()
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m is not head}
    groups: dict[tuple[str, str], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in linear:
            kind = "muon"
        else:  # matrices decay; biases, norm scales, image_newline do not
            kind = "decay" if param.ndim >= 2 and "norm" not in name else "no_decay"
        groups.setdefault((component_of(name), kind), []).append(param)
    out = []
    for (component, kind), params in sorted(groups.items()):
        group = {"params": params, "lr": lrs[component], "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
                 "name": component if kind == "decay" else f"{component}_{kind}"}  # fmt: skip
        out.append(group | ({"muon": kind == "muon"} if muon else {}))
    return out
