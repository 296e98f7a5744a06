"""Benchmarks keep running (smoke test with a few steps; the figures themselves live in README / RESULTS.md)."""

import re
import subprocess
import sys

from conftest import REPO


def test_train_throughput_runs_the_spec_and_a_comparison():
    result = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--config", "jobs/configs/tiny_finetune.yaml", "--preset", "tiny",
         "--steps", "2", "--warmup", "1", "train.micro_batch_size=4", "train.global_batch_size=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    spec = re.search(r"^  spec: ([\d.]+) samples/s, (\d+) tokens/s, MFU ([\d.]+)%", result.stdout, re.M)
    stage1 = re.search(r"^  train.stage=pretrain: ([\d.]+) samples/s, \d+ tokens/s, MFU [\d.]+% \(([\d.]+)x the spec's samples/s\)", result.stdout, re.M)
    assert spec and stage1, result.stdout
    assert float(spec[1]) > 0 and float(stage1[2]) > 0
    assert 0 < float(spec[3]) < 100  # against this CPU's measured matmul rate
    assert "strategy ddp, micro-batch 4" in result.stdout
