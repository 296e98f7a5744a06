"""Specs: unknown keys, wrong types and missing fields name the key, the file and the fix."""

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from llava_platform.batch.spec import BatchJobSpec
from llava_platform.pipeline import PipelineSpec
from llava_platform.config import (
    BuildSpec,
    ConfigError,
    ModelSpec,
    TrainJobSpec,
    TrainSpec,
    load,
    parse_overrides,
)

TRAIN = {
    "model": {"preset": "tiny"},
    "data": {"path": "d.json"},
    "train": {"stage": "finetune", "output_dir": "runs/x"},
    "run": {"name": "x", "storage_path": "runs/ray"},
}


def write(tmp_path: Path, data, name="spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_unknown_key_names_file_key_and_closest(tmp_path):
    path = write(tmp_path, {**TRAIN, "train": {**TRAIN["train"], "learning_rate": 1e-4}})
    with pytest.raises(ConfigError) as e:
        load(path, TrainJobSpec)
    msg = str(e.value)
    assert str(path) in msg and "train.learning_rate: unknown key" in msg
    with pytest.raises(ConfigError, match=r"model\.presett: unknown key; did you mean 'preset'\?"):
        load(write(tmp_path, {**TRAIN, "model": {"presett": "tiny"}}), TrainJobSpec)
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'\?"):
        load(write(tmp_path, {**TRAIN, "trian": {}}), TrainJobSpec)


def test_nested_unknown_key_lists_valid_keys_of_its_section(tmp_path):
    spec = {"model": {"components": {"vision_tower": "v", "llm": "l", "projecter": "linear"}}}
    with pytest.raises(ConfigError, match=r"model\.components\.projecter: unknown key; did you mean 'projector'\?.*vision_tower, llm, projector"):
        load(write(tmp_path, spec), BuildSpec)


def test_wrong_type_and_missing_field(tmp_path):
    bad = {**TRAIN, "train": {**TRAIN["train"], "lr": "fast"}}
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be a valid number.*'fast'"):
        load(write(tmp_path, bad), TrainJobSpec)
    missing = {k: v for k, v in TRAIN.items() if k != "data"}
    with pytest.raises(ConfigError, match=r"data: required field is missing"):
        load(write(tmp_path, missing), TrainJobSpec)
    with pytest.raises(ConfigError, match=r"model\.image_mode: Input should be 'square', 'pad' or 'anyres'"):
        load(write(tmp_path, {"model": {"preset": "tiny", "image_mode": "crop"}}), BuildSpec)


def test_model_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one model source.*got: preset, checkpoint"):
        ModelSpec(preset="tiny", checkpoint="x")
    with pytest.raises(ValueError, match="got: none"):
        ModelSpec()
    with pytest.raises(ValueError, match="init: random needs a preset"):
        ModelSpec(checkpoint="x", init="random")
    with pytest.raises(ValueError, match="projector"):
        ModelSpec(components={"vision_tower": "v", "llm": "l", "projector": "mlp_relu"})


def test_overrides_are_typed_and_applied(tmp_path):
    assert parse_overrides(["train.lr=1e-4", "data.path=x.json", "a.b=[1, 2]", "t.flag=true"]) == {
        "train": {"lr": 1e-4}, "data": {"path": "x.json"}, "a": {"b": [1, 2]}, "t": {"flag": True},
    }  # fmt: skip
    spec = load(write(tmp_path, TRAIN), TrainJobSpec, ["train.lr=1e-4", "train.epochs=3", "data.path=other.json"])
    assert spec.train.lr == 1e-4 and spec.train.epochs == 3 and spec.data.path == "other.json"


def test_bad_overrides_are_named(tmp_path):
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match=r"with overrides train\.lrr=1.*train\.lrr: unknown key; did you mean 'lr'"):
        load(write(tmp_path, TRAIN), TrainJobSpec, ["train.lrr=1"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "model: [unclosed"), BuildSpec)
    with pytest.raises(ConfigError, match="spec file not found"):
        load(tmp_path / "nope.yaml", BuildSpec)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(write(tmp_path, "- a\n- b\n"), BuildSpec)


SPEC_KINDS = {
    frozenset({"model"}): BuildSpec,
    frozenset({"model", "data", "train", "run"}): TrainJobSpec,
    frozenset({"model", "data", "train", "scaling", "run"}): TrainJobSpec,
    frozenset({"model", "batch", "sampling"}): BatchJobSpec,
    frozenset({"model", "batch", "sampling", "storage"}): BatchJobSpec,
    frozenset({"pretrain", "finetune", "evaluate", "serve"}): PipelineSpec,
}


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates(path):
    keys = frozenset(yaml.safe_load(path.read_text()))
    assert keys in SPEC_KINDS, f"{path.name}: no spec class for sections {sorted(keys)}"
    spec = load(path, SPEC_KINDS[keys])
    # and survives the trip to Ray workers and into saved checkpoints (a JSON dict, validated again)
    assert SPEC_KINDS[keys].model_validate(spec.model_dump(mode="json")) == spec


def shipped(name: str) -> TrainJobSpec:
    return load(REPO / "jobs" / "configs" / f"{name}.yaml", TrainJobSpec)


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_shipped_llava_1_5_recipes_are_llavas(size):
    """LLaVA-1.5's published hyperparameters: stage 1 projector only on captions, stage 2 from its output."""
    pretrain = shipped(f"llava-1.5-{size}_pretrain")
    assert pretrain.model.preset == f"llava-1.5-{size}" and pretrain.data.template == "plain"
    t = pretrain.train
    assert (t.stage, t.lr, t.global_batch_size, t.scheduler, t.warmup_ratio, t.epochs) == ("pretrain", 1e-3, 256, "cosine", 0.03, 1)
    assert not t.trains_llm and not t.train_vision_tower
    stage1_final = f"{t.output_dir}/final"
    for kind in ["finetune", "lora", "qlora"]:
        spec = shipped(f"llava-1.5-{size}_{kind}")
        t = spec.train
        assert spec.model.checkpoint == stage1_final, kind  # the projector carries over
        assert (t.stage, t.global_batch_size, t.scheduler, t.warmup_ratio, t.epochs) == ("finetune", 128, "cosine", 0.03, 1)
        assert t.trains_llm and not t.train_vision_tower and spec.data.template is None  # stage 1 saved vicuna_v1
        assert (spec.model.lora is not None) == (kind != "finetune")
        assert spec.model.quantization == ("4bit" if kind == "qlora" else "none")
        # full fine-tune at 2e-5; LoRA at its own 2e-4 with the projector kept at 2e-5
        assert (t.lr, t.projector_lr or t.lr) == ((2e-5, 2e-5) if kind == "finetune" else (2e-4, 2e-5)), kind
        # the global batch divides over the workers the spec asks for
        assert t.accumulation_steps(spec.scaling.num_workers) * t.micro_batch_size * spec.scaling.num_workers == 128


def test_shipped_llava_next_recipe_trains_anyres_from_its_stage_1():
    pretrain, finetune = shipped("llava-next-7b_pretrain"), shipped("llava-next-7b_finetune")
    assert pretrain.model.preset == "llava-next-7b" and pretrain.train.stage == "pretrain"
    assert finetune.model.checkpoint == f"{pretrain.train.output_dir}/final"
    assert finetune.train.lr == 2e-5 and finetune.train.global_batch_size == 128 and finetune.train.vision_lr == 2e-6


def test_shipped_tiny_specs_chain_stage_1_into_stage_2():
    pretrain, finetune = shipped("tiny_pretrain"), shipped("tiny_finetune")
    assert pretrain.train.stage == "pretrain" and finetune.train.stage == "finetune"
    assert finetune.model.checkpoint == f"{pretrain.train.output_dir}/final"
    assert not pretrain.scaling.use_gpu and not finetune.scaling.use_gpu
    # a fixed budget of steps, whatever the dataset's size (the 6-minute recipe on this machine)
    assert (pretrain.train.max_steps, finetune.train.max_steps) == (300, 750)
    assert pretrain.train.optimizer == finetune.train.optimizer == "muon" and finetune.train.strategy == "ddp"


def test_a_step_budget_and_epochs_are_not_both_given(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(TRAIN | {"train": {"stage": "finetune", "output_dir": "out", "max_steps": 40}}))
    with pytest.raises(ConfigError, match=r"train: .*epochs=2.0 and max_steps=40 are both set; keep one \(train.max_steps=null"):
        load(path, TrainJobSpec, ["train.epochs=2"])
    by_epochs = load(path, TrainJobSpec, ["train.epochs=2", "train.max_steps=null"]).train
    assert (by_epochs.epochs, by_epochs.max_steps) == (2.0, None)
    by_steps = load(path, TrainJobSpec).train
    assert TrainSpec.model_validate(by_steps.model_dump()) == by_steps  # workers get the spec as a dict


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.lora.r=8", "train.strategy=zero3"], "use train.strategy: zero2"),
        (["model.dtype=float16"], "use model.dtype: bfloat16, or a DeepSpeed strategy"),
    ],
)
def test_training_combinations_that_would_save_or_train_wrongly_are_refused(tmp_path, overrides, named):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(TRAIN | {"train": {"stage": "finetune", "output_dir": "out"}, "run": {"name": "r", "storage_path": "s"}}))
    with pytest.raises(ConfigError, match=named):
        load(path, TrainJobSpec, overrides)
    load(path, TrainJobSpec, [o.replace("zero3", "zero2").replace("float16", "bfloat16") for o in overrides])  # the fix works


def test_partial_checkpointing_needs_checkpointing(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(TRAIN | {"train": {"stage": "finetune", "output_dir": "out"}}))
    with pytest.raises(ConfigError, match=r"checkpoint_every_n_layers=2 needs gradient_checkpointing=true"):
        load(path, TrainJobSpec, ["train.checkpoint_every_n_layers=2"])
    assert load(path, TrainJobSpec, ["train.checkpoint_every_n_layers=2", "train.gradient_checkpointing=true"]).train.checkpoint_every_n_layers == 2
