"""Training throughput of the in-process loop: samples/s, tokens/s and MFU, stage 1 vs stage 2 in one process.

    python benchmarks/train_throughput.py --preset tiny --steps 20
    python benchmarks/train_throughput.py --preset llava-1.5-7b --device cuda --dtype bfloat16 --peak-tflops 989   # GPU (needs ZeRO/QLoRA for 7B full FT: next)

Both stages run on the same random-init model and the same synthetic batches, so their ratio
(stage 2 / stage 1 step time) isolates what training the LLM costs on this machine. The first
`--warmup` steps of each stage are not counted.
"""

import argparse
import statistics
import tempfile

import torch

from llava_platform.cli import quiet_transformers
from llava_platform.config import ModelSpec, TrainSpec
from llava_platform.data.records import read_records
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.synthetic import generate
from llava_platform.model import build_model
from llava_platform.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (H100 bf16 dense: 989)")
    args = parser.parse_args()
    quiet_transformers()
    torch.manual_seed(0)

    bundle = build_model(ModelSpec(preset=args.preset, init="random", dtype=args.dtype), device=args.device)
    image_size = bundle.model.config.vision_config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(tmp, num_train=args.micro_batch * (args.steps + args.warmup), num_test=0, image_size=image_size)
        encoder = SampleEncoder(bundle.processor, bundle.template, data.image_folder)
        samples = [encoder.encode(r) for r in read_records(data.finetune)]
    steps = args.steps + args.warmup
    results = {}
    for stage in ("pretrain", "finetune"):
        spec = TrainSpec(stage=stage, output_dir=tmp, lr=1e-5, global_batch_size=args.micro_batch,
                         micro_batch_size=args.micro_batch, epochs=steps * args.micro_batch / len(samples))  # fmt: skip
        history = train(bundle, samples, spec, peak_tflops=args.peak_tflops)[args.warmup :]
        results[stage] = {
            "samples/s": statistics.median(m.samples_per_s for m in history),
            "tokens/s": statistics.median(m.tokens_per_s for m in history),
            "mfu": statistics.median(m.mfu for m in history) if args.peak_tflops else None,
        }
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"{args.preset} on {device}, {args.dtype}, micro-batch {args.micro_batch}, median of {args.steps} steps")
    for stage, r in results.items():
        mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        print(f"  {stage:8s}: {r['samples/s']:.1f} samples/s, {r['tokens/s']:.0f} tokens/s{mfu}")
    ratio = results["pretrain"]["samples/s"] / results["finetune"]["samples/s"]
    print(f"  stage-2 step costs {ratio:.2f}x a stage-1 step (LLM weight gradients + optimizer)")


if __name__ == "__main__":
    main()
