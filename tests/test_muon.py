"""train.optimizer=muon: Muon on the linear weights (as torch.optim.Muon computes it), AdamW on the rest."""

import copy
import json

import pytest
import torch

from llava_platform.config import LoraSpec, TrainSpec
from llava_platform.model.freeze import apply_freeze, component_of, param_groups
from llava_platform.model.lora import apply_lora
from llava_platform.train.loop import build_optimizer
from llava_platform.train.muon import MuonWithAdamW, orthogonalise


def spec(**kw):
    base = dict(stage="finetune", output_dir="unused", lr=1e-3, warmup_ratio=0.0, scheduler="constant", optimizer="muon",
                global_batch_size=8, micro_batch_size=8, train_vision_tower=True)  # fmt: skip
    return TrainSpec(**(base | kw))


@pytest.mark.parametrize("shape", [(48, 160), (160, 48)])
def test_orthogonalise_keeps_the_singular_vectors_and_flattens_the_values(shape):
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(shape[1], k, generator=gen)).Q
    g = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.mT  # singular values 0.1 .. 10
    x = orthogonalise(g)
    values = torch.linalg.svdvals(x)
    assert x.shape == g.shape and values.min() > 0.6 and values.max() < 1.3, values
    # same singular vectors: U^T X V is diagonal (off-diagonal mass < 2% of the diagonal's)
    core = u.mT @ x @ v
    assert (core - torch.diag(torch.diagonal(core))).norm() < 0.02 * torch.diagonal(core).norm()


def test_a_muon_step_is_torch_muons_and_an_adamw_step_is_torch_adamws():
    """Ten same-shape matrices (two batches of the stack), a tall one and a vector, three steps each."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(32, 96)] * 10 + [(96, 24), (96,)]
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    optimizer = MuonWithAdamW([{"params": ours[:-1], "muon": True}, {"params": ours[-1:]}], lr=0.02, betas=(0.9, 0.95),
                              weight_decay=0.1)  # fmt: skip
    torch_muon = torch.optim.Muon(ref[:-1], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    torch_adamw = torch.optim.AdamW(ref[-1:], lr=0.02, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(3):
        grads = [torch.randn(shape, generator=gen) for shape in shapes]
        for params, optimizers in [(ours, [optimizer]), (ref, [torch_muon, torch_adamw])]:
            for p, g in zip(params, grads):
                p.grad = g.clone()
            for o in optimizers:
                o.step()
        # torch.optim.Muon orthogonalises in bfloat16, this one in float32 on CPU: equal to bf16 precision
        for i in range(len(shapes) - 1):
            moved = (ref[i] - start[i]).norm()
            assert (ours[i] - ref[i]).norm() < 0.03 * moved, (step, i, float((ours[i] - ref[i]).norm() / moved))
        torch.testing.assert_close(ours[-1], ref[-1], rtol=0, atol=1e-7)


def test_muon_groups_are_the_linear_weights_and_reject_other_shapes(tiny_bundle):
    model = copy.deepcopy(tiny_bundle.model)
    apply_freeze(model, "finetune", train_vision_tower=True)
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, projector_lr=2e-3, muon=True)}
    # the projector is linear layers only: its weights are all Muon's, its biases AdamW's
    assert set(groups) == {f"{c}{k}" for c in ("llm", "projector", "vision_tower") for k in ("", "_muon", "_no_decay")} - {"projector"}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for name, g in groups.items() if g["muon"] for p in g["params"]}
    adamw = {names[id(p)] for name, g in groups.items() if not g["muon"] for p in g["params"]}
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in muon and "model.multi_modal_projector.linear_2.weight" in muon
    assert {"lm_head.weight", "model.language_model.embed_tokens.weight"} <= adamw  # lookups and the head: AdamW
    assert any("position_embedding" in n for n in adamw) and all(n.endswith(".weight") for n in muon)
    assert groups["projector_muon"]["lr"] == 2e-3 and {component_of(n) for n in muon} == {"llm", "projector", "vision_tower"}
    # LoRA: the adapters are linear layers too (Muon); the projector trains fully through peft's copy of it
    lora = apply_lora(copy.deepcopy(tiny_bundle.model), LoraSpec(r=4, alpha=8))
    names = {id(p): n for n, p in lora.named_parameters()}
    lora_groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(lora, lr=1e-3, muon=True)}
    assert set(lora_groups) == {"llm_muon", "projector_muon", "projector_no_decay"}
    assert all(".lora_A." in n or ".lora_B." in n for n in lora_groups["llm_muon"]) and lora_groups["llm_muon"]
    with pytest.raises(ValueError, match=r"Muon groups hold 2-D weight matrices only; group 'bias' has shapes \[\(3,\)\]"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True, "name": "bias"}], lr=1e-3)


def test_a_checkpoint_resumes_only_with_the_optimizer_it_was_saved_with(tmp_path):
    from dataclasses import asdict

    from llava_platform.train.plan import DataPlan
    from llava_platform.train.state import STATE_FILE, read_trainer_state

    plan = DataPlan.for_spec(64, spec(max_steps=8), workers=1)
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 4, "plan": asdict(plan), "optimizer": "muon"}))
    assert read_trainer_state(tmp_path, plan, "muon")["step"] == 4
    with pytest.raises(ValueError, match=r"checkpointed with train.optimizer=muon, and this spec says adamw; .* Resume with train.optimizer=muon"):
        read_trainer_state(tmp_path, plan, "adamw")


def test_muon_needs_ddp_and_says_so():
    with pytest.raises(ValueError, match="train.optimizer=muon with train.strategy=zero2: .* use strategy ddp with muon"):
        spec(strategy="zero2")
    assert spec(strategy="ddp").optimizer == "muon"


def test_muon_trains_and_its_state_resumes(tiny_bundle, tmp_path):
    """The tiny model learns a one-answer task with Muon, and an optimizer rebuilt from a saved state dict
    takes the same next step as the one that kept running (momentum and AdamW moments restored)."""
    from conftest import make_image

    model = copy.deepcopy(tiny_bundle.model)
    apply_freeze(model, "finetune", train_vision_tower=True)
    optimizer, _ = build_optimizer(model, spec(), total_steps=10)
    assert isinstance(optimizer, MuonWithAdamW) and any(g["muon"] for g in optimizer.param_groups)
    inputs = tiny_bundle.processor(text=["<image>a red circle"] * 2, images=[make_image(64, 64)] * 2, return_tensors="pt")
    losses = []
    for _ in range(6):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] / 2, losses
    # a Muon step moves a weight matrix by lr * 0.2 * sqrt(max(A, B)) * (a matrix whose leading singular values
    # are ~1; the tail, directions a 2-sample batch's gradients barely reach, stays small). AdamW's: ~10 at the top.
    q_proj = model.model.language_model.layers[0].self_attn.q_proj.weight
    before = q_proj.detach().clone()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    values = torch.linalg.svdvals((before - q_proj.detach()) / (1e-3 * 0.2 * max(q_proj.shape) ** 0.5))
    assert values.max() < 1.3 and values[:16].min() > 0.7, values
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    twin = copy.deepcopy(model)
    restored, _ = build_optimizer(twin, spec(), total_steps=10)
    restored.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    for m, opt in [(model, optimizer), (twin, restored)]:
        m(**inputs, labels=inputs["input_ids"]).loss.backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)

