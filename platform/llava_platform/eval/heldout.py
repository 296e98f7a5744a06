"""Answer a held-out question file with a checkpoint and score it (the demo's and the tiny base's check).

A held-out file is LLaVA JSON with one question per record; the gold answer is the record's "answer"
field, else its reply; an optional "kind" field groups the scores.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from llava_platform.config import SamplingSpec
from llava_platform.data.images import load_image
from llava_platform.data.records import read_records
from llava_platform.eval.metrics import accuracy
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.model import load_checkpoint

__all__ = ["HeldOutAnswers", "answer_held_out"]


@dataclass
class HeldOutAnswers:
    questions: list[str]  # without the image placeholder
    golds: list[str]
    predictions: list[str]
    kinds: list[str | None]  # the records' "kind" field, where they have one

    @property
    def accuracy(self) -> float:
        return accuracy(self.predictions, self.golds)

    def by_kind(self) -> dict[str, float]:
        """Exact match per question kind (empty when the records name no kinds)."""
        groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
        for kind, prediction, gold in zip(self.kinds, self.predictions, self.golds):
            if kind is not None:
                groups[kind][0].append(prediction)
                groups[kind][1].append(gold)
        return {kind: accuracy(*groups[kind]) for kind in sorted(groups)}


def answer_held_out(checkpoint: str | Path, test_path: str | Path, image_folder: str | Path, batch_size: int = 64) -> HeldOutAnswers:
    """Greedy answers (8 new tokens at most) of the checkpoint to every question in test_path."""
    engine = InferenceEngine(load_checkpoint(checkpoint))
    records = list(read_records(test_path))
    requests = [GenerationRequest(r.messages[:1], [load_image(Path(image_folder) / r.images[0])]) for r in records]
    predictions = []
    for i in range(0, len(requests), batch_size):
        predictions += [r.text for r in engine.generate(requests[i : i + batch_size], SamplingSpec(max_new_tokens=8))]
    return HeldOutAnswers(
        questions=[r.messages[0].content.removeprefix("<image>\n") for r in records],
        golds=[r.extra.get("answer", r.messages[1].content) for r in records],
        predictions=predictions,
        kinds=[r.extra.get("kind") for r in records],
    )
