"""The shipped evaluation and batch specs: each validates, a misspelt key names itself, and the LLaVA-1.5 task specs
ask what LLaVA-1.5's evaluation asks (its prompt suffixes, greedy decoding, its max_new_tokens, vicuna_v1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from llava_platform.batch.questions import from_conversation, from_question_line
from llava_platform.batch.spec import BatchJobSpec
from llava_platform.config import ConfigError, load
from llava_platform.data.templates import get_template
from llava_platform.eval.review import load_rules
from llava_platform.eval.spec import EvalJobSpec
from llava_platform.storage import is_uri

EVAL_SPECS = sorted((REPO / "jobs" / "configs" / "eval").glob("*.yaml"))
BATCH_SPECS = sorted((REPO / "jobs" / "configs").glob("*_batch.yaml"))

# LLaVA-1.5's prompt suffixes, as its files and scripts write them
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # VQAv2 / GQA / POPE question files
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."  # --single-pred-prompt

# task -> (metric, batch.prompt_suffix, sampling.max_new_tokens), from scripts/v1_5/eval/*.sh and llava/eval/*.py:
# POPE and GQA question files carry their suffix already (adding it again would ask it twice); the VQAv2 val file
# is ours, so the spec adds the one docs/Evaluation.md gives for VQAv2; ScienceQA and MMBench add theirs in the
# script; LLaVA-Bench asks the question as it is. model_vqa_loader: 128 new tokens; model_vqa, model_vqa_science,
# model_vqa_mmbench: 1024.
LLAVA_TASKS = {
    "pope": ("pope", None, 128),
    "gqa": ("exact_match", None, 128),
    "vqav2": ("vqa_accuracy", SHORT_ANSWER, 128),
    "scienceqa": ("multiple_choice", OPTION_LETTER, 1024),
    "mmbench": ("circular", OPTION_LETTER, 1024),
    "llava_bench": ("review", None, 1024),
}


def eval_spec(name: str) -> EvalJobSpec:
    return load(REPO / "jobs" / "configs" / "eval" / f"{name}.yaml", EvalJobSpec)


@pytest.mark.parametrize("path", EVAL_SPECS, ids=lambda p: p.name)
def test_every_eval_spec_validates(path):
    spec = load(path, EvalJobSpec)
    # survives the trip to Ray workers (a JSON dict, validated again), and its batch part stands alone
    assert EvalJobSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert spec.batch_job().batch == spec.batch and spec.batch_job().model == spec.model
    if spec.model.template is not None:
        get_template(spec.model.template)  # a misspelt template name fails here, not on the cluster


@pytest.mark.parametrize("path", BATCH_SPECS, ids=lambda p: p.name)
def test_every_batch_spec_validates(path):
    spec = load(path, BatchJobSpec)
    assert BatchJobSpec.model_validate(spec.model_dump(mode="json")) == spec
    if spec.model.template is not None:
        get_template(spec.model.template)


def test_the_shipped_task_specs_are_the_llava_ones():
    """Every LLaVA-1.5 task has its spec, and the test above covers them all."""
    assert set(LLAVA_TASKS) <= {p.stem for p in EVAL_SPECS}
    assert {"llava-1.5-7b_batch.yaml", "tiny_batch.yaml"} <= {p.name for p in BATCH_SPECS}


@pytest.mark.parametrize("path", EVAL_SPECS, ids=lambda p: p.name)
def test_a_misspelt_key_in_a_copy_is_named(path, tmp_path):
    text = path.read_text()
    assert "\n  metric: " in text
    copy = tmp_path / path.name
    copy.write_text(text.replace("\n  metric: ", "\n  metirc: ", 1))
    with pytest.raises(ConfigError) as e:
        load(copy, EvalJobSpec)
    message = str(e.value)
    assert str(copy) in message
    assert "task.metirc: unknown key; did you mean 'metric'?" in message
    assert "task.metric: required field is missing" in message


def test_a_misspelt_batch_key_is_named(tmp_path):
    path = REPO / "jobs" / "configs" / "llava-1.5-7b_batch.yaml"
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("\n  gpus_per_actor: ", "\n  gpu_per_actor: ", 1))
    with pytest.raises(ConfigError, match=r"batch\.gpu_per_actor: unknown key; did you mean 'gpus_per_actor'\?"):
        load(copy, BatchJobSpec)


@pytest.mark.parametrize("task", sorted(LLAVA_TASKS))
def test_llava_task_specs_ask_as_llava_does(task):
    spec = eval_spec(task)
    metric, suffix, max_new_tokens = LLAVA_TASKS[task]
    assert spec.task.name == task and spec.task.metric == metric
    assert spec.batch.prompt_suffix == suffix
    assert (spec.sampling.temperature, spec.sampling.max_new_tokens) == (0.0, max_new_tokens)
    assert (spec.model.checkpoint, spec.model.template, spec.model.dtype) == ("llava-hf/llava-1.5-7b-hf", "vicuna_v1",
                                                                               "bfloat16")  # fmt: skip
    assert spec.batch.gpus_per_actor == 1


def test_the_suffix_strings_are_llavas():
    """The exact strings of LLaVA-1.5's evaluation (docs/Evaluation.md, model_vqa_science.py,
    model_vqa_mmbench.py), character for character."""
    assert eval_spec("vqav2").batch.prompt_suffix == "\nAnswer the question using a single word or phrase."
    for task in ("scienceqa", "mmbench"):
        suffix = eval_spec(task).batch.prompt_suffix
        assert suffix == "\nAnswer with the option's letter from the given choices directly."


# one line of each task's question file as the spec reads it: LLaVA's own (POPE, GQA, their text carrying the
# suffix), or the line the converter named in the spec's header writes (VQAv2 val, MMBench)
LINES = {
    "pope": {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
             "text": "Is there a snowboard in the image?" + SHORT_ANSWER, "category": "adversarial"},
    "gqa": {"question_id": "201307251", "image": "n161313.jpg", "text": "Is it overcast?" + SHORT_ANSWER,
            "category": "default"},
    "vqav2": {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "What color is the bus?",
              "answers": [{"answer": "red"}] * 10, "answer_type": "other"},
    "mmbench": {"question_id": 1000241, "image": "images/1000241.jpg", "text": "Which material is this?\nA. rubber\n"
                "B. cotton", "options": ["rubber", "cotton"], "answer": "A", "category": "x", "group": 241},
}  # fmt: skip

# the user turn LLaVA-1.5's script builds for that line (before the vicuna_v1 template): "<image>\n" + qs
ASKED = {
    "pope": "<image>\nIs there a snowboard in the image?" + SHORT_ANSWER,
    "gqa": "<image>\nIs it overcast?" + SHORT_ANSWER,
    "vqav2": "<image>\nWhat color is the bus?" + SHORT_ANSWER,
    "mmbench": "<image>\nWhich material is this?\nA. rubber\nB. cotton" + OPTION_LETTER,
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(LINES))
def test_a_question_is_asked_as_llava_asks_it(task):
    spec = eval_spec(task)
    question = from_question_line(LINES[task], "line 1", spec.batch.prompt_suffix)
    assert question.error is None
    assert [m.content for m in question.messages] == [ASKED[task]]  # the suffix once, never twice
    # what scoring reads is kept: the gold (or its annotations' key), the category, the options, the group
    metadata = question.metadata
    if spec.task.annotations is None and spec.task.metric != "review":
        assert spec.task.answer_field in metadata
    if spec.task.category_field is not None:
        assert spec.task.category_field in metadata
    if spec.task.metric == "circular":
        assert {spec.task.options_field, spec.task.group_field} <= set(metadata)


# task -> (task.annotations, task.answer_field): where each benchmark keeps its golds
GOLDS = {
    "pope": ("data/eval/pope/pope_labels.jsonl", "label"),  # converted from POPE's coco_pope_*.json
    "gqa": ("data/eval/gqa/data/testdev_balanced_questions.json", "answer"),  # GQA's {qid: {"answer": ...}}
    "scienceqa": (None, "gold"),  # LLaVA's conversation record: the gpt turn's letter
    "vqav2": (None, "answers"),  # in the converted question file: the 10 human answers
    "mmbench": (None, "answer"),  # in the converted question file: the TSV's gold letter
}


def test_scienceqa_reads_llavas_conversation_file_with_the_suffix_on_the_asked_turn():
    spec = eval_spec("scienceqa")
    record = {"id": "11", "image": "11/image.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the name of the colony shown?\nA. Maryland\nB. New Hampshire"},
        {"from": "gpt", "value": "B"}]}  # fmt: skip
    [question] = from_conversation(record, "#0", spec.batch.prompt_suffix)
    assert question.question_id == "11_0" and question.metadata[spec.task.answer_field] == "B"
    assert [m.content for m in question.messages] == [
        "<image>\nWhat is the name of the colony shown?\nA. Maryland\nB. New Hampshire" + OPTION_LETTER]


@pytest.mark.parametrize("task", sorted(GOLDS))
def test_golds_come_from_where_the_data_keeps_them(task):
    spec = eval_spec(task)
    assert (spec.task.annotations, spec.task.answer_field) == GOLDS[task]


def test_the_review_spec_judge_and_rules():
    judge = eval_spec("llava_bench").task.judge
    assert judge is not None and judge.base_url.startswith("https://") and judge.base_url.endswith("/v1")
    assert (judge.temperature, judge.max_tokens) == (0.2, 1024)  # eval_gpt_review_bench.py's
    assert (judge.context_field, judge.reference_field) == ("caption", "reference")
    rules = load_rules(str(REPO / judge.rules))
    assert {"conv", "detail", "complex"} <= set(rules)  # LLaVA-Bench's categories, each its own rule
    assert all(rule.role == "Assistant" and rule.prompt for rule in rules.values())


def test_the_gpu_batch_spec_is_sized_for_gpu_actors_on_object_storage():
    spec = load(REPO / "jobs" / "configs" / "llava-1.5-7b_batch.yaml", BatchJobSpec)
    b = spec.batch
    assert (spec.model.checkpoint, spec.model.template, spec.model.dtype) == ("llava-hf/llava-1.5-7b-hf", "vicuna_v1",
                                                                               "bfloat16")  # fmt: skip
    assert (b.actors, b.gpus_per_actor) == (8, 1) and 32 <= b.batch_size <= 64
    assert b.preprocess_workers >= 2 * b.actors and b.cpus_per_actor <= 4
    assert all(is_uri(p) and p.startswith("s3://") for p in (b.input, b.image_folder, b.output))
    assert spec.sampling.temperature == 0.0


def test_relative_paths_in_eval_specs_stay_under_data_and_runs():
    for path in EVAL_SPECS:
        spec = load(path, EvalJobSpec)
        for p in (spec.batch.input, spec.batch.image_folder, spec.task.annotations):
            assert p is None or is_uri(p) or Path(p).parts[0] == "data", (path.name, p)
        assert spec.batch.output.startswith("runs/eval/"), path.name
