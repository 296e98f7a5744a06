"""final/ is the model that was trained: QLoRA merged into the weights it trained on, trained-in-place
weights kept, adapter checkpoints reloading on their trained (4-bit) base, provenance recorded.

No training loop here: a "run" is the model build_training makes (adapters, freeze with the vision
tower training), its trained weights set to seeded random values, saved as save_training_state saves it.
"""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import ray.train
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import make_image
from llava_platform.config import ModelSpec, TrainJobSpec
from llava_platform.model import ModelBundle, build_model, load_checkpoint, save_checkpoint
from llava_platform.model.freeze import apply_freeze
from llava_platform.model.lora import ADAPTER_CONFIG, TRAINED_BASE_FILE, apply_lora, load_adapter_weights, merge_lora
from llava_platform.train.final import PROVENANCE_FILE, export_final
from llava_platform.model.builder import build_processor_for
from llava_platform.train.setup import RESOLVED_FIELDS, local_model_source, training_template
from llava_platform.train.state import MODEL_DIR

bnb = pytest.importorskip("bitsandbytes")

PROVENANCE = {"job_spec": {"train": {"lr": 0.01}}, "data_sha256": "ab12", "git_commit": "0123abc"}


def job_spec(root: Path, base: Path, quantization: str, merge_lora: bool) -> TrainJobSpec:
    return TrainJobSpec.model_validate({
        "model": {"checkpoint": str(base), "quantization": quantization, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "data": {"path": str(root / "data.json")},
        "train": {"stage": "finetune", "output_dir": str(root / "out"), "train_vision_tower": True,
                  "merge_lora": merge_lora, "global_batch_size": 2, "micro_batch_size": 2},
        "run": {"name": "final-model", "storage_path": str(root / "ray")},
    })  # fmt: skip


def trained_run(spec: TrainJobSpec, root: Path) -> tuple[ModelBundle, ray.train.Checkpoint]:
    """The trained model as the run held it, and its checkpoint (root/model: an adapter checkpoint)."""
    bundle = build_model(spec.model.model_copy(update={"lora": None}))
    model = apply_lora(bundle.model, spec.model.lora)
    apply_freeze(model, spec.train.stage, spec.train.train_vision_tower, spec.train.trains_llm)
    torch.manual_seed(1)
    with torch.no_grad():  # "training": B leaves zero, the projector's copy and the tower move
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
            elif param.requires_grad and "lora_A" not in name:
                param.add_(torch.randn_like(param) * 0.05)
    resolved = {k: getattr(bundle.spec, k) for k in RESOLVED_FIELDS}
    trained = replace(bundle, model=model, spec=spec.model.model_copy(update=resolved))
    save_checkpoint(trained, root / MODEL_DIR)
    return trained, ray.train.Checkpoint.from_directory(str(root))


def batch(processor) -> dict[str, torch.Tensor]:
    """Two questions about two images (the tiny preset's mistral_instruct template), padded to one (2, T) batch."""
    prompts = ["[INST] <image>\nWhat shape is at the top left? [/INST] a red circle",
               "[INST] <image>\nHow many squares are there? [/INST] two"]  # fmt: skip
    images = [make_image(64, 64, seed=5), make_image(80, 48, seed=6)]
    return processor(text=prompts, images=images, padding=True, return_tensors="pt")


def logits(model: nn.Module, inputs, as_trained: bool = False) -> torch.Tensor:
    """(2, T, vocab) float32 logits. as_trained: the 4-bit layers compute as in training (dequantize, float32 matmul);
    in eval, bitsandbytes' CPU inference kernel computes in bfloat16. Every dropout here is 0, so train mode is exact."""
    model.train(as_trained)
    with torch.no_grad():
        out = model(**inputs).logits.float()
    model.eval()
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def qlora(request, tiny_checkpoint, tmp_path_factory):
    """A run on a bitsandbytes base (QLoRA: 4bit; 8bit dequantizes the same way)."""
    root = tmp_path_factory.mktemp(request.param)
    spec = job_spec(root, tiny_checkpoint, request.param, merge_lora=True)
    trained, checkpoint = trained_run(spec, root / "checkpoint")
    inputs = batch(trained.processor)
    return spec, checkpoint, Path(checkpoint.path) / MODEL_DIR, inputs, logits(trained.model, inputs, as_trained=True)


def test_qlora_final_is_merged_into_the_weights_it_trained_on(qlora, tiny_checkpoint):
    spec, checkpoint, model_dir, inputs, as_trained = qlora
    final = export_final(checkpoint, spec, provenance=PROVENANCE)
    assert json.loads((final / PROVENANCE_FILE).read_text()) == PROVENANCE
    assert [p for p in os.listdir(final.parent) if p.startswith(".")] == []  # written in one atomic step
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config and not (final / ADAPTER_CONFIG).exists()
    merged = load_checkpoint(final)
    assert merged.spec.quantization == "none" and merged.spec.checkpoint == str(final)
    assert {type(m) for m in merged.model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    assert {p.dtype for p in merged.model.parameters()} == {torch.float32}
    assert max_diff(logits(merged.model, inputs), as_trained) < 1e-3
    # the old export merged the adapters into the original float weights, which the run never saw (4bit: 1.35, 8bit: 0.12)
    base = load_checkpoint(tiny_checkpoint)
    unquantized = apply_lora(base.model, spec.model.lora)
    load_adapter_weights(unquantized, model_dir)
    assert max_diff(logits(merge_lora(unquantized), inputs), as_trained) > 0.05


def test_adapter_checkpoint_reloads_on_its_quantized_base(qlora):
    spec, _, model_dir, inputs, as_trained = qlora
    bundle = load_checkpoint(model_dir)  # model.quantization not restated
    assert bundle.spec.quantization == spec.model.quantization
    llm = {type(m.base_layer) for n, m in bundle.model.named_modules() if hasattr(m, "base_layer") and "language_model" in n}
    assert llm == {{"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}[spec.model.quantization]}
    assert max_diff(logits(bundle.model, inputs, as_trained=True), as_trained) < 1e-5
    with pytest.raises(ValueError, match="merge_lora: the base is bitsandbytes-quantized"):
        merge_lora(bundle.model)  # peft would quantize the merged weights again


def test_another_quantization_than_trained_is_refused(qlora):
    spec, _, model_dir, _, _ = qlora
    trained = spec.model.quantization
    with pytest.raises(ValueError, match=rf"model.quantization=none, but these adapters were trained on a "
                       rf"model.quantization={trained} base.*merged final/.*set model.quantization: {trained}"):  # fmt: skip
        load_checkpoint(model_dir, ModelSpec(checkpoint=str(model_dir), quantization="none"))
    assert load_checkpoint(model_dir, ModelSpec(checkpoint=str(model_dir), quantization=trained)).spec.quantization == trained


@pytest.fixture(scope="module")
def lora(tiny_checkpoint, tmp_path_factory):
    """A LoRA run (no quantization) whose vision tower trained in place."""
    root = tmp_path_factory.mktemp("lora")
    spec = job_spec(root, tiny_checkpoint, "none", merge_lora=False)
    trained, checkpoint = trained_run(spec, root / "checkpoint")
    inputs = batch(trained.processor)
    return spec, checkpoint, Path(checkpoint.path) / MODEL_DIR, inputs, logits(trained.model, inputs)


def test_unmerged_final_keeps_the_weights_trained_in_place(lora):
    spec, checkpoint, model_dir, inputs, trained = lora
    saved = load_file(model_dir / TRAINED_BASE_FILE)
    assert saved and all(".vision_tower." in n for n in saved)  # the tower: the only base part trained in place
    final = export_final(checkpoint, spec, provenance=PROVENANCE)
    assert json.loads((final / PROVENANCE_FILE).read_text()) == PROVENANCE
    assert load_file(final / TRAINED_BASE_FILE).keys() == saved.keys()
    assert max_diff(logits(load_checkpoint(final).model, inputs), trained) < 1e-5
    # the root: an adapter checkpoint loaded (frozen, for inference) and saved again keeps its trained weights
    again = save_checkpoint(load_checkpoint(model_dir), model_dir.parent / "again")
    resaved = load_file(again / TRAINED_BASE_FILE)
    assert resaved.keys() == saved.keys() and all(torch.equal(resaved[n], t) for n, t in saved.items())
    assert max_diff(logits(load_checkpoint(again).model, inputs), trained) < 1e-5
    # what the old export wrote: the adapters and projector without the trained tower
    (again / TRAINED_BASE_FILE).unlink()
    assert max_diff(logits(load_checkpoint(again).model, inputs), trained) > 0.05


def test_merged_final_answers_as_the_lora_run(lora):
    spec, checkpoint, _, inputs, trained = lora
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"merge_lora": True})})
    final = export_final(checkpoint, spec)
    assert not (final / PROVENANCE_FILE).exists() and not (final / ADAPTER_CONFIG).exists()
    assert max_diff(logits(load_checkpoint(final).model, inputs), trained) < 1e-4


def test_a_final_model_for_an_object_store_is_uploaded_whole_and_loads_from_there(lora, s3_server, tmp_path):
    """train.output_dir=s3://...: final/ is made locally, then uploaded; what Serve and batch copy back answers as
    the run (the merged model, provenance included)."""
    from llava_platform.config import StorageSpec
    from llava_platform.storage import Storage

    spec, checkpoint, _, inputs, trained = lora
    uri = f"s3://{s3_server.BUCKET}/final-upload/run"
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"merge_lora": True, "output_dir": uri}),
                                   "storage": StorageSpec(endpoint_url=s3_server.endpoint)})  # fmt: skip
    final = export_final(checkpoint, spec, provenance=PROVENANCE)
    assert final == f"{uri}/final"
    names = [path.rsplit("/", 1)[-1] for path in s3_server.storage.list_files(final)]
    assert {"config.json", "model.safetensors", "llava_platform.yaml", PROVENANCE_FILE} <= set(names)
    local = Path(Storage(spec.storage).local_copy(final, tmp_path / "cache"))
    assert json.loads((local / PROVENANCE_FILE).read_text()) == PROVENANCE
    assert max_diff(logits(load_checkpoint(local).model, inputs), trained) < 1e-4
    # a stage-2 spec naming it: each node trains from its own copy; the driver's data check copies no weights
    stage2 = spec.model_copy(update={"model": ModelSpec(checkpoint=final)})
    on_node, for_driver = local_model_source(stage2), local_model_source(stage2, weights=False)
    assert max_diff(logits(load_checkpoint(on_node.model.checkpoint).model, inputs), trained) < 1e-4
    assert not list(Path(for_driver.model.checkpoint).glob("*.safetensors"))
    assert build_processor_for(for_driver.model) is not None and training_template(for_driver) == "mistral_instruct"


def test_a_node_copy_of_an_object_store_folder_follows_what_is_there(s3_server, tmp_path):
    """local_copy keys its copy by the files' names, sizes and times: the same folder is copied once, a folder written
    again (a re-trained final/ at the same URI) is copied again, never served from the old copy."""
    storage, uri = s3_server.storage, f"s3://{s3_server.BUCKET}/copies-{os.getpid()}/model"
    storage.write_bytes(f"{uri}/config.json", b'{"v": 1}')
    first = storage.local_copy(uri, tmp_path)
    assert storage.local_copy(uri, tmp_path) == first and (Path(first) / "config.json").read_bytes() == b'{"v": 1}'
    storage.write_bytes(f"{uri}/config.json", b'{"v": 22}')
    second = storage.local_copy(uri, tmp_path)
    assert second != first and (Path(second) / "config.json").read_bytes() == b'{"v": 22}'
    with pytest.raises(FileNotFoundError, match="no files there"):
        storage.local_copy(f"s3://{s3_server.BUCKET}/nothing-here", tmp_path)
