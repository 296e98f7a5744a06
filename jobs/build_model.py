"""Write an initial LLaVA checkpoint (preset, components, HF or original checkpoint) in HF format.

    python -m jobs.build_model --config jobs/configs/tiny.yaml --out runs/tiny/init
    python -m jobs.build_model --config jobs/configs/llava-1.5-7b.yaml --out runs/7b/init model.init=random

Trailing dotted overrides (`model.dtype=bfloat16`) change the spec without editing the file.
"""

import argparse

from llava_platform.cli import user_errors_exit
from llava_platform.config import BuildSpec, load
from llava_platform.model import build_model, save_checkpoint


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML with a model: section")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.init=random")
    args = parser.parse_args()

    spec = load(args.config, BuildSpec, args.overrides)
    bundle = build_model(spec.model)
    save_checkpoint(bundle, args.out)
    params = sum(p.numel() for p in bundle.model.parameters())
    print(f"wrote {args.out}: {type(bundle.model).__name__}, {params / 1e6:.1f} M parameters, template {bundle.spec.template}")


if __name__ == "__main__":
    main()
