"""Decode speed of the serving engine on one GPU, no Ray: a random-init model of a preset's shapes, batch 1 and 32.

    python benchmarks/gpu_decode.py                                  # llava-1.5-7b shapes, bf16, cuda
    python benchmarks/gpu_decode.py --preset tiny --device cpu --dtype float32 --new-tokens 8   # dry run

Figures:
  tokens/s at batch 1 and batch 32 (the engine's batched generate, each row a request with its own image)
  batch-1 decode against the card's memory bandwidth: every decode step reads all weights once, so
      achieved bytes/s = weight bytes x decode steps/s, against the card's nominal peak
      (H100 SXM 3.35 TB/s, H200 4.8 TB/s; others: --bandwidth-tbs)

Random weights stop at random: no stop token is used, so every row decodes exactly --new-tokens tokens.
Decode time is total time minus the prefill (measured alone, with one new token; the prompts are encoded
again for every call, as the engine does without a Serve replica). Installs nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image
from transformers.utils import logging as transformers_logging

from llava_platform.config import ModelSpec, SamplingSpec
from llava_platform.data.templates import Message
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.model import build_model

NOMINAL_TBS = {"H100": 3.35, "H200": 4.8, "A100": 2.0}  # SXM parts' HBM bandwidth, TB/s


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llava-1.5-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth-tbs", type=float, help="the card's nominal memory bandwidth (default: by name)")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(engine: InferenceEngine, requests: list[GenerationRequest], new_tokens: int, repeats: int) -> float:
    """Median seconds of one batched generate of `new_tokens` tokens per row."""
    sampling = SamplingSpec(max_new_tokens=new_tokens)
    engine.generate(requests, sampling)  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        synchronize(engine.model.device)
        started = time.perf_counter()
        results = engine.generate(requests, sampling)
        synchronize(engine.model.device)
        times.append(time.perf_counter() - started)
        assert all(r.completion_tokens == new_tokens for r in results), [r.completion_tokens for r in results]
    return statistics.median(times)


def decode_weight_bytes(model) -> int:
    """Bytes a decode step reads: the LLM's layers and its output head; not the vision tower or projector (prefill
    only), nor the input embedding table (one row per token)."""
    embeddings = model.get_input_embeddings().weight
    llm = [p for p in model.model.language_model.parameters() if p is not embeddings] + list(model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in llm)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    bundle = build_model(ModelSpec(preset=args.preset, init="random", dtype=args.dtype), device=device)
    engine = InferenceEngine(bundle)
    engine.model.to(device)
    engine.stop_ids = [-1]  # no token is -1: rows decode exactly --new-tokens tokens (random weights stop at random)
    transformers_logging.set_verbosity_error()  # generate() warns at every call that -1 is no token id
    weight_bytes = decode_weight_bytes(engine.model)
    image = Image.new("RGB", (336, 336), (120, 80, 40))  # resized by the processor to the preset's size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.preset} shapes, random init, {args.dtype}, {weight_bytes / 1e9:.2f} GB of LLM weights read per "
          f"decode step, on {name}")  # fmt: skip

    rates = {}
    for batch in args.batch:
        requests = [GenerationRequest([Message("user", f"<image>\nDescribe picture {i}.")], [image]) for i in range(batch)]
        total = timed(engine, requests, args.new_tokens, args.repeats)
        prefill = timed(engine, requests, 1, args.repeats)
        decode_steps_s = (args.new_tokens - 1) / (total - prefill)
        rates[batch] = batch * args.new_tokens / total
        print(f"  batch {batch}: {rates[batch]:.0f} tokens/s overall ({total:.2f} s for {args.new_tokens} tokens a row), "
              f"decode {decode_steps_s:.1f} steps/s, prefill {prefill * 1000:.0f} ms")  # fmt: skip
        if batch == 1:
            nominal = args.bandwidth_tbs or next((v for k, v in NOMINAL_TBS.items() if k in name), None)
            achieved = weight_bytes * decode_steps_s / 1e12
            share = f", {100 * achieved / nominal:.0f}% of the nominal {nominal} TB/s" if nominal else ""
            print(f"  batch-1 decode reads the weights at {achieved:.2f} TB/s{share}")
    if 1 in rates and len(rates) > 1:
        top = max(rates)
        print(f"  batch {top} against batch 1: {rates[top] / rates[1]:.1f}x tokens/s")


if __name__ == "__main__":
    main()
