"""Projector types: linear, mlp2x_gelu (HF's own) and mlpNx_gelu.

transformers' LlavaMultiModalProjector is fixed at linear_1 -> act -> linear_2.
- mlp2x_gelu is exactly that.
- linear is that with act = identity and linear_2 initialised to the identity:
  still a single linear map, and still loadable by plain transformers.
- mlpNx_gelu (N > 2) needs linear_3.. that HF's class lacks: the platform swaps in
  `MlpProjector` and records `projector_type` in config.json. Such checkpoints load
  through `llava_platform.model.load_checkpoint` only (plain transformers would
  drop linear_3+); assemble warns when one is built.

A leaf of the loading chain (no import from the package): assemble installs projectors, checkpoint restores them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers.activations import ACT2FN

__all__ = ["projector_depth", "projector_act", "MlpProjector", "install_projector", "restore_projector_weights"]

# saved keys are "multi_modal_projector.linear_3.weight" (hub layout) or "model.multi_modal_projector...."
PROJECTOR_KEY = re.compile(r"^(?:model\.)?multi_modal_projector\.(.+)$")


def projector_depth(name: str) -> int:
    """'linear' -> 1, 'mlp2x_gelu' -> 2, 'mlp3x_gelu' -> 3."""
    if name == "linear":
        return 1
    m = re.fullmatch(r"mlp(\d+)x_gelu", name)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"unknown projector {name!r}; use linear, mlp2x_gelu or mlpNx_gelu (N >= 2)")
    return int(m.group(1))


def projector_act(name: str) -> str:
    """The projector_hidden_act to put in LlavaConfig."""
    return "linear" if projector_depth(name) == 1 else "gelu"


class MlpProjector(nn.Module):
    """linear_1 -> gelu -> linear_2 -> gelu -> ... -> linear_N; (B, P, C_vision) -> (B, P, C_text)."""

    def __init__(self, vision_hidden: int, text_hidden: int, depth: int, bias: bool = True):
        super().__init__()
        self.depth = depth
        self.act = ACT2FN["gelu"]
        for i in range(1, depth + 1):
            setattr(self, f"linear_{i}", nn.Linear(vision_hidden if i == 1 else text_hidden, text_hidden, bias=bias))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(image_features)
        for i in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{i}")(self.act(hidden))
        return hidden


def install_projector(model: nn.Module, name: str) -> None:
    """Make `model`'s projector the `name` type (fresh weights). The model's config must carry projector_act(name)."""
    inner = model.model
    depth = projector_depth(name)
    model.config.projector_type = name
    if depth == 1:
        # act is identity; linear_2 = I makes the pair one linear map
        with torch.no_grad():
            lin2 = inner.multi_modal_projector.linear_2
            lin2.weight.copy_(torch.eye(lin2.out_features, dtype=lin2.weight.dtype))
            if lin2.bias is not None:
                lin2.bias.zero_()
    elif depth > 2:
        old = inner.multi_modal_projector
        inner.multi_modal_projector = MlpProjector(
            old.linear_1.in_features, old.linear_1.out_features, depth, bias=old.linear_1.bias is not None
        ).to(device=old.linear_1.weight.device, dtype=old.linear_1.weight.dtype)


def restore_projector_weights(model: nn.Module, checkpoint_dir: str | Path) -> None:
    """After from_pretrained of an mlpNx (N > 2) checkpoint: swap in MlpProjector and load its saved weights."""
    name = getattr(model.config, "projector_type", "mlp2x_gelu")
    if projector_depth(name) <= 2:
        return
    install_projector(model, name)
    state = {}
    for file in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if match := PROJECTOR_KEY.match(key):
                    state[match[1]] = f.get_tensor(key)
    model.model.multi_modal_projector.load_state_dict(state, strict=True)
