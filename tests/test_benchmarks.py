"""Benchmarks keep running (smoke test with a few steps; the figures themselves live in README / RESULTS.md).
The tiny recipe's transfer sets and position read-out are research: experiments/tests/test_transfer_sets.py."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


def train_throughput(*args: str) -> str:
    """benchmarks/train_throughput.py with these arguments, 2 measured steps after 1 warm-up; its stdout."""
    result = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--steps", "2", "--warmup", "1", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_throughput_runs_the_spec_and_a_comparison():
    stdout = train_throughput("--config", "jobs/configs/tiny_finetune.yaml", "--preset", "tiny", "--profile", "1",
                              "train.micro_batch_size=4", "train.global_batch_size=8")  # fmt: skip
    spec = re.search(r"^  spec: ([\d.]+) samples/s, (\d+) tokens/s, MFU ([\d.]+)%", stdout, re.M)
    stage1 = re.search(r"^  train.stage=pretrain: ([\d.]+) samples/s, \d+ tokens/s, MFU [\d.]+% \(([\d.]+)x the spec's samples/s\)", stdout, re.M)
    assert spec and stage1, stdout
    assert float(spec[1]) > 0 and float(stage1[2]) > 0
    assert 0 < float(spec[3]) < 100  # against this CPU's measured matmul rate
    assert "strategy ddp, micro-batch 4" in stdout
    # --profile: one more step of the spec under torch.profiler, its operators ranked (the matmuls among them)
    assert "spec, 1 more steps under torch.profiler" in stdout and "aten::mm" in stdout


def test_train_throughput_runs_a_shipped_7b_spec_on_tiny_shapes():
    """What benchmarks/gpu_train.sh runs on a GPU, at tiny shapes: the shipped QLoRA spec (8 workers
    in the spec, one process here), its random base saved and reloaded in 4 bits, one LLM layer."""
    pytest.importorskip("bitsandbytes")
    # overrides before and after the options
    stdout = train_throughput("train.micro_batch_size=8", "--config", "jobs/configs/llava-1.5-7b_qlora.yaml", "--preset", "tiny",
                              "--llm-layers", "1", "--no-compare", "train.global_batch_size=8")  # fmt: skip
    assert "tiny-1l (jobs/configs/llava-1.5-7b_qlora.yaml)" in stdout and "strategy ddp, micro-batch 8" in stdout
    spec = re.search(r"^  spec: ([\d.]+) samples/s, (\d+) tokens/s, MFU ([\d.]+)%$", stdout, re.M)
    assert spec and float(spec[1]) > 0 and 0 < float(spec[3]) < 100, stdout
    assert "train.stage=pretrain" not in stdout  # --no-compare


def test_gpu_decode_runs_on_tiny_shapes():
    """benchmarks/gpu_decode.py as a GPU run makes it, on the tiny preset and the CPU: every row decodes exactly the
    asked tokens, batch 1 and batch 4 are compared."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_decode.py", "--preset", "tiny", "--device", "cpu",
                             "--dtype", "float32", "--new-tokens", "6", "--batch", "1", "4", "--repeats", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"batch 1: \d+ tokens/s overall", result.stdout) and "batch-1 decode reads the weights at" in result.stdout
    assert re.search(r"batch 4 against batch 1: [\d.]+x tokens/s", result.stdout), result.stdout


def test_batch_throughput_runs_the_job_against_the_loop(tmp_path):
    """benchmarks/batch_throughput.py on 100 rows (and 10): both sides run, the loop's answers equal the job's."""
    import json

    out = tmp_path / "batch.json"
    result = subprocess.run([sys.executable, "benchmarks/batch_throughput.py", "--rows", "100", "--loop-rows", "20",
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["agreement"] == {"compared": 20, "equal": 20, "differ": {}}
    assert figures["jobs"]["100"]["rows"] == 100 and figures["jobs"]["10"]["rows"] == 10
    assert "job 100, steady state" in result.stdout and "peak memory" in result.stdout
