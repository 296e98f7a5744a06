"""Convert an original-LLaVA checkpoint (mm_projector keys, flat llava_llama config) to an HF checkpoint.

    python -m jobs.convert_checkpoint --original path/to/llava-v1.5-7b --template vicuna_v1 --out runs/llava-v1.5-7b-hf

The vision tower comes from the config's mm_vision_tower (a hub id, or edit it to a local copy).
The result loads with plain transformers and with every platform job.
"""

import argparse

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import ModelSpec
from llava_platform.model import build_model, save_checkpoint


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="original LLaVA checkpoint directory")
    parser.add_argument("--template", required=True, help="conversation template it was trained with (e.g. vicuna_v1)")
    parser.add_argument("--out", required=True, help="HF checkpoint directory to write")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    quiet_transformers()

    bundle = build_model(ModelSpec(original_checkpoint=args.original, template=args.template, dtype=args.dtype))
    save_checkpoint(bundle, args.out)
    print(f"wrote {args.out}: {type(bundle.model).__name__}, image mode {bundle.spec.image_mode}, template {bundle.spec.template}")


if __name__ == "__main__":
    main()
