"""The data check: every bad record named before the first step, without decoding a pixel.

Per record (`check_entries`, a pure function the Ray Data tasks of data/pipeline.py run):

    JSON text -> parse_raw            malformed: not JSON, bad turns, <image> count != images
    each image -> inspect_image       missing_image, unreadable_image: header (format, size, mode) and
                                      end marker (truncation), read from storage; no pixel decoded
    text -> template -> tokenizer     too_long: image tokens past data.max_length
    + image tokens from header sizes  no_trained_token: nothing left to learn after truncation
                                      (SampleEncoder.positions: encode()'s layout, from token counts)

Each result row keeps the (size, mtime) stamp of every image it looked at: data/pipeline.py caches
the rows and, on a later run, re-checks only records whose images changed.

`ValidationReport` sums the rows up in bounded memory (counts, token lengths, the first problems;
every problem goes to a file), for the job's log and `jobs.validate_data`.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from llava_platform.data.encode import first_trained_token, token_ids_many
from llava_platform.data.image_check import inspect_image
from llava_platform.data.images import ImageError, ImageNotFound
from llava_platform.data.records import BadRecord, Record, RecordError, parse_raw
from llava_platform.data.samples import SampleEncoder
from llava_platform.storage import FileStamp

__all__ = ["Problem", "ValidationReport", "DataError", "check_entries", "CHECK_SCHEMA", "CHECK_COLUMNS", "KINDS"]

# problem kinds, in report order
MALFORMED, MISSING_IMAGE, UNREADABLE_IMAGE, TOO_LONG, UNTRAINABLE = (
    "malformed", "missing_image", "unreadable_image", "too_long", "no_trained_token",
)  # fmt: skip
KINDS = (MALFORMED, MISSING_IMAGE, UNREADABLE_IMAGE, TOO_LONG, UNTRAINABLE)

# one row per record: "kind" is "" for a good record; image_* list every image of the record (size -1: none there)
CHECK_SCHEMA = pa.schema([
    ("index", pa.int64()), ("id", pa.string()), ("kind", pa.string()), ("reason", pa.string()), ("length", pa.int32()),
    ("truncated", pa.bool_()), ("has_image", pa.bool_()), ("images", pa.list_(pa.string())),
    ("image_sizes", pa.list_(pa.int64())), ("image_mtimes", pa.list_(pa.int64())),
])  # fmt: skip
CHECK_COLUMNS = tuple(CHECK_SCHEMA.names)
LISTED = 50  # problems a report keeps in memory (and prints); the rest are counted and written to a file


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
    counts: Counter = field(default_factory=Counter)  # problem kind -> records
    problems: list[Problem] = field(default_factory=list)  # the first LISTED of them
    lengths: array = field(default_factory=lambda: array("i"))  # tokens per good sample, images expanded
    truncated: int = 0  # samples cut to max_length that still have trained tokens
    problems_file: str | None = None  # where every problem is listed, one JSON line each

    @property
    def ok(self) -> int:
        return self.total - self.bad

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def add(self, problem: Problem) -> None:
        """Count one bad record (the first LISTED are kept whole)."""
        self.total += 1
        self.counts[problem.kind] += 1
        if len(self.problems) < LISTED:
            self.problems.append(problem)

    def add_good(self, lengths: np.ndarray, truncated: np.ndarray) -> None:
        """Count many good records at once: their token lengths and truncation flags."""
        self.total += len(lengths)
        self.truncated += int(truncated.sum())
        self.lengths.extend(np.asarray(lengths, dtype=np.int32).tolist())

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        values = np.percentile(np.frombuffer(self.lengths, dtype=np.int32), [50, 90, 99, 100])
        return {k: int(v) for k, v in zip(("p50", "p90", "p99", "max"), values)}

    def format(self) -> str:
        lines = [f"{self.path}: {self.total} samples, {self.ok} ok, {self.bad} with problems"]
        for kind in KINDS:
            if self.counts[kind]:
                lines.append(f"  {kind}: {self.counts[kind]}")
        if self.truncated:
            lines.append(f"  truncated to max_length (still trainable): {self.truncated}")
        if self.lengths:
            lines.append("  tokens per sample: " + ", ".join(f"{k} {v}" for k, v in self.percentiles().items()))
        for p in self.problems:
            lines.append(f"  - {p.id}: {p.kind}: {p.reason}")
        if self.bad > len(self.problems):
            where = f" (every one in {self.problems_file})" if self.problems_file else ""
            lines.append(f"  ... and {self.bad - len(self.problems)} more{where}")
        return "\n".join(lines)

    def enforce(self, on_bad_record: str = "fail", max_untrainable_fraction: float = 0.0) -> None:
        """Apply DataSpec's policy before training: raise DataError, or allow skipping with the ids reported.

        fail: any problem stops the job. skip: malformed / image problems are skipped (and reported by
        the caller); samples with no trained token are still limited to max_untrainable_fraction.
        """
        untrainable = self.counts[UNTRAINABLE]
        if on_bad_record == "fail" and self.bad > untrainable:
            raise DataError(f"{self.path}: bad records (set data.on_bad_record: skip to drop them):\n{self.format()}")
        if self.total and untrainable / self.total > max_untrainable_fraction:
            listed = [p.id for p in self.problems if p.kind == UNTRAINABLE]
            raise DataError(
                f"{self.path}: {untrainable} of {self.total} samples have no trained token "
                f"({untrainable / self.total:.1%} > data.max_untrainable_fraction={max_untrainable_fraction}): "
                f"{', '.join(listed[:20])}{' ...' if untrainable > len(listed[:20]) else ''}"
            )


def problem_line(row: dict) -> str:
    """One problem of a check row, as a line of the problems file."""
    return json.dumps({"index": row["index"], "id": row["id"], "kind": row["kind"], "reason": row["reason"]})


# --------------------------------------------------------------------------- the check of one batch


@dataclass
class _Checked:
    """One record on its way through the check."""

    index: int
    record: Record | BadRecord
    images: list[str]  # resolved paths
    stamps: list[FileStamp | None]  # per image; None where there is no file
    kind: str = ""
    reason: str = ""
    tokens_per_image: list[int] = field(default_factory=list)


def _inspect(item: _Checked, encoder: SampleEncoder) -> None:
    """Headers of the record's images: their token counts, or the first image problem."""
    for path, stamp in zip(item.images, item.stamps):
        try:
            if stamp is None:
                raise ImageNotFound.at(path)
            header = inspect_image(path, encoder.storage, encoder.max_image_pixels, stamp)
        except ImageNotFound as e:
            item.kind, item.reason = MISSING_IMAGE, str(e)
            return
        except ImageError as e:
            item.kind, item.reason = UNREADABLE_IMAGE, str(e)
            return
        item.tokens_per_image.append(encoder.image_tokens(header.height, header.width))


def check_entries(indices, labels, raws, encoder: SampleEncoder) -> pa.Table:
    """The check of a batch of records (their file index, label and JSON text) -> a CHECK_SCHEMA table."""
    items = []
    for index, label, raw in zip(indices, labels, raws):
        record = parse_raw(str(raw), str(label))
        images = [encoder.image_path(p) for p in record.images] if isinstance(record, Record) else []
        item = _Checked(int(index), record, images, encoder.storage.stat_many(images) if images else [])
        if isinstance(record, BadRecord):
            item.kind, item.reason = MALFORMED, record.reason
        else:
            _inspect(item, encoder)
        items.append(item)
    lengths = _measure([i for i in items if not i.kind], encoder)
    out: dict[str, list] = {k: [] for k in CHECK_COLUMNS}
    for item in items:
        length, truncated = lengths.get(item.index, (0, False))
        row = {"index": item.index, "id": item.record.id, "kind": item.kind, "reason": item.reason, "length": length,
               "truncated": truncated, "has_image": bool(item.images), "images": item.images,
               "image_sizes": [s.size if s else -1 for s in item.stamps],
               "image_mtimes": [s.mtime_ns if s else -1 for s in item.stamps]}  # fmt: skip
        for k in CHECK_COLUMNS:
            out[k].append(row[k])
    return pa.table(out, schema=CHECK_SCHEMA)


def _measure(items: list[_Checked], encoder: SampleEncoder) -> dict[int, tuple[int, bool]]:
    """Token length and truncation of each record whose images are fine (one tokenizer call for the batch, without
    character offsets); a record that does not fit gets its kind and reason instead.

    Most records are short: their length is the text's tokens plus the images' extra tokens, nothing is cut, and
    every trained span of the template (each reply and its end) holds a token, so they are trained. A record that
    is cut is trained iff its first labelled token (encode.first_trained_token) comes before the cut, as in
    SampleEncoder.encode.
    """
    rendered = []
    for item in items:
        try:
            rendered.append(encoder.render(item.record))
        except RecordError as e:
            item.kind, item.reason = MALFORMED, e.reason
    items = [i for i in items if not i.kind]
    out = {}
    for item, text, ids in zip(items, rendered, token_ids_many(encoder.tokenizer, [r.text for r in rendered])):
        counts = item.tokens_per_image
        length = len(ids) + sum(counts) - len(counts)
        simple = ids.count(encoder.image_token_id) == len(counts) and length <= encoder.max_length
        if not (simple and text.trained_spans and all(end > start for start, end in text.trained_spans)):
            try:
                length, start = encoder.positions(item.record, counts, ids)
            except RecordError as e:
                item.kind, item.reason = (TOO_LONG if "max_length" in e.reason else MALFORMED), e.reason
                continue
            first = first_trained_token(encoder.tokenizer, text, ids)
            if first is None or start[first] >= encoder.max_length:
                item.kind, item.reason = UNTRAINABLE, "no token left to train on (check the template and max_length)"
                continue
        out[item.index] = (min(length, encoder.max_length), length > encoder.max_length)
    return out
