"""Check a dataset before training: every bad record named, token lengths summarised.

Used by `jobs.validate_data` and, before the first step, by the training jobs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from llava_platform.data.images import ImageError
from llava_platform.data.records import BadRecord, Record, read_records
from llava_platform.data.samples import EncodedSample, SampleEncoder

__all__ = ["Problem", "ValidationReport", "DataError", "check_record", "validate_dataset"]

# problem kinds, in report order
MALFORMED, MISSING_IMAGE, UNREADABLE_IMAGE, TOO_LONG, UNTRAINABLE = (
    "malformed", "missing_image", "unreadable_image", "too_long", "no_trained_token",
)  # fmt: skip


class DataError(ValueError):
    """The dataset fails the spec's policy; the message lists the bad record ids."""


@dataclass
class Problem:
    id: str
    kind: str
    reason: str


@dataclass
class ValidationReport:
    path: str
    total: int = 0
    problems: list[Problem] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens per good sample, images expanded
    truncated: int = 0  # samples cut to max_length that still have trained tokens

    @property
    def ok(self) -> int:
        return self.total - len(self.problems)

    @property
    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    @property
    def bad_ids(self) -> list[str]:
        return [p.id for p in self.problems]

    def add(self, problem: Problem | None, length: int = 0, truncated: bool = False) -> None:
        """Count one checked record: its problem, or its token length (and whether it was truncated)."""
        self.total += 1
        if problem is not None:
            self.problems.append(problem)
            return
        self.truncated += truncated
        self.lengths.append(length)

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        values = np.percentile(self.lengths, [50, 90, 99, 100])
        return {k: int(v) for k, v in zip(("p50", "p90", "p99", "max"), values)}

    def format(self, max_listed: int = 50) -> str:
        lines = [f"{self.path}: {self.total} samples, {self.ok} ok, {len(self.problems)} with problems"]
        for kind, n in sorted(self.counts.items()):
            lines.append(f"  {kind}: {n}")
        if self.truncated:
            lines.append(f"  truncated to max_length (still trainable): {self.truncated}")
        if self.lengths:
            lines.append("  tokens per sample: " + ", ".join(f"{k} {v}" for k, v in self.percentiles().items()))
        for p in self.problems[:max_listed]:
            lines.append(f"  - {p.id}: {p.kind}: {p.reason}")
        if len(self.problems) > max_listed:
            lines.append(f"  ... and {len(self.problems) - max_listed} more")
        return "\n".join(lines)

    def enforce(self, on_bad_record: str = "fail", max_untrainable_fraction: float = 0.0) -> None:
        """Apply DataSpec's policy before training: raise DataError, or allow skipping with the ids reported.

        fail: any problem stops the job. skip: malformed / image problems are skipped (and reported by
        the caller); samples with no trained token are still limited to max_untrainable_fraction.
        """
        untrainable = [p.id for p in self.problems if p.kind == UNTRAINABLE]
        if on_bad_record == "fail" and len(self.problems) > len(untrainable):
            raise DataError(f"{self.path}: bad records (set data.on_bad_record: skip to drop them):\n{self.format()}")
        if self.total and len(untrainable) / self.total > max_untrainable_fraction:
            raise DataError(
                f"{self.path}: {len(untrainable)} of {self.total} samples have no trained token "
                f"({len(untrainable) / self.total:.1%} > data.max_untrainable_fraction={max_untrainable_fraction}): "
                f"{', '.join(untrainable[:20])}{' ...' if len(untrainable) > 20 else ''}"
            )


def _classify(encoder: SampleEncoder, record, error: Exception) -> str:
    if isinstance(error.__cause__, ImageError):
        missing = [p for p in record.images if not encoder.image_path(p).exists()]
        return MISSING_IMAGE if missing else UNREADABLE_IMAGE
    return TOO_LONG if "max_length" in str(error) else MALFORMED


def check_record(encoder: SampleEncoder, item: Record | BadRecord) -> tuple[Problem | None, EncodedSample | None]:
    """One record through the same encoding training uses: its problem, or its encoded sample."""
    if isinstance(item, BadRecord):
        return Problem(item.id, MALFORMED, item.reason), None
    try:
        sample = encoder.encode(item)
    except ValueError as e:  # RecordError, with the ImageError / template error chained
        return Problem(item.id, _classify(encoder, item, e), getattr(e, "reason", str(e))), None
    if sample.num_trained == 0:
        return Problem(item.id, UNTRAINABLE, "no token left to train on (check the template and max_length)"), None
    return None, sample


def validate_dataset(path: str, encoder: SampleEncoder) -> tuple[ValidationReport, list[EncodedSample]]:
    """Encode every record; returns the report and the good samples (so a job need not encode twice)."""
    report = ValidationReport(path)
    good: list[EncodedSample] = []
    for item in read_records(path):
        problem, sample = check_record(encoder, item)
        if sample is None:
            report.add(problem)
        else:
            report.add(None, len(sample.input_ids), sample.truncated)
            good.append(sample)
    return report, good
