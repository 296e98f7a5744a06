"""Can the tiny model tell where a named object is? A side question, scored by the number of objects.

    python -m experiments.tiny_recipe.position_readout                    # from the shipped tiny base
    python -m experiments.tiny_recipe.position_readout --base runs/exp/m  # from any checkpoint
    python -m experiments.tiny_recipe.position_readout --random           # from the tiny preset, random init
    python -m experiments.tiny_recipe.position_readout --names color      # "the red object" instead of "the star"

The transfer sets' weak kinds (free_scenes' relations, sealed_scenes' positions: README.md here) ask the LLM
to find two named objects among the 36 image tokens and to compare where they are. This asks where
one is, without the comparison: varied scenes (the tiny base's generator), one question each, "Is the <name>
on the left or on the right side?" or "Is the <name> at the top or at the bottom?", about an object
whose centre is in an outer third, so no answer is borderline. The stage 2 recipe
(tiny_finetune.yaml's train section, --steps long) trains on them in one process
(train.loop.train); the greedy answers to held-out scenes are then scored by how many objects each
scene holds. One object is the baseline (nothing to pick out: any non-background patch will do);
two to six are the look-up, by the object's shortest unique name ("star", "red star": the way
varied_scenes and the transfer sets ask) or, with `--names color`, by a colour no other object has.

It also prints how much of the vision tower's input is position: the mean norm of the position
embeddings against the mean norm of the patch embeddings' deviation from their mean (the two are
summed before the tower's first layer norm).
"""

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from experiments.tiny_recipe import varied_scenes
from experiments.tiny_recipe.drills import NAMINGS, objects_kind, side_question
from llava_platform.cli import quiet_transformers
from llava_platform.config import ModelSpec, TrainJobSpec, load
from llava_platform.data.images import load_image
from llava_platform.data.records import parse_record
from llava_platform.data.samples import SampleEncoder
from llava_platform.eval.heldout import answer_held_out
from llava_platform.model import ModelBundle, build_model, load_checkpoint, save_checkpoint
from llava_platform.train.loop import train

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "jobs/configs/tiny_finetune.yaml"
TINY_BASE = REPO / "jobs/assets/tiny-base"


def write_split(folder: Path, prefix: str, count: int, rng: random.Random, naming: str) -> Path:
    """`count` scenes with one side question each, as LLaVA JSON (kind: "1 object", "2 objects", ...; gold in "answer")."""
    records = []
    while len(records) < count:
        scene = varied_scenes.sample_scene(rng)
        if (pair := side_question(rng, scene, naming)) is None:
            continue
        ident, kind = f"{prefix}_{len(records):05d}", objects_kind(len(scene.things))
        records.append(varied_scenes.question_record(folder, ident, scene, pair, kind, rng))
    path = folder / f"{prefix}.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def position_share(bundle: ModelBundle, images: list) -> tuple[float, float]:
    """(mean norm of the patch positions' embeddings, mean norm of the patch embeddings minus their mean)."""
    embeddings = bundle.model.model.vision_tower.embeddings  # CLIPVisionEmbeddings: row 0 of the table is the CLS token's
    pixels = bundle.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (images, patches, width)
        positions = embeddings.position_embedding.weight[1:]
        return float(positions.norm(dim=-1).mean()), float((patches - patches.mean((0, 1))).norm(dim=-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--base", type=Path, default=TINY_BASE, help="checkpoint to start from (default: the tiny base)")
    start.add_argument("--random", action="store_true", help="start from the tiny preset, random init")
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of 32 (the recipe's global batch)")
    parser.add_argument("--names", choices=list(NAMINGS), default="shortest",
                        help='"shortest": "star" or "red star", whichever picks the object out (as varied_scenes asks); '
                        '"color": "red object", "color_shape": "red star", about objects whose colour no other one has')  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    quiet_transformers()
    torch.manual_seed(args.seed)
    bundle = build_model(ModelSpec(preset="tiny")) if args.random else load_checkpoint(args.base)
    recipe = load(RECIPE, TrainJobSpec, [f"train.max_steps={args.steps}", "train.output_dir=unused"]).train

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        rng = random.Random(args.seed)
        test_path = write_split(folder, "test", args.num_test, rng, args.names)
        train_path = write_split(folder, "train", args.num_train, rng, args.names)
        test_images = [load_image(folder / r["image"]) for r in json.loads(test_path.read_text())]
        position, patch = position_share(bundle, test_images)
        encoder = SampleEncoder(bundle.processor, bundle.template, folder)
        samples = [encoder.encode(parse_record(r)) for r in json.loads(train_path.read_text())]
        history = train(bundle, samples, recipe)
        save_checkpoint(bundle, folder / "model")
        answers = answer_held_out(folder / "model", test_path, folder)

    start_name = "random init" if args.random else str(args.base)
    print(f"from {start_name}, {args.names} names: {len(samples)} train scenes, {len(history)} steps, last loss {history[-1].loss:.3f}")
    print(f"tower input before training: position embeddings' norm {position:.2f}, patch embeddings' deviation {patch:.2f}")
    by_count = answers.by_kind()
    for kind, score in by_count.items():
        print(f"  {kind}: {score:.1%} of {answers.kinds.count(kind)}")
    print(f"held-out side questions: {answers.accuracy:.1%} of {len(answers.golds)}")
    if args.json is not None:
        figures = {"start": start_name, "names": args.names, "steps": len(history), "accuracy": answers.accuracy, "by_objects": by_count,
                   "position_norm": position, "patch_deviation_norm": patch}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
