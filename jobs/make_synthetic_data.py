"""Write the synthetic scenes dataset (stage-1 captions, stage-2 QA, held-out test) in LLaVA JSON.

    python -m jobs.make_synthetic_data --out data/synthetic --num-train 6800 --num-test 200 --seed 0

The demo's data (llava_platform.data.synthetic: 3 shapes, 4 colours on a 2x2 grid, five question
kinds), which `python -m jobs.demo` draws for itself; this writes it for a job spec's data.path.
"""

import argparse
import json

from llava_platform.cli import user_errors_exit
from llava_platform.data.synthetic import generate


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (images/ and the JSON files)")
    parser.add_argument("--num-train", type=int, default=6800)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images")
    args = parser.parse_args()

    paths = generate(args.out, args.num_train, args.num_test, args.seed, args.image_size)
    for name in ("pretrain", "finetune", "test"):  # (and questions.jsonl: test.json as a question file)
        path = getattr(paths, name)
        print(f"{name}: {len(json.loads(path.read_text()))} records -> {path}")
    print(f"images: {paths.image_folder / 'images'} (use --image-folder {paths.image_folder})")


if __name__ == "__main__":
    main()
