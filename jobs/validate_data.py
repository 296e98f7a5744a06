"""Check a LLaVA-format dataset before training; exits 1 if any record is bad, naming each one.

    python -m jobs.validate_data --data data/finetune.json --image-folder data --template vicuna_v1
    python -m jobs.validate_data --data data/train.jsonl --image-folder data --checkpoint runs/7b/init

Reports: sample count, malformed records, missing / unreadable images, samples with no
trained token, samples whose image tokens do not fit max_length, and token-length
percentiles. Token lengths are counted with --checkpoint's processor (tokenizer and
image mode); without it, with the tiny preset's byte-level tokenizer.
"""

import argparse
import sys

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import ModelSpec
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.templates import get_template
from llava_platform.data.validate import validate_dataset
from llava_platform.model.builder import build_processor_for


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="LLaVA JSON or JSONL file")
    parser.add_argument("--image-folder", default=None, help="folder the records' image paths are relative to")
    parser.add_argument("--template", default="vicuna_v1", help="conversation template used for training")
    parser.add_argument("--checkpoint", default=None, help="model whose processor counts tokens (default: tiny preset)")
    parser.add_argument("--image-mode", default=None, choices=["square", "pad", "anyres"], help="for the tiny preset")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--max-image-pixels", type=int, default=89_478_485)
    args = parser.parse_args()
    quiet_transformers()

    template = get_template(args.template)
    if args.checkpoint:
        spec = ModelSpec(checkpoint=args.checkpoint, template=args.template)
    else:
        spec = ModelSpec(preset="tiny", template=args.template, image_mode=args.image_mode)
    encoder = SampleEncoder(build_processor_for(spec), template, args.image_folder, args.max_length, args.max_image_pixels)
    report, _ = validate_dataset(args.data, encoder)
    print(report.format())
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
