"""Training throughput of a job spec: samples/s, tokens/s and MFU of the compute core, in one process.

    python benchmarks/train_throughput.py --config jobs/configs/tiny_finetune.yaml --preset tiny --steps 20
    python benchmarks/train_throughput.py --config jobs/configs/llava-1.5-7b_finetune.yaml --preset llava-1.5-7b \\
        --device cuda --steps 10 train.micro_batch_size=16 train.global_batch_size=16          # full FT, ZeRO-3, bf16
    python benchmarks/train_throughput.py --config jobs/configs/llava-1.5-7b_qlora.yaml --preset llava-1.5-7b --device cuda \\
        --no-compare train.micro_batch_size=8 train.global_batch_size=8                        # QLoRA, 4-bit base

The spec's stage runs exactly as a Ray Train worker runs it (train.setup.build_training: freeze,
LoRA / QLoRA, dtype, gradient checkpointing, DDP or DeepSpeed; train.loop.run_steps), without Ray,
on one device, with a random-init model of `--preset`'s shapes (no download) and synthetic scenes
at the model's image size. `--compare` reruns it with other overrides in the same process and
prints the ratio to the first run (default: the same spec as stage 1, projector only; `--no-compare`:
none). `--llm-layers N` keeps the preset's widths with N LLM layers: per-layer shapes, hence MFU, are
the full model's, and optimizer state shrinks to fit one GPU where all layers would not.
DeepSpeed does not give back all GPU memory when its engine is dropped: a run after a DeepSpeed
run starts on top of it (benchmarks/gpu_train.sh runs each in its own process).
The first `--warmup` steps of each run are not counted. MFU is against the device's dense bf16
peak on a known GPU, `train.peak_tflops` if given, and on a CPU against the fp32 matmul rate
measured here first (so CPU MFU reads "fraction of what this CPU's GEMM reaches").
"""

import argparse
import contextlib
import dataclasses
import gc
import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, schedule

from llava_platform.cli import quiet_transformers
from llava_platform.config import ModelSpec, TrainJobSpec, load
from llava_platform.data.records import read_records
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.synthetic import generate
from llava_platform.data.templates import get_template
from llava_platform.model.builder import build_model, build_processor_for
from llava_platform.model.checkpoint import save_checkpoint
from llava_platform.model.presets import PRESETS, get_preset
from llava_platform.train.flops import peak_tflops_for
from llava_platform.train.loop import run_steps, sample_batches
from llava_platform.train.plan import DataPlan
from llava_platform.train.setup import build_training, training_template


def matmul_tflops(size: int = 1024, repeats: int = 20) -> float:
    """This CPU's fp32 GEMM rate, best of `repeats` (size x size) @ (size x size)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def profiling_steps(profile_steps: int) -> int:
    """Steps a run adds to its measured ones for --profile: one for the profiler's warm-up, then the profiled."""
    return 1 + profile_steps if profile_steps else 0


def measure(spec: TrainJobSpec, samples, device: torch.device, warmup: int, peak_tflops: float | None,
            profile_steps: int = 0) -> dict[str, Any]:  # fmt: skip
    """Median samples/s, tokens/s, MFU of the spec's steps after `warmup`. With `profile_steps`, one more
    step and then that many run under torch.profiler, uncounted; "profile" holds its top operators."""
    measured = spec.train.max_steps
    steps = measured + profiling_steps(profile_steps)
    plan = DataPlan.for_spec(len(samples), spec.train.model_copy(update={"max_steps": steps}), workers=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup = build_training(spec, plan, device)
    batches = sample_batches(samples, plan, rank=0, window=spec.train.length_grouping_window)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = profile(activities=activities, schedule=schedule(wait=measured, warmup=1, active=profile_steps)) if profile_steps else None
    history = []
    with profiler or contextlib.nullcontext():
        for metrics in run_steps(setup.runner, batches, processor=setup.bundle.processor, start_step=0,
                                 total_steps=plan.total_steps, accumulation=plan.accumulation, peak_tflops=peak_tflops):  # fmt: skip
            history.append(metrics)
            if profiler:
                profiler.step()
    history = history[warmup:measured]
    own_time = f"self_{'device' if device.type == 'cuda' else 'cpu'}_time_total"  # operators ranked by their own time
    del setup
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "samples/s": statistics.median(m.samples_per_s for m in history),
        "tokens/s": statistics.median(m.tokens_per_s for m in history),
        "mfu": statistics.median(m.mfu for m in history) if history[0].mfu is not None else None,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "profile": profiler.key_averages().table(sort_by=own_time, row_limit=30) if profiler else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a training job spec (jobs/configs/*.yaml)")
    parser.add_argument("--preset", required=True, help="model shapes, random init: tiny, llava-1.5-7b, llava-next-7b ...")
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare", action="append", default=None,
                        help="space-separated overrides of a second run (repeatable); default: 'train.stage=pretrain'")  # fmt: skip
    parser.add_argument("--no-compare", action="store_true", help="measure the spec alone")
    parser.add_argument("--llm-layers", type=int, help="the preset's shapes with this many LLM layers")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after the spec's measured steps, profile this many more (torch.profiler) and print the top operators")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="dotted.key=value applied to every run")
    args = parser.parse_intermixed_args()  # overrides may come before or after options
    quiet_transformers()
    torch.manual_seed(0)
    device = torch.device(args.device)
    preset = args.preset if args.llm_layers is None else register_shallower(args.preset, args.llm_layers)

    def spec_for(extra: list[str]) -> TrainJobSpec:
        # one process on one device: the spec's global batch is reached by accumulation alone
        spec = load(args.config, TrainJobSpec, ["scaling.num_workers=1"] + args.overrides + extra)
        model = ModelSpec(**spec.model.model_dump(exclude={"preset", "checkpoint", "components", "original_checkpoint", "init"}),
                          preset=preset, init="random")  # fmt: skip
        if model.quantization != "none":  # QLoRA: the random base is saved once and loaded quantized
            model = ModelSpec(**model.model_dump(exclude={"preset", "init", "checkpoint"}), checkpoint=base_checkpoint(model, device))
        return spec.model_copy(update={"model": model})

    compare = [] if args.no_compare else args.compare or ["train.stage=pretrain"]
    runs = [("spec", [])] + [(c, c.split()) for c in compare]
    specs = [(label, spec_for(extra)) for label, extra in runs]
    if any(s.train.strategy != "ddp" for _, s in specs):  # DeepSpeed wants a process group, even of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
        os.environ.setdefault("LOCAL_RANK", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)

    first = specs[0][1]
    processor = build_processor_for(first.model)
    image_size = processor.image_processor.crop_size["height"] if hasattr(processor.image_processor, "crop_size") else 336
    steps = args.steps + args.warmup
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(tmp, num_train=min(6000, first.train.global_batch_size * (steps + profiling_steps(args.profile))), num_test=0,
                        image_size=image_size)
        encoder = SampleEncoder(processor, get_template(training_template(first)), data.image_folder, first.data.max_length)
        samples = [encoder.encode(r) for r in read_records(data.finetune)]
    peak = peak_tflops_for(device, first.train.peak_tflops) or (matmul_tflops() if device.type == "cpu" else None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"{preset} ({args.config}) on {name}, {first.model.dtype}, strategy {first.train.strategy}, "
          f"micro-batch {first.train.micro_batch_size}, median of {args.steps} steps, "
          f"MFU against {peak or 0:.3g} TFLOP/s", flush=True)  # fmt: skip
    results = []
    for i, (label, spec) in enumerate(specs):
        budget = spec.train.model_copy(update={"max_steps": steps})
        result = measure(spec.model_copy(update={"train": budget}), samples, device, args.warmup, peak,
                         profile_steps=args.profile if i == 0 else 0)  # fmt: skip
        results.append(result)
        mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
        memory = f", peak {result['peak_gib']:.1f} GiB allocated" if result["peak_gib"] is not None else ""
        ratio = "" if not results[1:] else f" ({result['samples/s'] / results[0]['samples/s']:.2f}x the spec's samples/s)"
        print(f"  {label}: {result['samples/s']:.1f} samples/s, {result['tokens/s']:.0f} tokens/s{mfu}{memory}{ratio}", flush=True)
        if result["profile"]:
            print(f"  {label}, {args.profile} more steps under torch.profiler, top operators by own time:\n{result['profile']}", flush=True)


def base_checkpoint(model: ModelSpec, device: torch.device) -> str:
    """A random-init checkpoint of the preset (unquantized) to load in 4/8-bit, cached per preset.
    Initialised on `device`: a 7B random init takes seconds on a GPU, minutes on a CPU."""
    path = os.path.join(tempfile.gettempdir(), f"llava-platform-bench-{model.preset}-{model.dtype}")
    if not os.path.isdir(path):
        bundle = build_model(model.model_copy(update={"quantization": "none", "lora": None}), device=device)
        save_checkpoint(bundle, path)
        del bundle
        gc.collect()
    return path


def register_shallower(name: str, layers: int) -> str:
    """Add preset `<name>-<layers>l`: `name`'s widths, vision tower and projector, `layers` LLM layers."""
    base = get_preset(name)
    shallow = dataclasses.replace(base, name=f"{name}-{layers}l", text_config={**base.text_config, "num_hidden_layers": layers})
    PRESETS[shallow.name] = shallow
    return shallow.name


if __name__ == "__main__":
    main()
