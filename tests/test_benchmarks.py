"""Benchmarks keep running (smoke test with a few steps; the figures themselves live in README / RESULTS.md)."""

import json
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


@pytest.mark.parametrize("script", ["grid_scenes", "free_scenes", "sealed_scenes"])
def test_transfer_sets_are_datasets_the_platform_trains_on(tmp_path, script, ray_cluster):
    """The sets the tiny base is scored on (README): written as documented, and passing jobs.validate_data."""
    from conftest import run_job
    from llava_platform.data.records import read_records

    out = tmp_path / script
    made = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--out", str(out), "--num-train", "40", "--num-test", "12"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    test = list(read_records(out / "test.json"))
    assert len(test) == 12 and all(r.extra["answer"] == r.messages[1].content for r in test)
    if script != "grid_scenes":  # the two later sets name each question's kind, for the demo's by-kind scores
        assert len({r.extra["kind"] for r in test}) >= 4
    checked = run_job("validate_data", "--data", str(out / "finetune.json"), "--image-folder", str(out), "--template", "mistral_instruct",
                      "--cache-dir", str(tmp_path / "cache"), env={"RAY_ADDRESS": ray_cluster.gcs})  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "40 samples, 40 ok, 0 with problems" in checked.stdout


def test_position_readout_scores_side_questions_by_object_count(tmp_path):
    """benchmarks/position_readout.py (its questions: drills.side_question, tests/test_drills.py): a short
    run prints the tower's position share and a score per object count."""
    figures = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "benchmarks/position_readout.py", "--random", "--num-train", "64", "--num-test", "16",
                             "--steps", "2", "--json", str(figures)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from random init, shortest names: 64 train scenes, 2 steps" in result.stdout
    got = json.loads(figures.read_text())
    assert got["by_objects"] and set(got["by_objects"]) <= {"1 object"} | {f"{n} objects" for n in range(2, 7)}
    assert 0 < got["position_norm"] < got["patch_deviation_norm"]  # CLIP's init: position is already the smaller part
    assert f"held-out side questions: {got['accuracy']:.1%} of 16" in result.stdout
