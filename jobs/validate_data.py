"""Check a LLaVA-format dataset before training; exits 1 if any record is bad, naming each one.

    python -m jobs.validate_data --config jobs/configs/llava-1.5-7b_finetune.yaml     # exactly the job's own check
    python -m jobs.validate_data --data data/finetune.json --image-folder data --template vicuna_v1
    python -m jobs.validate_data --data s3://bucket/llava/train.jsonl --image-folder s3://bucket/llava \\
        --checkpoint runs/7b/init --endpoint-url http://minio:9000

The check training runs before its first step, on Ray Data (the cluster RAY_ADDRESS names, else this
machine's running cluster, else a local Ray): records parsed, image headers and end markers read
(missing, truncated, non-image and oversized images), tokens counted from the text and the image
sizes (samples whose image tokens do not fit max_length, samples with no trained token). No pixel is
decoded and memory stays bounded whatever the dataset's size; the results are cached
(data.cache_dir), so the job that follows, or this command run again, checks only what changed.
Prints counts, token-length percentiles and the first bad records (all of them in a file it names).
Token lengths are counted with the model's processor: --config's model, --checkpoint's, or the tiny
preset's byte-level tokenizer.
"""

import argparse
import sys
from pathlib import Path

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import DataSpec, ModelSpec, StorageSpec, TrainJobSpec, load
from llava_platform.data.pipeline import EncoderConfig, check_dataset
from llava_platform.model.builder import build_processor_for
from llava_platform.storage import Storage
from llava_platform.train.launch import absolute_spec, check_data, connect_ray

DEFAULT_CACHE = str(Path.home() / ".cache" / "llava_platform" / "data")


def check_from_flags(args) -> int:
    """The check of --data with the flags' processor and template; the number of bad records."""
    if args.checkpoint:
        model = ModelSpec(checkpoint=args.checkpoint, template=args.template)
    else:
        model = ModelSpec(preset="tiny", template=args.template, image_mode=args.image_mode)
    data = DataSpec(path=args.data, image_folder=args.image_folder, max_length=args.max_length,
                    max_image_pixels=args.max_image_pixels, cache_dir=args.cache_dir)  # fmt: skip
    storage = Storage(StorageSpec(endpoint_url=args.endpoint_url))
    encoder = EncoderConfig.for_data(data, build_processor_for(model), args.template, storage).shared()
    report = check_dataset(data, encoder, args.cache_dir).report
    print(report.format())
    return report.bad


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a training job spec: check its data.* with its model and template")
    parser.add_argument("--data", help="LLaVA JSON, JSONL or Parquet file (path or URI)")
    parser.add_argument("--image-folder", default=None, help="folder or URI prefix the records' image paths are relative to")
    parser.add_argument("--template", default="vicuna_v1", help="conversation template used for training")
    parser.add_argument("--checkpoint", default=None, help="model whose processor counts tokens (default: tiny preset)")
    parser.add_argument("--image-mode", default=None, choices=["square", "pad", "anyres"], help="for the tiny preset")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--max-image-pixels", type=int, default=89_478_485)
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help="where shards and check results are kept between runs")
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible store for s3:// paths (storage.endpoint_url)")
    parser.add_argument("overrides", nargs="*", help="with --config: dotted.key=value, e.g. data.path=other.json")
    args = parser.parse_args()
    if (args.config is None) == (args.data is None):
        parser.error("give --config (a job spec) or --data (a records file)")
    if args.overrides and not args.config:
        parser.error(f"overrides {args.overrides} need --config; with --data use the flags")
    quiet_transformers()
    connect_ray()
    if args.config:
        checked, _, _ = check_data(absolute_spec(load(args.config, TrainJobSpec, args.overrides)))
        bad = checked.report.bad
    else:
        bad = check_from_flags(args)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
