"""The data plan: every sample once per epoch, workers disjoint, a step the same samples whatever the worker
count, a resume skips exactly the trained steps."""

import random
from collections import Counter

import numpy as np
import pytest

from llava_platform.config import TrainSpec
from llava_platform.train.plan import DataPlan


def plan(**kw) -> DataPlan:
    base = dict(num_samples=203, epochs=2.0, global_batch=16, micro_batch=4, workers=2, seed=3)
    return DataPlan(**(base | kw))


def test_epochs_are_permutations_and_steps_cover_the_global_batch():
    p = plan()
    assert p.accumulation == 2 and p.total_steps == 25  # floor(2 * 203 / 16)
    order = p.order()
    assert len(order) == 25 * 16
    assert sorted(order[:203]) == list(range(203))  # the first epoch is a permutation
    second = order[203:]
    assert len(set(second.tolist())) == len(second) and not np.array_equal(second, order[: len(second)])  # a fresh one
    assert max(Counter(order.tolist()).values()) == 2
    assert np.array_equal(p.order(), order) and not np.array_equal(plan(seed=4).order(), order)


def test_workers_take_disjoint_contiguous_slices_of_each_step():
    p = plan()
    r0, r1 = p.worker_positions(0).tolist(), p.worker_positions(1).tolist()
    assert len(r0) == len(r1) == p.total_steps * p.rows_per_worker_step
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(p.total_steps * 16))
    assert r0[:8] == list(range(8)) and r1[:8] == list(range(8, 16))  # step 1: rank 0 first half, rank 1 second
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        p.worker_positions(2)


def test_for_spec_follows_the_train_spec():
    spec = TrainSpec(stage="finetune", output_dir="x", global_batch_size=32, micro_batch_size=8, epochs=1.0, seed=7)
    p = DataPlan.for_spec(100, spec, workers=2)
    assert (p.accumulation, p.total_steps, p.seed) == (2, 3, 7)
    with pytest.raises(ValueError, match="no trainable sample"):
        DataPlan.for_spec(0, spec, workers=1)


def test_max_steps_is_a_budget_whatever_the_dataset_size():
    spec = TrainSpec(stage="finetune", output_dir="x", global_batch_size=16, micro_batch_size=8, max_steps=30)
    for size in (40, 203, 5000):  # 12 epochs of the small set, a fraction of the large one
        p = DataPlan.for_spec(size, spec, workers=2)
        assert p.total_steps == 30 and len(p.order()) == 30 * 16 and p.passes == pytest.approx(30 * 16 / size)
        assert len(p.worker_samples(0)) == len(p.worker_samples(1)) == 30 * 8
    small = DataPlan.for_spec(40, spec, workers=2).order().tolist()
    assert Counter(small) == {i: 12 for i in range(40)}  # every sample equally often: whole permutations


def features(seed=0, n=203):
    rng = random.Random(seed)
    return np.array([rng.randint(20, 400) for _ in range(n)]), np.array([i % 5 != 0 for i in range(n)])


def test_grouping_keeps_each_window_on_its_samples_and_cuts_padding():
    lengths, has_image = features()
    p = plan()
    rows = p.worker_samples(0)
    batches = p.micro_batches(0, lengths, has_image, window_micro_batches=4)
    assert batches.shape == (p.total_steps * p.accumulation, 4)
    # a window (here 2 steps) is regrouped internally, but never mixes samples across windows
    window_rows = p.window_steps(4) * p.rows_per_worker_step
    for w in range(0, len(rows), window_rows):
        got = sorted(batches[w // 4 : (w + window_rows) // 4].ravel().tolist())
        assert got == sorted(rows[w : w + window_rows].tolist())
    # modality groups: at most one mixed micro-batch per window
    mixed = sum(len(set(has_image[b].tolist())) > 1 for b in batches)
    assert mixed <= len(rows) // window_rows + 1

    def waste(bs):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in bs)

    assert waste(p.micro_batches(0, lengths, has_image, window_micro_batches=16)) < waste(rows.reshape(-1, 4)) / 2


def test_a_step_holds_the_same_samples_whatever_the_worker_count():
    """With a window of one step (length_grouping_window <= accumulation), step s trains the same samples on 1 or 2
    workers: only the cut into micro-batches differs (the loss is normalised per step: train/strategy.py)."""
    lengths, has_image = features(1)
    one, two = plan(workers=1, epochs=1.0), plan(workers=2, epochs=1.0)  # 16 = 4 x 4 x 1 = 4 x 2 x 2
    single = one.micro_batches(0, lengths, has_image, window_micro_batches=1).reshape(one.total_steps, -1)
    split = [two.micro_batches(r, lengths, has_image, window_micro_batches=1).reshape(two.total_steps, -1) for r in (0, 1)]
    for step in range(one.total_steps):
        assert sorted(single[step].tolist()) == sorted(split[0][step].tolist() + split[1][step].tolist())


def test_resume_skips_exactly_the_trained_steps():
    lengths, has_image = features(2)
    p = plan()
    full = p.micro_batches(1, lengths, has_image)
    for start in (1, 2, 3, 7, 24):
        assert np.array_equal(p.micro_batches(1, lengths, has_image, start_step=start), full[start * p.accumulation :])
    assert p.micro_batches(1, lengths, has_image, start_step=p.total_steps).shape == (0, 4)
