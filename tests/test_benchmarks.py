"""Benchmarks keep running (smoke test with a few steps; the figures themselves live in README / RESULTS.md)."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


def test_train_throughput_runs_the_spec_and_a_comparison():
    result = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--config", "jobs/configs/tiny_finetune.yaml", "--preset", "tiny",
         "--steps", "2", "--warmup", "1", "--profile", "1", "train.micro_batch_size=4", "train.global_batch_size=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    spec = re.search(r"^  spec: ([\d.]+) samples/s, (\d+) tokens/s, MFU ([\d.]+)%", result.stdout, re.M)
    stage1 = re.search(r"^  train.stage=pretrain: ([\d.]+) samples/s, \d+ tokens/s, MFU [\d.]+% \(([\d.]+)x the spec's samples/s\)", result.stdout, re.M)
    assert spec and stage1, result.stdout
    assert float(spec[1]) > 0 and float(stage1[2]) > 0
    assert 0 < float(spec[3]) < 100  # against this CPU's measured matmul rate
    assert "strategy ddp, micro-batch 4" in result.stdout
    # --profile: one more step of the spec under torch.profiler, its operators ranked (the matmuls among them)
    assert "spec, 1 more steps under torch.profiler" in result.stdout and "aten::mm" in result.stdout


def test_train_throughput_runs_a_shipped_7b_spec_on_tiny_shapes():
    """What benchmarks/gpu_train.sh runs on a GPU, at tiny shapes: the shipped QLoRA spec (8 workers
    in the spec, one process here), its random base saved and reloaded in 4 bits, one LLM layer."""
    pytest.importorskip("bitsandbytes")
    result = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "train.micro_batch_size=8", "--config", "jobs/configs/llava-1.5-7b_qlora.yaml",
         "--preset", "tiny", "--llm-layers", "1", "--no-compare", "--steps", "2", "--warmup", "1", "train.global_batch_size=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny-1l (jobs/configs/llava-1.5-7b_qlora.yaml)" in result.stdout and "strategy ddp, micro-batch 8" in result.stdout
    spec = re.search(r"^  spec: ([\d.]+) samples/s, (\d+) tokens/s, MFU ([\d.]+)%$", result.stdout, re.M)
    assert spec and float(spec[1]) > 0 and 0 < float(spec[3]) < 100, result.stdout
    assert "train.stage=pretrain" not in result.stdout  # --no-compare
