"""The in-process training loop: the global batch is honoured, accumulation is exact, loss falls."""

import copy
import json

import pytest
import torch

from llava_platform.config import TrainSpec
from llava_platform.data.records import parse_record
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.synthetic import generate
from llava_platform.model import ModelBundle
from llava_platform.train.loop import train
from llava_platform.train.plan import DataPlan


@pytest.fixture(scope="module")
def count_samples(tiny_bundle, tmp_path_factory):
    """'How many objects are there?' for 64 scenes: every sample has the same length."""
    paths = generate(tmp_path_factory.mktemp("syn"), num_train=64, num_test=0, seed=0)
    encoder = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, paths.image_folder)
    question = [{"from": "human", "value": "<image>\nHow many objects are there?"}]
    return [
        encoder.encode(parse_record(dict(r, conversations=question + [{"from": "gpt", "value": str(len(r["scene"]))}])))
        for r in json.loads(paths.finetune.read_text())
    ]


def spec(**kw):
    base = dict(stage="finetune", output_dir="unused", lr=1e-3, warmup_ratio=0.0, scheduler="constant",
                global_batch_size=8, micro_batch_size=8, epochs=1.0, train_vision_tower=True)  # fmt: skip
    return TrainSpec(**(base | kw))


def fresh(bundle):
    return ModelBundle(copy.deepcopy(bundle.model), bundle.processor, bundle.template, bundle.spec)


def test_accumulation_gives_the_same_update(tiny_bundle, count_samples):
    assert len({len(s.input_ids) for s in count_samples}) == 1
    whole, halves = fresh(tiny_bundle), fresh(tiny_bundle)
    data = count_samples[:8]  # exactly one global batch: both runs see the same 8 samples in step 1
    [one] = train(whole, data, spec(micro_batch_size=8))
    [two] = train(halves, data, spec(micro_batch_size=4))  # 2 micro-batches per step
    # same loss and same gradient (Adam is scale-invariant, so the norm is what catches a missing 1/accumulation)
    assert two.loss == pytest.approx(one.loss, rel=1e-5) and two.grad_norm == pytest.approx(one.grad_norm, rel=1e-4)
    # Adam's first step is ~lr * sign(g): only elements whose gradient is ~0 may flip on float noise
    differ = total = 0
    for a, b in zip(whole.model.parameters(), halves.model.parameters()):
        differ += int((a - b).abs().gt(1e-6).sum())
        total += a.numel()
    assert differ / total < 1e-3, (differ, total)
    assert not torch.equal(whole.model.model.multi_modal_projector.linear_1.weight,
                           tiny_bundle.model.model.multi_modal_projector.linear_1.weight)  # fmt: skip


def test_answer_loss_is_the_models_loss_with_the_lm_head_on_answers_only(tiny_bundle, tmp_path):
    """train.strategy.answer_loss_sum / labelled tokens gives transformers' causal-LM loss and gradients, running
    the LM head on the positions whose next token is labelled: here multi-turn QA of different lengths, padded.
    It leaves out the attention mask (right padding: no real token sees a pad); the reference keeps it."""
    from llava_platform.data.collate import collate
    from llava_platform.data.images import PixelNormalizer
    from llava_platform.train.strategy import answer_loss_sum, labelled_tokens

    paths = generate(tmp_path, num_train=6, num_test=0, seed=1)
    encoder = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, paths.image_folder)
    samples = [encoder.encode(parse_record(r)) for r in json.loads(paths.finetune.read_text())]
    assert len({len(s.input_ids) for s in samples}) > 1  # padding inside the batch
    batch = collate(samples, tiny_bundle.tokenizer.pad_token_id)
    assert batch["pixel_values"].dtype == torch.uint8  # pixels travel as uint8, become floats on the device
    batch["pixel_values"] = PixelNormalizer(tiny_bundle.processor.image_processor)(batch["pixel_values"])
    model = copy.deepcopy(tiny_bundle.model).train()
    head_rows = []
    model.lm_head.register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[:-1].numel()))
    masks = []
    model.model.language_model.register_forward_pre_hook(lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")),
                                                          with_kwargs=True)  # fmt: skip

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    expected, expected_grads = loss_and_grads(lambda: model(**batch, use_cache=False).loss)
    loss, grads = loss_and_grads(lambda: answer_loss_sum(model, batch) / labelled_tokens(batch["labels"]))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert len(grads) == len(expected_grads) > 20
    assert all(torch.allclose(g, e, rtol=1e-4, atol=1e-7) for g, e in zip(grads, expected_grads))
    answers = int((batch["labels"][:, 1:] != -100).sum())
    assert head_rows == [batch["labels"].numel(), answers]  # all B x T positions, then only the answers'
    assert masks[0] is batch["attention_mask"] and masks[1] is None
    assert answers < 0.3 * batch["labels"].numel()


def test_global_batch_must_divide():
    assert spec(global_batch_size=32, micro_batch_size=4).accumulation_steps(workers=2) == 4
    with pytest.raises(ValueError, match=r"train.global_batch_size=12 is not a multiple of train.micro_batch_size=8 x 1 workers"):
        spec(global_batch_size=12).accumulation_steps(1)
    assert DataPlan.for_spec(100, spec(global_batch_size=8, epochs=1.5), workers=1).total_steps == 18


def test_loss_falls_and_metrics_are_reported(tiny_bundle, count_samples):
    bundle = fresh(tiny_bundle)
    lines = []
    history = train(bundle, count_samples, spec(epochs=4.0, log_every_steps=8), peak_tflops=1.0,
                    on_step=lambda m: lines.append(m.line()))  # fmt: skip
    assert len(history) == 32 and [m.step for m in history] == list(range(1, 33))
    first, last = sum(m.loss for m in history[:4]) / 4, sum(m.loss for m in history[-4:]) / 4
    assert last < first / 3, (first, last)
    assert all(m.tokens_per_s > m.samples_per_s > 0 and 0 < m.mfu < 1 and m.grad_norm > 0 for m in history)
    assert len(lines) == 4 and lines[-1].startswith("step 32/32 loss ") and "tokens/s mfu " in lines[-1]
    assert not bundle.model.training


def test_optimizer_betas_and_the_stable_then_decay_schedule(tiny_bundle):
    from llava_platform.train.loop import build_optimizer

    optimizer, scheduler = build_optimizer(tiny_bundle.model, spec(scheduler="warmup_stable_decay", warmup_ratio=0.1,
                                                                   decay_ratio=0.2, adam_betas=[0.9, 0.95]), 100)  # fmt: skip
    assert all(group["betas"] == (0.9, 0.95) for group in optimizer.param_groups)
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # 10 warmup steps, constant until step 80, then linear to 0 over the last 20
    assert lrs[5] == pytest.approx(5e-4) and lrs[10] == lrs[79] == pytest.approx(1e-3)
    assert lrs[90] == pytest.approx(5e-4) and lrs[99] == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="adam_betas"):
        spec(adam_betas=[0.9, 1.0])


def test_compiled_layers_and_partial_checkpointing_train_like_eager(tiny_bundle, count_samples):
    """train.compile and train.checkpoint_every_n_layers change speed and memory, never the numbers; and
    no training forward builds a KV cache (the runners pass use_cache=False: the LLM's own config says True)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from llava_platform.config import TrainJobSpec, load
    from llava_platform.train.loop import run_steps, sample_batches
    from llava_platform.train.setup import build_training

    def losses(*overrides):
        spec = load("jobs/configs/tiny_finetune.yaml", TrainJobSpec, ["model.checkpoint=null", "model.preset=tiny", "model.init=random",
                    "train.max_steps=2", "train.global_batch_size=8", "train.micro_batch_size=4", *overrides])  # fmt: skip
        plan = DataPlan.for_spec(len(count_samples), spec.train, workers=1)
        setup = build_training(spec, plan, torch.device("cpu"))
        batches = sample_batches(count_samples, plan, rank=0, window=spec.train.length_grouping_window)
        llm = setup.bundle.model.model.language_model
        llm.register_forward_hook(lambda module, args, output: caches.append(output.past_key_values))
        history = run_steps(setup.runner, batches, processor=tiny_bundle.processor, start_step=0,
                            total_steps=plan.total_steps, accumulation=plan.accumulation)  # fmt: skip
        return setup.bundle.model, [x for m in history for x in (m.loss, m.grad_norm)]

    caches = []
    model, reference = losses()
    assert len(caches) == 4 and caches == [None] * 4  # 2 steps x 2 micro-batches, none kept a KV cache
    fast_model, fast = losses("train.compile=true", "train.gradient_checkpointing=true", "train.checkpoint_every_n_layers=2")
    layers = [m for m in fast_model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) > 2 and all(layer._compiled_call_impl is not None for layer in layers)
    assert [layer.gradient_checkpointing for layer in layers] == [i % 2 == 0 for i in range(len(layers))]
    assert len(fast) == 4 and fast == pytest.approx(reference, rel=1e-4)  # loss, grad norm of steps 1 and 2
    assert fast_model.state_dict().keys() == model.state_dict().keys()  # checkpoints keep their names
