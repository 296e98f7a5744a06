"""Train a base further on a mix of datasets, in one process: the refresh stages (v5-v7) of the tiny base.

    python -m experiments.tiny_recipe.refresh_base --base jobs/assets/tiny-base --out runs/base_next --steps 4000 \\
        --data runs/drills/between_color_5 runs/drills/side_11:10000 runs/varied_1:20000

Each --data is FOLDER[:COUNT], the first COUNT records of FOLDER/finetune.json (all without COUNT),
images relative to FOLDER. The records are pooled and shuffled (seed 0); --config's train: section
(the stage 2 recipe, tiny_finetune.yaml, by default) with max_steps = --steps trains on them with
train.loop.train, the step code of the Ray job's worker. Every record is parsed and its image found
before the first step; samples are encoded when a micro-batch draws them. A refresh is one worker
over ~10^5 fresh scenes: too many to cache encoded (~110 KB each at 96 px), and streaming them through
Ray Data on the same two cores is the slower way (0.17-0.22 s a step here against 0.47 s for v3's
stage 2 through Ray Data: README.md here).
Writes an HF checkpoint (save_checkpoint) and, beside its weights, refresh.json: the command's
arguments, steps, seconds and last loss, and with --held-out FOLDER the saved model's greedy exact
match on FOLDER/test.json (overall and by kind). rebuild_base calls `refresh` for each refresh stage.
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
from llava_platform.model import ModelBundle, load_checkpoint, save_checkpoint
from llava_platform.train.loop import train

STAGE2_SPEC = Path(__file__).resolve().parents[2] / "jobs/configs/tiny_finetune.yaml"  # its train: section


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
                         "experiments.tiny_recipe.make_scenes wrote")  # fmt: skip
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


def refresh(base: Path, out: Path, steps: int, data: list[str], config: Path = STAGE2_SPEC,
            held_out: Path | None = None, log_every: int = 500) -> dict:
    """Trains `base` on the pooled FOLDER[:COUNT] parts of `data` and saves it to `out`; returns the summary
    refresh.json holds (base, data, config, steps, records, train_seconds, last_loss[, held_out])."""
    torch.manual_seed(0)
    recipe = load(config, TrainJobSpec, [f"train.max_steps={steps}", f"train.output_dir={out}"]).train
    bundle = load_checkpoint(base)
    pairs = []
    for part in data:
        pairs += (got := read_part(part, bundle))
        print(f"{part}: {len(got)} records", flush=True)
    random.Random(0).shuffle(pairs)
    start = time.perf_counter()
    history = train(bundle, EncodedOnDemand(pairs), recipe,
                    on_step=lambda m: print(m.line(), flush=True) if m.step % log_every == 0 else None)  # fmt: skip
    seconds = time.perf_counter() - start
    save_checkpoint(replace(bundle, spec=bundle.spec.model_copy(update={"checkpoint": str(out)})), out)  # names itself
    summary = {"base": str(base), "data": list(data), "config": str(config), "steps": len(history),
               "records": len(pairs), "train_seconds": round(seconds, 1), "last_loss": history[-1].loss}  # fmt: skip
    print(f"trained {len(history)} steps on {len(pairs)} records in {seconds:.0f} s, last loss {history[-1].loss:.4f} -> {out}")
    if held_out is not None:
        answers = answer_held_out(out, held_out / "test.json", held_out)
        summary["held_out"] = {"folder": str(held_out), "num_test": len(answers.golds), "accuracy": answers.accuracy,
                               "by_kind": answers.by_kind()}  # fmt: skip
        print(f"held-out exact match on {held_out / 'test.json'}: {answers.accuracy:.1%} of {len(answers.golds)}")
    return summary


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="checkpoint to start from")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--steps", required=True, type=int, help="optimizer steps (the recipe's global batch each)")
    parser.add_argument("--data", required=True, nargs="+", metavar="FOLDER[:COUNT]", help="datasets to pool")
    parser.add_argument("--config", type=Path, default=STAGE2_SPEC, help="YAML whose train: section is the recipe")
    parser.add_argument("--held-out", type=Path, metavar="FOLDER", help="score the result on FOLDER/test.json")
    parser.add_argument("--log-every", type=int, default=500, help="print a progress line every this many steps")
    args = parser.parse_args()
    quiet_transformers()
    summary = refresh(args.base, args.out, args.steps, args.data, args.config, args.held_out, args.log_every)
    (args.out / "refresh.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
