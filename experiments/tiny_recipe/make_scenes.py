"""Write one of the tiny base's training sets: varied scenes or a drill, in LLaVA JSON with images/.

    python -m experiments.tiny_recipe.make_scenes --varied --out runs/varied_0 --num-train 16000 --num-test 220 --seed 0
    python -m experiments.tiny_recipe.make_scenes --drill between --out runs/drills/between_21 --num-train 20000 --seed 21

--varied: varied_scenes (10 shapes, 12 colours, free and grid layouts, 11 question kinds; captions in
pretrain.json). --drill NAME: one question family on varied scenes (drills: between, between_color,
between_color_shape, relation, side, count; no captions). Both write finetune.json and test.json (one
question per held-out scene, gold in "answer", kind in "kind"), what `python -m jobs.demo --data` and
refresh_base read. The same arguments write the same bytes. rebuild_base draws the recipe's sets itself;
this is for one set at a time. (The demo's own scenes: `python -m jobs.make_synthetic_data`.)
"""

import argparse
import json
from pathlib import Path

from experiments.tiny_recipe.drills import DRILLS
from experiments.tiny_recipe.recipe import Scenes
from llava_platform.cli import user_errors_exit

DEFAULT_NUM_TEST = {"varied": 220, "drill": 300}  # the recipe's held-out counts


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--varied", action="store_true", help="varied scenes with captions, 11 question kinds")
    kind.add_argument("--drill", choices=list(DRILLS), help="one question family on varied scenes (no captions)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (images/ and the JSON files)")
    parser.add_argument("--num-train", type=int, default=16000)
    parser.add_argument("--num-test", type=int, help="held-out scenes, one question each (default: 220 varied, 300 a drill)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    num_test = args.num_test if args.num_test is not None else DEFAULT_NUM_TEST["varied" if args.varied else "drill"]
    root = Scenes("varied" if args.varied else args.drill, args.seed, args.num_train, num_test).write(args.out)
    for name in ("pretrain", "finetune", "test") if args.varied else ("finetune", "test"):  # a drill has no captions
        path = root / f"{name}.json"
        print(f"{name}: {len(json.loads(path.read_text()))} records -> {path}")
    print(f"images: {root / 'images'} (use --data {root} with jobs.demo or refresh_base)")


if __name__ == "__main__":
    main()
