"""The sets the tiny base is scored on (transfer_sets) and the position read-out keep running (short runs;
their figures live in experiments/tiny_recipe/README.md and benchmarks/RESULTS.md)."""

import json

import pytest

from experiments.tests.conftest import encode_all, run_module
from llava_platform.data.records import read_records


@pytest.mark.parametrize("name", ["grid_scenes", "free_scenes", "sealed_scenes"])
def test_transfer_sets_are_datasets_the_platform_trains_on(tmp_path, name):
    """Written as documented (`python -m experiments.tiny_recipe.transfer_sets.NAME --out DIR`), each held-out
    record's gold its reply, and every training record encodes as a worker encodes it."""
    out = tmp_path / name
    made = run_module(f"experiments.tiny_recipe.transfer_sets.{name}", "--out", str(out), "--num-train", "40", "--num-test", "12")
    assert made.returncode == 0, made.stderr[-3000:]
    test = list(read_records(out / "test.json"))
    assert len(test) == 12 and all(r.extra["answer"] == r.messages[1].content for r in test)
    if name != "grid_scenes":  # the two later sets name each question's kind, for the demo's by-kind scores
        assert len({r.extra["kind"] for r in test}) >= 4
    assert encode_all(out) == 40


def test_position_readout_scores_side_questions_by_object_count(tmp_path):
    """position_readout (its questions: drills.side_question, test_drills.py): a short run prints the tower's
    position share and a score per object count."""
    figures = tmp_path / "figures.json"
    result = run_module("experiments.tiny_recipe.position_readout", "--random", "--num-train", "64", "--num-test", "16",
                        "--steps", "2", "--json", str(figures))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from random init, shortest names: 64 train scenes, 2 steps" in result.stdout
    got = json.loads(figures.read_text())
    assert got["by_objects"] and set(got["by_objects"]) <= {"1 object"} | {f"{n} objects" for n in range(2, 7)}
    assert 0 < got["position_norm"] < got["patch_deviation_norm"]  # CLIP's init: position is already the smaller part
    assert f"held-out side questions: {got['accuracy']:.1%} of 16" in result.stdout
