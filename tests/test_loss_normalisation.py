"""The loss of a step does not depend on how the step is cut: one micro-batch of 8, two of 4 accumulated, and
two workers of 4 (DDP and DeepSpeed ZeRO-2, gloo) give the loss and gradients of the 8 samples' token mean,
with answers of very different lengths (a per-micro-batch mean would weigh a short answer's tokens more)."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llava_platform.config import TrainSpec
from llava_platform.data.collate import collate
from llava_platform.data.images import PixelNormalizer
from llava_platform.data.records import parse_record
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.synthetic import generate
from llava_platform.model import load_checkpoint
from llava_platform.model.freeze import apply_freeze
from llava_platform.train.loop import run_steps
from llava_platform.train.strategy import DDPRunner, DeepSpeedRunner, answer_loss_sum, deepspeed_config, labelled_tokens

SPEC = TrainSpec(stage="finetune", output_dir="unused", global_batch_size=8, micro_batch_size=4, max_steps=1, max_grad_norm=1e9)


@pytest.fixture(scope="module")
def samples(tiny_checkpoint, tmp_path_factory):
    """8 QA samples whose answers are 1 to ~80 tokens: the two halves have very different token counts."""
    paths = generate(tmp_path_factory.mktemp("syn"), num_train=8, num_test=0, seed=2)
    bundle = load_checkpoint(tiny_checkpoint)
    encoder = SampleEncoder(bundle.processor, bundle.template, paths.image_folder)
    answers = ["yes", "red", "two", "no", *["a red circle at the top left and " * k for k in (3, 5, 8, 10)]]
    out = []
    for record, answer in zip(json.loads(paths.finetune.read_text()), answers):
        convs = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": answer}]
        out.append(encoder.encode(parse_record(dict(record, conversations=convs))))
    return out


def reference(checkpoint, samples):
    """Loss and gradients of the 8 samples as one batch: summed token losses / labelled tokens."""
    bundle = load_checkpoint(checkpoint)
    model = bundle.model.train()
    apply_freeze(model, "finetune", train_vision_tower=True)
    batch = collate(samples, bundle.tokenizer.pad_token_id)
    batch["pixel_values"] = PixelNormalizer(bundle.processor.image_processor)(batch["pixel_values"])
    loss = answer_loss_sum(model, batch) / labelled_tokens(batch["labels"])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(checkpoint, samples, micro_batch: int, strategy: str = "ddp"):
    """One optimizer step of plain SGD (lr 1: the update is minus the gradient) or AdamW under DeepSpeed, through
    run_steps on this process's samples; (loss, grad norm, {parameter: update})."""
    bundle = load_checkpoint(checkpoint)
    model = bundle.model
    apply_freeze(model, "finetune", train_vision_tower=True)  # as training does: the tower's unused norm is frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    accumulation = len(samples) // micro_batch
    if strategy == "ddp":
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        runner = DDPRunner(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), 1e9, torch.float32)
    else:
        spec = SPEC.model_copy(update={"strategy": strategy, "micro_batch_size": micro_batch})
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        config = deepspeed_config(spec, accumulation, torch.float32, model.config.text_config.hidden_size, dist.get_world_size())
        runner = DeepSpeedRunner(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), config)
    batches = iter([samples[i : i + micro_batch] for i in range(0, len(samples), micro_batch)])
    [metrics] = run_steps(runner, batches, processor=bundle.processor, start_step=0, total_steps=1, accumulation=accumulation)
    updates = {n: (p.detach() - before[n]) for n, p in model.named_parameters()}
    return metrics.loss, metrics.grad_norm, updates


def _worker(rank: int, port: int, checkpoint, samples, out: str) -> None:
    # what torchrun (or Ray Train) sets; DeepSpeed reads them
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    mine = samples[4 * rank : 4 * rank + 4]  # rank 0: the short answers, rank 1: the long ones
    results = {"ddp": one_step(checkpoint, mine, 4), "zero2": one_step(checkpoint, mine, 4, "zero2")[:2]}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def two_workers(checkpoint, samples, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(port, checkpoint, samples, out), nprocs=2, join=True)
    return torch.load(out)


def test_the_same_global_batch_gives_the_same_loss_and_gradients_however_it_is_cut(tiny_checkpoint, samples, tmp_path):
    counts = [labelled_tokens(collate(samples[i : i + 4], 0)["labels"]) for i in (0, 4)]
    assert counts[1] > 5 * counts[0]  # very different answer lengths between the halves
    loss, grads = reference(tiny_checkpoint, samples)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])).item()
    spread = two_workers(tiny_checkpoint, samples, tmp_path)
    cuts = {"1x8": one_step(tiny_checkpoint, samples, 8), "2x4": one_step(tiny_checkpoint, samples, 4), "2 workers x 4": spread["ddp"]}
    for name, (cut_loss, cut_norm, updates) in cuts.items():
        assert cut_loss == pytest.approx(loss, rel=1e-5), name
        assert cut_norm == pytest.approx(norm, rel=1e-4), name
        for parameter, grad in grads.items():  # SGD with lr 1: the update is minus the gradient
            assert torch.allclose(-updates[parameter], grad, rtol=1e-4, atol=1e-7), (name, parameter)
    zero_loss, zero_norm = spread["zero2"]  # DeepSpeed averages over ranks too: the same loss and gradient norm
    assert zero_loss == pytest.approx(loss, rel=1e-5) and zero_norm == pytest.approx(norm, rel=1e-4)
    # a mean of per-micro-batch means (the short answers' tokens weighing 3x more) moves the model elsewhere
    halves = [reference(tiny_checkpoint, samples[i : i + 4])[1] for i in (0, 4)]
    mean_of_means = {n: (halves[0][n] + halves[1][n]) / 2 for n in grads}
    distance = sum(torch.linalg.vector_norm(mean_of_means[n] - grads[n]) ** 2 for n in grads) ** 0.5
    assert distance > 0.1 * norm
