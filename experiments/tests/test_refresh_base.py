"""refresh_base: a base trained further on a pool of drills, in one process; bad --data is named
before the first step."""

import json
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors.torch import load_file

from experiments.tests.conftest import TINY_BASE, run_module
from experiments.tiny_recipe.drills import generate_drill
from llava_platform.eval.heldout import answer_held_out
from llava_platform.model.checkpoint import load_checkpoint_spec

REFRESH = "experiments.tiny_recipe.refresh_base"


def test_refresh_trains_the_base_on_the_pooled_drills_and_writes_a_checkpoint(tmp_path):
    side, between = generate_drill(tmp_path / "side", "side", 24, 8, seed=0), generate_drill(tmp_path / "between", "between", 40, 0, seed=0)
    out = tmp_path / "refreshed"
    result = run_module(REFRESH, "--base", str(TINY_BASE), "--out", str(out), "--steps", "3", "--log-every", "1",
                     "--data", f"{side}:20", str(between), "--held-out", str(side))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{side}:20: 20 records" in result.stdout and f"{between}: 40 records" in result.stdout
    assert "step 3/3 loss" in result.stdout and "trained 3 steps on 60 records" in result.stdout
    summary = json.loads((out / "refresh.json").read_text())
    assert summary["steps"] == 3 and summary["records"] == 60 and summary["data"] == [f"{side}:20", str(between)]

    before, after = load_file(TINY_BASE / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("vision_tower" in k for k in moved) and any("language_model" in k for k in moved)  # the recipe trains both
    assert load_checkpoint_spec(out).checkpoint == str(out)  # its saved spec names it, not the base
    answers = answer_held_out(out, side / "test.json", side)  # an HF checkpoint that loads and answers, as recorded
    assert len(answers.predictions) == 8 and all(p.strip() for p in answers.predictions)
    recorded = summary["held_out"]
    assert recorded["num_test"] == 8 and recorded["accuracy"] == answers.accuracy and set(recorded["by_kind"]) == set(answers.by_kind())
    assert f"held-out exact match on {side / 'test.json'}: {answers.accuracy:.1%} of 8" in result.stdout


def test_bad_data_is_named_before_training(tmp_path):
    drill = generate_drill(tmp_path / "d", "count", 6, 0, seed=0)
    common = ["--base", str(TINY_BASE), "--out", str(tmp_path / "o"), "--steps", "2"]

    (drill / "images" / "train_00004.png").unlink()
    cases = [[f"{drill}:7"], [str(tmp_path / "nowhere")], [str(drill)]]  # three commands, side by side
    with ThreadPoolExecutor(len(cases)) as pool:
        too_many, no_data, missing = pool.map(lambda data: run_module(REFRESH, *common, "--data", *data), cases)
    assert too_many.returncode == 2 and "COUNT must be a whole number from 1 to 6" in too_many.stderr
    assert no_data.returncode == 2 and "no " + str(tmp_path / "nowhere" / "finetune.json") in no_data.stderr
    assert missing.returncode == 2 and "train_00004" in missing.stderr and "is missing" in missing.stderr
    assert not (tmp_path / "o").exists() and "step " not in missing.stdout
