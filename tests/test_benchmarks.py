"""Benchmarks keep running (smoke test with a few steps; the figures themselves live in README / RESULTS.md)."""

import subprocess
import sys

from conftest import REPO


def test_train_throughput_runs_both_stages():
    result = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--preset", "tiny", "--steps", "2", "--warmup", "1", "--micro-batch", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("pretrain:") and "samples/s" in line for line in lines)
    assert any(line.strip().startswith("finetune:") and "tokens/s" in line for line in lines)
    assert "stage-2 step costs" in result.stdout
