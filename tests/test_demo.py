"""The README's demo, run as users run it (shortened: fewer scenes and epochs; the full run's figures are in the README)."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, ray_env
from llava_platform.model import load_checkpoint


@pytest.mark.slow
def test_demo_trains_both_stages_and_answers_held_out_questions(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "jobs.demo", "--out", str(out), "--num-train", "320", "--num-test", "40",
                             "--show", "3", "train.max_steps=20", "train.log_every_steps=10"],
                            cwd=REPO, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=900)  # fmt: skip
    stdout = result.stdout
    assert result.returncode == 0, stdout[-3000:]
    # both stages ran as Ray Train jobs (worker lines), 20 steps each (2 epochs of 320 scenes at global batch 32)
    assert stdout.count("[train] step 20/20") == 2, stdout[-3000:]
    assert len(re.findall(r"^Q: .+\n   gold: '.+'  model: '.*'$", stdout, re.M)) == 3
    score = re.search(r"exact-match accuracy on 40 held-out questions: ([\d.]+)%", stdout)
    results = json.loads((out / "demo_results.json").read_text())
    assert score and float(score[1]) == pytest.approx(100 * results["accuracy"], abs=0.05)
    assert results["train_seconds"] > 0 and set(results["stage_seconds"]) == {"pretrain", "finetune"}
    assert load_checkpoint(results["final"]).spec.template == "mistral_instruct"  # the tiny preset's


@pytest.mark.parametrize("captions", [True, False])
def test_a_dataset_without_captions_trains_stage_1_on_its_qa_in_the_chat_template(tmp_path, captions):
    from jobs.demo import stage_spec
    from llava_platform.data.synthetic import SyntheticPaths
    from llava_platform.train.setup import training_template

    data = SyntheticPaths.in_folder(tmp_path)
    if captions:
        data.pretrain.write_text("[]")
    spec = stage_spec("pretrain", tmp_path / "out", data, None, [])
    assert spec.data.path == str(data.pretrain if captions else data.finetune)
    # plain keeps one turn's reply and drops the question: QA records are rendered in the tiny preset's template
    assert training_template(spec) == ("plain" if captions else "mistral_instruct")


def test_prefixed_overrides_reach_one_stage_and_plain_ones_both(tmp_path):
    from jobs.demo import stage_spec
    from llava_platform.data.synthetic import SyntheticPaths

    data = SyntheticPaths.in_folder(tmp_path)
    extra = ["pretrain:train.max_steps=7", "finetune:train.max_steps=9", "train.lr=0.01"]
    first, second = (stage_spec(stage, tmp_path / "out", data, None, extra) for stage in ("pretrain", "finetune"))
    assert (first.train.max_steps, second.train.max_steps) == (7, 9)
    assert first.train.lr == second.train.lr == 0.01
