"""The README's demo, run once as users run it (shortened: fewer scenes and steps; the full run's figures are in the
README), from a base and exporting its final model: one run answers what the demo prints and what --base / --export do."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, ray_env
from llava_platform.model import load_checkpoint

SHIPPED_BASE = REPO / "jobs" / "assets" / "tiny-base"


@pytest.mark.slow
def test_demo_trains_both_stages_from_a_base_answers_held_out_questions_and_exports(tmp_path):
    # A base no random init can match (the shipped one, its patch embedding negated), to see stage 1 start from it.
    marked = tmp_path / "marked"
    shutil.copytree(SHIPPED_BASE, marked)
    weights = load_file(marked / "model.safetensors")
    name = next(k for k in weights if k.endswith("patch_embedding.weight"))
    save_file({**weights, name: -weights[name]}, marked / "model.safetensors", metadata={"format": "pt"})
    out, export = tmp_path / "demo", tmp_path / "exported"

    result = subprocess.run([sys.executable, "-m", "jobs.demo", "--out", str(out), "--num-train", "320", "--num-test", "40",
                             "--show", "3", "--base", str(marked), "--export", str(export), "train.max_steps=20",
                             "train.log_every_steps=10"],
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

    # stage 1 started from the base: its patch embedding is the marked one, moved a little by 20 steps
    assert f"stage 1: projector alignment on captions, from {marked}" in stdout
    stage1 = load_file(out / "pretrain" / "final" / "model.safetensors")[name]
    assert torch.cosine_similarity(stage1.flatten(), -weights[name].flatten(), dim=0) > 0.8
    # the export is the final model, its saved spec naming the export, with the run's results
    assert json.loads((export / "demo_results.json").read_text()) == results
    assert load_checkpoint(export).spec.checkpoint == str(export)
    final, exported = (load_file(p / "model.safetensors") for p in (out / "finetune" / "final", export))
    assert final.keys() == exported.keys() and all(torch.equal(final[k], exported[k]) for k in final)


@pytest.mark.parametrize("captions", [True, False])
def test_a_dataset_without_captions_trains_stage_1_on_its_qa_in_the_chat_template(tmp_path, captions):
    from jobs.demo import stage_step
    from llava_platform.data.synthetic import SyntheticPaths
    from llava_platform.train.setup import training_template

    data = SyntheticPaths.in_folder(tmp_path)
    if captions:
        data.pretrain.write_text("[]")
    spec = stage_step("pretrain", tmp_path / "out", data, None, []).spec()
    assert spec.data.path == str(data.pretrain if captions else data.finetune)
    # plain keeps one turn's reply and drops the question: QA records are rendered in the tiny preset's template
    assert training_template(spec) == ("plain" if captions else "mistral_instruct")


def test_prefixed_overrides_reach_one_stage_and_plain_ones_both(tmp_path):
    from jobs.demo import stage_step
    from llava_platform.data.synthetic import SyntheticPaths

    data = SyntheticPaths.in_folder(tmp_path)
    extra = ["pretrain:train.max_steps=7", "finetune:train.max_steps=9", "train.lr=0.01"]
    first, second = (stage_step(stage, tmp_path / "out", data, None, extra).spec() for stage in ("pretrain", "finetune"))
    assert (first.train.max_steps, second.train.max_steps) == (7, 9)
    assert first.train.lr == second.train.lr == 0.01
