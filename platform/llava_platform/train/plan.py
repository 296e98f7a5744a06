"""Which samples a run trains on, in which order, on which worker: fixed before the first step.

The plan depends only on (dataset size, epochs or max_steps, global batch, workers, micro-batch, seed):

    run position p          -> sample order[p]     (epochs concatenated, each a fresh permutation)
    optimizer step s        -> positions [s*G, (s+1)*G)                     G = global batch
    worker r within step s  -> positions [s*G + r*M*A, s*G + (r+1)*M*A)     M = micro-batch, A = accumulation

So a restart at step s knows exactly which samples are left on every worker (the data position
is the step count), and no sample of a finished step is trained again. Inside a worker, the rows
of a few steps at a time are sorted by modality and length and cut into micro-batches
(LLaVA's group_by_modality_length), which wastes less compute on padding.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from llava_platform.config import TrainSpec

__all__ = ["DataPlan", "grouped_micro_batches"]

Row = TypeVar("Row")


@dataclass(frozen=True)
class DataPlan:
    num_samples: int
    epochs: float
    global_batch: int
    micro_batch: int
    workers: int
    seed: int
    max_steps: int | None = None  # replaces epochs

    @classmethod
    def for_spec(cls, num_samples: int, train: TrainSpec, workers: int) -> DataPlan:
        if num_samples == 0:
            raise ValueError("the dataset has no trainable sample; check data.path and the validation report")
        return cls(num_samples, train.epochs or 1.0, train.global_batch_size, train.micro_batch_size, workers, train.seed,
                   train.max_steps)

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.workers)

    @property
    def total_steps(self) -> int:
        """max_steps, else the optimizer steps for `epochs` passes at the global batch size (at least one)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.floor(self.epochs * self.num_samples / self.global_batch))

    @property
    def passes(self) -> float:
        """Passes over the data the run makes (epochs, or what max_steps comes to)."""
        return self.total_steps * self.global_batch / self.num_samples

    @property
    def rows_per_worker_step(self) -> int:
        return self.micro_batch * self.accumulation

    def order(self) -> list[int]:
        """Sample index of every run position: total_steps * global_batch of them."""
        needed = self.total_steps * self.global_batch
        rng = random.Random(self.seed)
        order: list[int] = []
        while len(order) < needed:
            epoch = list(range(self.num_samples))
            rng.shuffle(epoch)
            order += epoch
        return order[:needed]

    def worker_positions(self, rank: int) -> list[int]:
        """Run positions this worker trains, in step order (rows_per_worker_step per step)."""
        if not 0 <= rank < self.workers:
            raise ValueError(f"rank {rank} outside 0..{self.workers - 1}")
        per = self.rows_per_worker_step
        return [s * self.global_batch + rank * per + i for s in range(self.total_steps) for i in range(per)]

    def worker_records(self, rank: int) -> list[int]:
        """The sample of every position this worker trains, in step order."""
        order = self.order()
        return [order[p] for p in self.worker_positions(rank)]

    def window_steps(self, window_micro_batches: int) -> int:
        """Whole optimizer steps per grouping window of at least `window_micro_batches` micro-batches."""
        return max(1, math.ceil(window_micro_batches / self.accumulation))


def grouped_micro_batches(rows: Iterator[Row], plan: DataPlan, *, length: Callable[[Row], int],
                          has_image: Callable[[Row], bool], window_micro_batches: int = 16,
                          start_step: int = 0) -> Iterator[list[Row]]:  # fmt: skip
    """This worker's rows (in plan order) -> micro-batches, `accumulation` of them per optimizer step.

    Rows are taken a window of whole steps at a time, sorted by (modality, length) and cut into
    micro-batches, whose order is then shuffled (seeded per window). Every micro-batch is full, so
    every worker runs the same number of steps. Steps before `start_step` (already trained before a
    restart) are read and dropped, never trained.
    """
    window_steps = plan.window_steps(window_micro_batches)
    per_step = plan.rows_per_worker_step
    skip_windows, skip_in_window = divmod(start_step, window_steps)
    for _ in range(skip_windows * window_steps * per_step):
        next(rows)
    window = skip_windows
    while True:
        taken = [row for _, row in zip(range(window_steps * per_step), rows)]
        if not taken:
            return
        if len(taken) % per_step:
            raise ValueError(f"worker data ended mid-step: {len(taken)} rows is not a multiple of {per_step}")
        taken.sort(key=lambda r: (has_image(r), length(r)), reverse=True)
        batches = [taken[i : i + plan.micro_batch] for i in range(0, len(taken), plan.micro_batch)]
        random.Random(plan.seed * 1_000_003 + window).shuffle(batches)
        yield from batches[skip_in_window * plan.accumulation :]
        skip_in_window = 0
        window += 1
