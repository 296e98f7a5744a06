"""Muon on the linear layers' weight matrices, AdamW on everything else, as one torch optimizer.

Muon (K. Jordan et al., 2024) replaces a matrix's Adam update by its Nesterov momentum,
orthogonalised with a few Newton-Schulz iterations: every direction of the update moves by about
the same amount, so rarely used directions learn as fast as the dominant ones. The tiny preset,
from random init, learns the synthetic scenes with it to 97-100% held-out in 300 + 750 steps
(64-px tower; the 96-px tower's 36 image tokens need 300 + 900 for that on every seed), where
AdamW's 425 + 1009 gave 84.5-98% (README, "Learning the synthetic scenes"). Embeddings, the LM
head, norms and biases are not matrices a layer multiplies by, and keep AdamW; both share one
learning-rate schedule.

Why not torch.optim.Muon: it orthogonalises in bfloat16, which a CPU without bfloat16 units (the
2-core CI machine) runs ~5x slower than the whole tiny training step (35 vs 190 samples/s), and
it takes 2-D parameters only, so a model would need two optimizers under one scheduler. Here the
iteration runs in float32 on CPU (bfloat16 on GPU, as torch does) and the AdamW groups are stepped
by torch's own functional AdamW.

A Muon step's size: lr * 0.2 * sqrt(max(rows, cols)) on the orthogonalised update, whose entries
have an RMS of 1 / sqrt(max(rows, cols)); so the update's RMS is 0.2 * lr, about AdamW's, and
the same lr works for both kinds of group (torch.optim.Muon's adjust_lr_fn="match_rms_adamw").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adamw import adamw

__all__ = ["MuonWithAdamW", "orthogonalise"]

# The quintic Newton-Schulz coefficients of the Muon write-up: they push singular values into ~[0.7, 1.2] in 5 steps.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
STACK = 8  # most same-shape matrices orthogonalised in one batched matmul


def orthogonalise(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """(..., A, B) -> (..., A, B): each matrix with the same singular vectors, singular values near 1
    (US'V^T, S' ~ 0.7-1.2). A stack of same-shape matrices runs as one batch of matmuls."""
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32).reshape(-1, *matrix.shape[-2:])  # (N, A, B)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:
        x = x.mT  # (N, B, A): the Gram matrix x x^T is the smaller side
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm = 1: in the iteration's range
    a, b, c = NEWTON_SCHULZ
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b G + c G^2) x
    return (x if wide else x.mT).reshape(matrix.shape).to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Param groups with "muon": True hold 2-D weights (Muon); the others are stepped by AdamW.

    Group keys: lr, weight_decay (decoupled, both kinds), betas and eps (AdamW), momentum and
    ns_steps (Muon). The state dict is a plain torch.optim one: checkpoints and resume need nothing else.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.95, ns_steps: int = 5) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps, muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            bad = [tuple(p.shape) for p in group["params"] if group["muon"] and p.ndim != 2]
            if bad:
                raise ValueError(f"Muon groups hold 2-D weight matrices only; group {group.get('name', '?')!r} has shapes {bad}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same in by_shape.items():  # same-shape matrices (each layer's q, k, v, o) orthogonalised as one batch,
            for start in range(0, len(same), STACK):  # STACK at a time: the batch's temporaries stay a few matrices big
                chunk = same[start : start + STACK]
                updates = orthogonalise(torch.stack([self._nesterov(p, momentum) for p in chunk]), group["ns_steps"])
                for p, update in zip(chunk, updates):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(shape)))  # update RMS 0.2 * lr, as AdamW's

    def _nesterov(self, p: torch.Tensor, momentum: float) -> torch.Tensor:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"]
        buffer.lerp_(p.grad, 1 - momentum)  # an EMA of the gradient
        return p.grad.lerp(buffer, momentum)  # Nesterov: one step ahead

    def _adamw_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        for p in params:
            if not self.state[p]:
                self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
              [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)  # fmt: skip
