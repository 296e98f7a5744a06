"""Train a base further on a mix of datasets, in one process: how jobs/assets/tiny-base is refreshed.

    python -m jobs.refresh_base --base jobs/assets/tiny-base --out runs/base_next --steps 4000 \\
        --data runs/drills/between_color:10000 runs/drills/side:30000 runs/varied2:20000

Each --data is FOLDER[:COUNT], the first COUNT records of FOLDER/finetune.json (all without COUNT),
images relative to FOLDER. The records are pooled and shuffled (seed 0); --config's train: section
(the stage 2 recipe, tiny_finetune.yaml, by default) with max_steps = --steps trains on them with
train.loop.train, the step code of the Ray job's worker. Every record is parsed and its image found
before the first step; samples are encoded when a micro-batch draws them. A refresh is one worker
over ~10^5 fresh scenes: too many to cache encoded (~110 KB each at 96 px), and streaming them through
Ray Data on the same two cores is the slower way (README, "The tiny base", has both speeds).
Writes an HF checkpoint (save_checkpoint) and, beside its weights, refresh.json: the command's
arguments, steps, seconds and last loss, and with --held-out FOLDER the saved model's greedy exact
match on FOLDER/test.json (overall and by kind), which tests/test_tiny_base.py re-scores.
"""

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import TrainJobSpec, load
from llava_platform.data.records import Record, RecordError, parse_record
from llava_platform.data.samples import EncodedSample, SampleEncoder
from llava_platform.eval.heldout import answer_held_out
from llava_platform.model.builder import ModelBundle
from llava_platform.model.checkpoint import load_checkpoint, save_checkpoint
from llava_platform.train.loop import train

RECIPE = Path("jobs/configs/tiny_finetune.yaml")  # python -m jobs.refresh_base runs from the repository root


class EncodedOnDemand(Sequence[EncodedSample]):
    """(encoder, record) pairs that encode when indexed: train.loop draws micro-batches by index."""

    def __init__(self, pairs: list[tuple[SampleEncoder, Record]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> EncodedSample:  # type: ignore[override]  # no slices
        encoder, record = self.pairs[index]
        return encoder.encode(record)


def read_part(part: str, bundle: ModelBundle) -> list[tuple[SampleEncoder, Record]]:
    """FOLDER[:COUNT] -> its first COUNT records, parsed, each image checked to exist."""
    name, colon, count = part.rpartition(":")
    folder, count = (Path(name), count) if colon else (Path(part), "")
    if not (folder / "finetune.json").is_file():
        raise ValueError(f"--data {part}: no {folder / 'finetune.json'}; give FOLDER[:COUNT] of a dataset that "
                         "jobs.make_synthetic_data wrote (--varied or --drill)")  # fmt: skip
    raw = json.loads((folder / "finetune.json").read_text())
    if count and not (count.isdigit() and 0 < int(count) <= len(raw)):
        raise ValueError(f"--data {part}: COUNT must be a whole number from 1 to {len(raw)} (the records there)")
    records = [parse_record(r, i) for i, r in enumerate(raw[: int(count) if count else None])]
    encoder = SampleEncoder(bundle.processor, bundle.template, folder)
    for record in records:
        for image in record.images:
            if not Path(encoder.image_path(image)).is_file():
                raise RecordError(record.id, f"image {encoder.image_path(image)} is missing")
    return [(encoder, r) for r in records]


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="checkpoint to start from")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--steps", required=True, type=int, help="optimizer steps (the recipe's global batch each)")
    parser.add_argument("--data", required=True, nargs="+", metavar="FOLDER[:COUNT]", help="datasets to pool")
    parser.add_argument("--config", type=Path, default=RECIPE, help="YAML whose train: section is the recipe")
    parser.add_argument("--held-out", type=Path, metavar="FOLDER", help="score the result on FOLDER/test.json")
    parser.add_argument("--log-every", type=int, default=500, help="print a progress line every this many steps")
    args = parser.parse_args()
    quiet_transformers()
    torch.manual_seed(0)
    recipe = load(args.config, TrainJobSpec, [f"train.max_steps={args.steps}", f"train.output_dir={args.out}"]).train
    bundle = load_checkpoint(args.base)
    pairs = []
    for part in args.data:
        pairs += (got := read_part(part, bundle))
        print(f"{part}: {len(got)} records", flush=True)
    random.Random(0).shuffle(pairs)
    start = time.perf_counter()
    history = train(bundle, EncodedOnDemand(pairs), recipe,
                    on_step=lambda m: print(m.line(), flush=True) if m.step % args.log_every == 0 else None)  # fmt: skip
    seconds = time.perf_counter() - start
    save_checkpoint(replace(bundle, spec=bundle.spec.model_copy(update={"checkpoint": str(args.out)})), args.out)  # names itself
    summary = {"base": str(args.base), "data": args.data, "config": str(args.config), "steps": len(history),
               "records": len(pairs), "train_seconds": round(seconds, 1), "last_loss": history[-1].loss}  # fmt: skip
    print(f"trained {len(history)} steps on {len(pairs)} records in {seconds:.0f} s, last loss {history[-1].loss:.4f} -> {args.out}")
    if args.held_out is not None:
        answers = answer_held_out(args.out, args.held_out / "test.json", args.held_out)
        summary["held_out"] = {"folder": str(args.held_out), "num_test": len(answers.golds), "accuracy": answers.accuracy,
                               "by_kind": answers.by_kind()}  # fmt: skip
        print(f"held-out exact match on {args.held_out / 'test.json'}: {answers.accuracy:.1%} of {len(answers.golds)}")
    (args.out / "refresh.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
