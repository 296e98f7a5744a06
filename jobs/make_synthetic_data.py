"""Write the synthetic scenes dataset (stage-1 captions, stage-2 QA, held-out test) in LLaVA JSON.

    python -m jobs.make_synthetic_data --out data/synthetic --num-train 6800 --num-test 200 --seed 0

--varied writes the broad scenes the tiny base learns to see from instead (llava_platform.data.varied_scenes:
10 shapes, 12 colours, free and grid layouts, 11 question kinds):

    python -m jobs.make_synthetic_data --varied --out data/varied --num-train 16000 --num-test 220

--drill NAME writes one question family on varied scenes (llava_platform.data.drills: between,
between_color, between_color_shape, relation, side, count), what jobs.refresh_base trains a base on:

    python -m jobs.make_synthetic_data --drill between --out data/between --num-train 20000 --num-test 300
"""

import argparse
import json

from llava_platform.cli import user_errors_exit
from llava_platform.data import varied_scenes
from llava_platform.data.drills import DRILLS, generate_drill
from llava_platform.data.synthetic import generate


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (images/ and the JSON files)")
    parser.add_argument("--num-train", type=int, default=6800)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, help="side of the square images, default 64 (the varied scenes "
                        "draw their own canvases: not with --varied or --drill)")  # fmt: skip
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--varied", action="store_true", help="the varied scenes of the tiny base instead of the demo's")
    kind.add_argument("--drill", choices=list(DRILLS), help="one question family on varied scenes (no captions)")
    args = parser.parse_args()

    if (args.varied or args.drill) and args.image_size is not None:
        parser.error(f"--image-size sets the demo scenes' side; {'--varied' if args.varied else '--drill'} draws "
                     "canvases of five shapes at its own sizes: drop one of the two")  # fmt: skip
    if args.drill:
        root = generate_drill(args.out, args.drill, args.num_train, args.num_test, args.seed)
        files = {name: root / f"{name}.json" for name in ("finetune", "test")}
    else:
        if args.varied:
            paths = varied_scenes.generate(args.out, args.num_train, args.num_test, args.seed)
        else:
            paths = generate(args.out, args.num_train, args.num_test, args.seed, args.image_size or 64)
        root, files = paths.image_folder, {name: getattr(paths, name) for name in ("pretrain", "finetune", "test")}
    for name, path in files.items():
        print(f"{name}: {len(json.loads(path.read_text()))} records -> {path}")
    print(f"images: {root / 'images'} (use --image-folder {root})")


if __name__ == "__main__":
    main()
