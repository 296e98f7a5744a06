"""The data plan: every sample once per epoch, workers disjoint, a resume skips exactly the trained steps."""

import random
from collections import Counter

import pytest

from llava_platform.config import TrainSpec
from llava_platform.train.plan import DataPlan, grouped_micro_batches


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
    assert len(set(second)) == len(second) and second != order[: len(second)]  # a fresh permutation
    assert max(Counter(order).values()) == 2
    assert p.order() == order and plan(seed=4).order() != order


def test_workers_take_disjoint_contiguous_slices_of_each_step():
    p = plan()
    r0, r1 = p.worker_positions(0), p.worker_positions(1)
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
        assert len(p.worker_records(0)) == len(p.worker_records(1)) == 30 * 8
    small = DataPlan.for_spec(40, spec, workers=2).order()
    assert Counter(small) == {i: 12 for i in range(40)}  # every sample equally often: whole permutations


def rows_for(p: DataPlan, rank: int, lengths: list[int], has_image: list[bool]):
    order = p.order()
    return [(order[pos], lengths[order[pos]], has_image[order[pos]]) for pos in p.worker_positions(rank)]


def micro_batches(p, rows, start_step=0, window=4):
    return list(grouped_micro_batches(iter(rows), p, length=lambda r: r[1], has_image=lambda r: r[2],
                                      window_micro_batches=window, start_step=start_step))  # fmt: skip


def test_grouping_keeps_each_step_on_its_samples_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(203)]
    has_image = [i % 5 != 0 for i in range(203)]
    p = plan()
    rows = rows_for(p, 0, lengths, has_image)
    batches = micro_batches(p, rows)
    assert all(len(b) == 4 for b in batches) and len(batches) == p.total_steps * p.accumulation
    # a window (here 2 steps) is regrouped internally, but never mixes samples across windows
    window_rows = p.window_steps(4) * p.rows_per_worker_step
    for w in range(0, len(rows), window_rows):
        got = sorted(r[0] for b in batches[w // 4 : (w + window_rows) // 4] for r in b)
        assert got == sorted(r[0] for r in rows[w : w + window_rows])
    # modality groups: at most one mixed micro-batch per window
    mixed = sum(len({r[2] for r in b}) > 1 for b in batches)
    assert mixed <= len(rows) // window_rows + 1

    def waste(bs):
        return sum(max(r[1] for r in b) * len(b) - sum(r[1] for r in b) for b in bs)

    plain = [rows[i : i + 4] for i in range(0, len(rows), 4)]
    assert waste(micro_batches(p, rows, window=16)) < waste(plain) / 2


def test_resume_skips_exactly_the_trained_steps():
    lengths = [(i * 37) % 101 + 1 for i in range(203)]
    has_image = [True] * 203
    p = plan()
    rows = rows_for(p, 1, lengths, has_image)
    full = micro_batches(p, rows)
    for start in (1, 2, 3, 7, 24):
        resumed = micro_batches(p, rows, start_step=start)
        assert resumed == full[start * p.accumulation :], start
    assert micro_batches(p, rows, start_step=p.total_steps) == []


def test_rows_ending_mid_step_are_an_error():
    p = plan(epochs=1.0)
    rows = rows_for(p, 0, [10] * 203, [True] * 203)[:-1]
    with pytest.raises(ValueError, match="ended mid-step"):
        micro_batches(p, rows)
