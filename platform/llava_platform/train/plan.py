"""Which samples a run trains on, in which order, on which worker: fixed before the first step.

The plan depends only on (dataset size, epochs or max_steps, global batch, workers, micro-batch, seed):

    run position p          -> sample order[p]     (epochs concatenated, each a fresh permutation)
    optimizer step s        -> positions [s*G, (s+1)*G)                     G = global batch
    worker r within step s  -> positions [s*G + r*M*A, s*G + (r+1)*M*A)     M = micro-batch, A = accumulation

So a restart at step s knows exactly which samples are left on every worker (the data position
is the step count), and no sample of a finished step is trained again; and a step holds the same
samples whatever the number of workers. Inside a worker, the samples of a few steps at a time are
sorted by modality and length and cut into micro-batches (LLaVA's group_by_modality_length), which
wastes less compute on padding.

Everything is index arithmetic on numpy arrays (a sample is its position among the dataset's good
records): each training worker computes its own micro-batches from the plan and the samples'
lengths, and only then asks for those samples, so a resumed worker decodes nothing it skips.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from llava_platform.config import TrainSpec

__all__ = ["DataPlan"]


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

    def order(self) -> np.ndarray:
        """Sample of every run position (total_steps * global_batch of them), int64: each epoch a permutation drawn
        by Python's random.Random(seed) (~0.5 s for 665k samples; the orders of runs before numpy plans are kept)."""
        needed = self.total_steps * self.global_batch
        rng = random.Random(self.seed)
        epochs = []
        for _ in range(math.ceil(needed / self.num_samples)):
            epoch = list(range(self.num_samples))
            rng.shuffle(epoch)
            epochs.append(np.asarray(epoch, dtype=np.int64))
        return np.concatenate(epochs)[:needed]

    def worker_positions(self, rank: int) -> np.ndarray:
        """Run positions this worker trains, in step order (rows_per_worker_step per step)."""
        if not 0 <= rank < self.workers:
            raise ValueError(f"rank {rank} outside 0..{self.workers - 1}")
        per = self.rows_per_worker_step
        steps = np.arange(self.total_steps)[:, None] * self.global_batch + rank * per
        return (steps + np.arange(per)).ravel()

    def worker_samples(self, rank: int) -> np.ndarray:
        """The sample of every position this worker trains, in step order."""
        return self.order()[self.worker_positions(rank)]

    def window_steps(self, window_micro_batches: int) -> int:
        """Whole optimizer steps per grouping window of at least `window_micro_batches` micro-batches."""
        return max(1, math.ceil(window_micro_batches / self.accumulation))

    def micro_batches(self, rank: int, lengths: np.ndarray, has_image: np.ndarray, window_micro_batches: int = 16,
                      start_step: int = 0) -> np.ndarray:  # fmt: skip
        """This worker's micro-batches from optimizer step `start_step` + 1 on: (n, micro_batch) sample indices,
        `accumulation` rows per step.

        A window of whole steps is sorted by (modality, length), longest first, cut into micro-batches
        whose order is then shuffled (seeded per window, the same on every worker). `lengths` and
        `has_image` are per sample (num_samples,). Every micro-batch is full, so every worker runs the
        same number of steps.
        """
        per_window = self.window_steps(window_micro_batches) * self.rows_per_worker_step
        samples = self.worker_samples(rank)
        lengths, has_image = np.asarray(lengths, dtype=np.int64), np.asarray(has_image, dtype=np.int64)
        first_window, skip = divmod(start_step * self.rows_per_worker_step, per_window)
        batches = []
        for window, start in enumerate(range(first_window * per_window, len(samples), per_window), first_window):
            rows = samples[start : start + per_window]
            rows = rows[np.lexsort((-lengths[rows], -has_image[rows]))]  # stable: images first, then longest first
            cut = rows.reshape(-1, self.micro_batch)
            shuffled = list(range(len(cut)))
            random.Random(self.seed * 1_000_003 + window).shuffle(shuffled)
            batches.append(cut[shuffled][skip // self.micro_batch :])
            skip = 0
        return np.concatenate(batches) if batches else np.zeros((0, self.micro_batch), dtype=np.int64)
