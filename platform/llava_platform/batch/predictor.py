"""The model stage: an actor holding one InferenceEngine, answering batches of encoded rows.

    ENCODED_SCHEMA rows (batch.batch_size of them) -> BatchPredictor.__call__ -> ANSWER_SCHEMA rows
        error rows pass through as answers with their error; the others go to one engine.generate call,
        their inputs already encoded by the CPU stage (GenerationRequest.encoded), so the actor spends its
        time (its GPU's) on generate alone.

Runnable without Ray: `BatchPredictor(spec, sampling, "m")(table)` answers a table in-process.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from llava_platform.batch.answers import ANSWER_SCHEMA, answer_row
from llava_platform.batch.preprocess import decode_inputs
from llava_platform.cli import quiet_transformers
from llava_platform.config import ModelSpec, SamplingSpec, StorageSpec
from llava_platform.inference.engine import GenerationRequest, GenerationResult, InferenceEngine
from llava_platform.model.builder import load_checkpoint
from llava_platform.storage import Storage

__all__ = ["BatchPredictor", "model_id_of"]


def model_id_of(checkpoint: str) -> str:
    """The answers' default model_id: the checkpoint's folder name ("tiny-base"), with its parent's when that is
    final/ ("runs/7b/final" -> "7b-final")."""
    parts = Path(checkpoint.split("://", 1)[-1].rstrip("/")).parts
    return "-".join(parts[-2:]) if len(parts) > 1 and parts[-1] == "final" else parts[-1]


class BatchPredictor:
    """One model copy. `gpu`: load it on this actor's GPU; else CPU with `threads` torch threads."""

    def __init__(self, model: ModelSpec, sampling: SamplingSpec, model_id: str, storage: StorageSpec | None = None,
                 gpu: bool = False, threads: int | None = None):  # fmt: skip
        quiet_transformers()  # no weight-loading bars in the job's log
        if not gpu and threads:
            torch.set_num_threads(threads)
        path = Storage(storage).local_checkpoint(model.checkpoint)
        device = "cuda" if gpu else None
        self.engine = InferenceEngine(load_checkpoint(path, model.model_copy(update={"checkpoint": path}), device))
        self.sampling = sampling
        self.model_id = model_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        asked = [i for i, row in enumerate(rows) if row["error"] is None]
        results = dict(zip(asked, self._generate([rows[i] for i in asked])))
        return pa.Table.from_pylist([answer_row(row, results.get(i), self.model_id) for i, row in enumerate(rows)],
                                    schema=ANSWER_SCHEMA)  # fmt: skip

    def _generate(self, asked: list[dict]) -> list[GenerationResult | None]:
        """One generate call for the asked rows. If it fails (a GPU out of memory on a batch of long prompts), each row
        alone; a row that fails alone gets a generation_failed error (set on it) instead of failing the job."""
        if not asked:
            return []
        requests = [GenerationRequest([], encoded=decode_inputs(row["inputs"])) for row in asked]
        try:
            return self.engine.generate(requests, self.sampling)
        except (RuntimeError, ValueError) as e:  # torch's OutOfMemoryError is a RuntimeError
            if len(asked) == 1:
                _free_accelerator_memory()
                asked[0]["error"] = f"generation_failed: {type(e).__name__}: {str(e)[:300]}"
                return [None]
        _free_accelerator_memory()
        return [self._generate([row])[0] for row in asked]


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
