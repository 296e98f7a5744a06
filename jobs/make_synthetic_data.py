"""Write the synthetic scenes dataset (stage-1 captions, stage-2 QA, held-out test) in LLaVA JSON.

    python -m jobs.make_synthetic_data --out data/synthetic --num-train 6800 --num-test 200 --seed 0

--varied writes the broad scenes the tiny base learns to see from instead (llava_platform.data.varied_scenes:
10 shapes, 12 colours, free and grid layouts, 11 question kinds):

    python -m jobs.make_synthetic_data --varied --out data/varied --num-train 16000 --num-test 220
"""

import argparse
import json

from llava_platform.cli import user_errors_exit
from llava_platform.data import varied_scenes
from llava_platform.data.synthetic import generate


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (images/ and the JSON files)")
    parser.add_argument("--num-train", type=int, default=6800)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images (not with --varied)")
    parser.add_argument("--varied", action="store_true", help="the varied scenes of the tiny base instead of the demo's")
    args = parser.parse_args()

    if args.varied:
        paths = varied_scenes.generate(args.out, args.num_train, args.num_test, args.seed)
    else:
        paths = generate(args.out, args.num_train, args.num_test, args.seed, args.image_size)
    for name in ("pretrain", "finetune", "test"):
        path = getattr(paths, name)
        print(f"{name}: {len(json.loads(path.read_text()))} records -> {path}")
    print(f"images: {paths.image_folder / 'images'} (use --image-folder {paths.image_folder})")


if __name__ == "__main__":
    main()
