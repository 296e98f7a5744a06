"""Typed specs for every YAML file the platform reads, and `load()` to read them.

A job spec is one YAML file whose top-level keys are sections (`model:`,
`data:`, `train:` ...). Every field is typed and described here; unknown keys,
wrong types and missing fields are a `ConfigError` that names the file, the
dotted key and, for a misspelt key, the closest valid one.

    spec = load("jobs/configs/tiny_finetune.yaml", TrainJobSpec, ["train.lr=1e-4"])
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ConfigError",
    "StrictModel",
    "ComponentsSpec",
    "LoraSpec",
    "ModelSpec",
    "StorageSpec",
    "DataSpec",
    "SamplingSpec",
    "TrainSpec",
    "ScalingSpec",
    "RunSpec",
    "BuildSpec",
    "TrainJobSpec",
    "load",
    "parse_overrides",
    "dump",
    "did_you_mean",
]

PROJECTOR_PATTERN = r"^(linear|mlp(\d+)x_gelu)$"


class ConfigError(ValueError):
    """A spec file or override is invalid; the message names the key and the fix."""


class StrictModel(BaseModel):
    """Base for every spec: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- model


class ComponentsSpec(StrictModel):
    """A model assembled from a vision tower, an LLM and a fresh projector."""

    vision_tower: str = Field(description="CLIP or SigLIP vision model: hub id or local directory")
    llm: str = Field(description="causal LM: hub id or local directory (its tokenizer is used)")
    projector: str = Field(
        "mlp2x_gelu",
        pattern=PROJECTOR_PATTERN,
        description="projector type: linear, mlp2x_gelu or mlpNx_gelu (N linear layers with GELU between)",
    )


class LoraSpec(StrictModel):
    """LoRA adapters on the LLM's linear layers (never on the vision tower or projector)."""

    r: int = Field(128, gt=0, description="adapter rank")
    alpha: int = Field(256, gt=0, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        None,
        description="leaf names of LLM linear layers to adapt (e.g. [q_proj, v_proj]); default: all of them",
    )
    train_projector: bool = Field(True, description="train the projector fully alongside the adapters")


class ModelSpec(StrictModel):
    """Where a model comes from and how its inputs are built.

    Exactly one source: `preset`, `components`, `checkpoint` or `original_checkpoint`.
    Fields left unset (template, image_mode ...) come from the preset or the checkpoint.
    """

    preset: str | None = Field(None, description="named preset: tiny, llava-1.5-7b, llava-1.5-13b, llava-next-7b, ...")
    components: ComponentsSpec | None = Field(None, description="build from a vision tower + LLM + new projector")
    checkpoint: str | None = Field(
        None, description="HF-format LLaVA / LLaVA-NeXT checkpoint: directory, hub id, or an s3:// / gs:// URI (training "
        "and batch jobs copy it to each node; storage.* reaches it)"
    )
    original_checkpoint: str | None = Field(
        None, description="original-LLaVA checkpoint directory (mm_* config, model.mm_projector.* keys) to convert"
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: the preset's shapes with random weights, no download (speed tests)"
    )
    template: str | None = Field(None, description="conversation template name (see llava_platform.data.templates)")
    image_mode: Literal["square", "pad", "anyres"] | None = Field(
        None, description="square: resize + center crop; pad: pad to square with the mean colour; anyres: LLaVA-NeXT tiles"
    )
    image_grid_pinpoints: list[tuple[int, int]] | None = Field(
        None, description="anyres candidate resolutions as (height, width) pairs"
    )
    vision_feature_layer: int | None = Field(None, description="vision hidden layer fed to the projector (-2 in LLaVA-1.5)")
    vision_feature_select_strategy: Literal["default", "full"] | None = Field(
        None, description="default: drop the CLS token; full: keep it"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype once loaded")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="bitsandbytes quantization of the LLM (QLoRA uses 4bit); vision tower and projector stay unquantized"
    )
    lora: LoraSpec | None = Field(None, description="wrap the LLM with LoRA adapters")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="attention kernel; default lets transformers choose"
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSpec":
        sources = [n for n in ("preset", "components", "checkpoint", "original_checkpoint") if getattr(self, n) is not None]
        if len(sources) != 1:
            got = ", ".join(sources) if sources else "none"
            raise ValueError(
                f"give exactly one model source of preset, components, checkpoint, original_checkpoint (got: {got})"
            )
        if self.init == "random" and self.preset is None:
            raise ValueError("init: random needs a preset (it takes the preset's shapes)")
        return self


# --------------------------------------------------------------------------- storage


class StorageSpec(StrictModel):
    """How s3:// (and S3-compatible) and gs:// paths are reached; credentials come from the environment
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance role; GOOGLE_APPLICATION_CREDENTIALS)."""

    endpoint_url: str | None = Field(
        None, pattern=r"^https?://[^/]+/?$",
        description="S3-compatible store to use instead of AWS, e.g. http://minio.internal:9000",
    )  # fmt: skip
    region: str | None = Field(None, description="S3 region (default: the SDK's, from AWS_REGION or the bucket)")
    anonymous: bool = Field(False, description="read public buckets without credentials")


# --------------------------------------------------------------------------- data


class DataSpec(StrictModel):
    """A LLaVA-format dataset: JSON list or JSONL of {id, image?, conversations}."""

    path: str = Field(description="LLaVA JSON (.json, a list), JSONL (.jsonl) or Parquet (.parquet) file: a local path "
                      "or a URI (s3://, gs://)")
    image_folder: str | None = Field(
        None, description="folder or URI prefix that the records' `image` paths are relative to"
    )
    cache_dir: str | None = Field(
        None, description="where the records' shards and the data check's results are kept between runs (a path every "
        "node reaches, or a URI); default: <run.storage_path>/data_cache"
    )
    max_length: int = Field(2048, gt=0, description="samples longer than this many tokens (images expanded) are truncated")
    max_image_pixels: int = Field(
        89_478_485, gt=0, description="images with more pixels are refused as decompression bombs (PIL's default)"
    )
    max_untrainable_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="fraction of samples allowed to have no trained token (they are skipped and reported); above it the job fails",
    )
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop before training listing bad record ids; skip: drop them and report the ids"
    )
    template: str | None = Field(
        None, description="template the training conversations are rendered with (plain in stage 1); default: the model's"
    )
    preprocess_workers: int = Field(
        4, gt=0, description="most Ray Data tasks decoding images and tokenising at once for each training worker (the "
        "data check before training runs this many x scaling.num_workers)"
    )
    preprocess_cpus: float = Field(1.0, gt=0, description="logical CPUs each of those tasks reserves")
    cache_encoded: bool = Field(
        False,
        description="encode every sample once before training, keep it in Ray's object store and replay it from the "
        "training worker's memory every epoch (small datasets: a 96-px sample is ~30 KB, a 336-px one ~350 KB; a set "
        "that would not fit the object store is refused); false: stream, encoding every epoch",
    )


# --------------------------------------------------------------------------- inference


class SamplingSpec(StrictModel):
    """Decoding settings, shared by the CLI, batch and serve."""

    temperature: float = Field(0.0, ge=0.0, description="0 is greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_new_tokens: int = Field(128, gt=0, description="upper bound on generated tokens")
    stop: list[str] = Field(default_factory=list, description="extra stop strings (the template's own stop is always used)")
    seed: int | None = Field(None, description="random seed for sampling; same seed and inputs give the same text")


# --------------------------------------------------------------------------- jobs


class TrainSpec(StrictModel):
    """One training stage: what trains, the optimizer, the schedule, the batch, checkpoints."""

    stage: Literal["pretrain", "finetune"] = Field(description="pretrain: projector only; finetune: projector + LLM")
    output_dir: str = Field(description="where final/ (a complete HF checkpoint) is written at the end: a local path, "
                            "or a URI (s3://, gs://) final/ is uploaded to")
    train_llm: bool | None = Field(
        None, description="train the LLM (default: no in pretrain, yes in finetune); a random-init LLM (tiny) trains in both"
    )
    train_vision_tower: bool = Field(False, description="also train the vision tower (with vision_lr)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    projector_lr: float | None = Field(None, gt=0, description="projector learning rate; default: lr")
    vision_lr: float | None = Field(None, gt=0, description="vision tower learning rate; default: lr")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="muon: Muon on the linear layers' weights (LoRA adapters included), AdamW on embeddings, "
        "LM head, norms, biases (learns a from-scratch model in fewer steps; ddp only)"
    )
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay on matrices (never on biases and norms)")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW (beta1, beta2); a from-scratch model learns faster with beta2 0.95"
    )
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="fraction of steps with linear warmup")
    scheduler: Literal["cosine", "linear", "constant", "warmup_stable_decay"] = Field(
        "cosine", description="decay after warmup; warmup_stable_decay: constant, then a linear decay over the last decay_ratio"
    )
    decay_ratio: float = Field(0.2, gt=0, le=1, description="warmup_stable_decay: fraction of steps in the final decay to 0")
    epochs: float | None = Field(None, gt=0, description="passes over the data (fractions allowed); default 1 without max_steps")
    max_steps: int | None = Field(
        None, gt=0, description="optimizer steps to train, the data repeating as needed; replaces epochs, so the budget "
        "does not depend on the dataset's size"
    )
    global_batch_size: int = Field(128, gt=0, description="samples per optimizer step across all workers")
    micro_batch_size: int = Field(16, gt=0, description="samples per forward pass per worker")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping (global L2 norm)")
    strategy: Literal["ddp", "zero2", "zero3", "zero3_offload"] = Field(
        "ddp", description="ddp: torch DistributedDataParallel; zero2 / zero3 / zero3_offload: DeepSpeed ZeRO (shipped configs)"
    )
    deepspeed_config: str | None = Field(
        None, description="a DeepSpeed JSON to use instead of the shipped one for the strategy ('auto' values are filled in)"
    )
    gradient_checkpointing: bool = Field(False, description="recompute LLM activations in backward (less memory, ~30% more compute)")
    checkpoint_every_n_layers: int = Field(
        1, ge=1, description="with gradient_checkpointing, recompute only every n-th layer (1: all); the others keep their "
        "activations, trading memory left unused back for speed"
    )
    compile: bool = Field(
        False, description="torch.compile each transformer layer (LLM and vision tower): fused elementwise kernels; the first "
        "steps compile (about a minute, longer for new sequence lengths)"
    )
    length_grouping_window: int = Field(
        16, ge=1, description="micro-batches whose samples are sorted together by modality and length (1: no grouping)"
    )
    log_every_steps: int = Field(10, gt=0, description="optimizer steps between metric lines")
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="optimizer steps between checkpoints (one is always written at the end)"
    )
    keep_checkpoints: int = Field(2, gt=0, description="newest checkpoints kept in the run's storage")
    merge_lora: bool = Field(
        True, description="final/ holds the LoRA-merged model (unquantized, in model.dtype); false: the adapters with "
        "every weight trained in place (projector, and the tower if it trained), loaded on the base they trained on"
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="per-device peak for MFU; default: known GPUs (H100 989, A100 312), none on CPU"
    )
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="also send the metrics to these trackers (written under the run's directory)"
    )
    seed: int = Field(0, description="data order and initialisation seed")

    @model_validator(mode="after")
    def _one_length(self) -> "TrainSpec":
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                f"epochs={self.epochs} and max_steps={self.max_steps} are both set; keep one (train.max_steps=null "
                "trains by epochs)"
            )
        return self

    @model_validator(mode="after")
    def _checkpointing(self) -> "TrainSpec":
        if self.checkpoint_every_n_layers > 1 and not self.gradient_checkpointing:
            raise ValueError(
                f"checkpoint_every_n_layers={self.checkpoint_every_n_layers} needs gradient_checkpointing=true "
                "(or leave it at 1)"
            )
        return self

    @model_validator(mode="after")
    def _muon_needs_whole_matrices(self) -> "TrainSpec":
        if self.optimizer == "muon" and self.strategy != "ddp":
            raise ValueError(
                f"train.optimizer=muon with train.strategy={self.strategy}: DeepSpeed ZeRO flattens and partitions the "
                "weights, and Muon needs each matrix whole; use strategy ddp with muon, or optimizer adamw with ZeRO"
            )
        return self

    @property
    def trains_llm(self) -> bool:
        return self.stage == "finetune" if self.train_llm is None else self.train_llm

    def accumulation_steps(self, workers: int) -> int:
        """Micro-batches per optimizer step on each worker, so the global batch stays what the spec says."""
        per_step = self.micro_batch_size * workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of train.micro_batch_size="
                f"{self.micro_batch_size} x {workers} workers; change one of them"
            )
        return self.global_batch_size // per_step


class ScalingSpec(StrictModel):
    """Ray Train workers: how many, what each reserves, where they go."""

    num_workers: int = Field(1, gt=0, description="training workers (one process each; one GPU each with use_gpu)")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); false: CPU workers (gloo)")
    cpus_per_worker: float = Field(1, gt=0, description="logical CPUs each worker reserves")
    gpus_per_worker: float | None = Field(None, gt=0, description="GPUs each worker reserves; default 1 with use_gpu")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra custom resources each worker reserves, e.g. {A100: 1}"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement group strategy: STRICT_SPREAD puts every worker on its own node"
    )
    torch_threads: int | None = Field(None, gt=0, description="intra-op threads per CPU worker; default: cpus_per_worker")

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> "ScalingSpec":
        if self.gpus_per_worker is not None and not self.use_gpu:
            raise ValueError("gpus_per_worker is set but use_gpu is false; set use_gpu: true")
        return self

    def ray_resources(self) -> dict[str, float]:
        """ScalingConfig.resources_per_worker."""
        resources = {"CPU": self.cpus_per_worker, **self.resources_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker or 1
        return resources


class RunSpec(StrictModel):
    """The Ray Train run: its name and storage (re-running with the same pair resumes it), failures."""

    name: str = Field(pattern=r"^[\w.-]+$", description="run name; re-running a stopped job with the same name resumes it")
    storage_path: str = Field(
        description="where checkpoints go: a local path shared by all nodes, or a URI (s3://, gs://); relative paths "
        "are taken from the directory the job starts in"
    )
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the latest checkpoint (-1: unlimited)")


class BuildSpec(StrictModel):
    """`jobs.build_model`: one model section."""

    model: ModelSpec


class TrainJobSpec(StrictModel):
    """`jobs.pretrain` / `jobs.finetune`."""

    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    run: RunSpec
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainJobSpec":
        self.train.accumulation_steps(self.scaling.num_workers)  # the global batch must split evenly
        if self.model.lora is not None and self.train.stage == "pretrain":
            raise ValueError("model.lora: LoRA is for stage 2 (finetune); stage 1 trains the projector only")
        if self.model.quantization != "none" and self.model.lora is None:
            raise ValueError(f"model.quantization={self.model.quantization}: quantized weights cannot train; add model.lora (QLoRA)")
        if self.model.quantization != "none" and self.train.strategy.startswith("zero3"):
            raise ValueError("model.quantization with ZeRO-3: bitsandbytes weights cannot be partitioned; use strategy ddp or zero2")
        if self.model.lora is not None and self.train.strategy.startswith("zero3"):
            # adapters are saved with peft's save_pretrained, which reads ZeRO-3's empty partition placeholders
            raise ValueError(f"model.lora with train.strategy={self.train.strategy}: adapter checkpoints need whole "
                             "parameters; use train.strategy: zero2 (adapters are small, so ZeRO-3 saves little)")  # fmt: skip
        if self.model.dtype == "float16" and self.train.strategy == "ddp":
            raise ValueError("model.dtype=float16 with train.strategy=ddp: fp16 needs loss scaling, which the ddp "
                             "strategy does not do; use model.dtype: bfloat16, or a DeepSpeed strategy")  # fmt: skip
        return self


# --------------------------------------------------------------------------- loading


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["train.lr=1e-4", "data.path=x.json"] -> {"train": {"lr": 1e-4}, "data": {"path": "x.json"}}.

    Values are parsed as YAML scalars, so `1e-4` is a float and `[a, b]` a list.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. train.lr=1e-4")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} was already set to a value, not a section")
        node[leaf] = _parse_scalar(raw)
    return tree


def _parse_scalar(raw: str) -> Any:
    """YAML scalar, except that YAML 1.1 reads `1e-4` as a string: read it as the float it is."""
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value):
        return float(value)
    return value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[...] / list[...] annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def _valid_keys(spec_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the spec section that `loc` points into."""
    cls: type[BaseModel] | None = spec_cls
    for part in loc:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            continue  # list indices and union tags
        cls = _model_class(cls.model_fields[part].annotation)
    return list(cls.model_fields) if cls is not None else []


def did_you_mean(name: str, choices, cutoff: float = 0.6) -> str:
    """"did you mean 'X'? " for the closest of `choices` to a misspelt `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'? " if close else ""


def _describe(error: dict[str, Any], spec_cls: type[BaseModel], source: str) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(spec_cls, loc[:-1])
        return f"{source}: {dotted}: unknown key; {did_you_mean(str(loc[-1]), valid, cutoff=0.5)}valid keys here: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"{source}: {dotted}: required field is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {dotted}: {error['msg']}{shown}"


def validate(data: Any, spec_cls: type[BaseModel], source: str = "<spec>") -> BaseModel:
    """Validate a parsed dict against `spec_cls`, turning pydantic errors into a readable ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return spec_cls.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, spec_cls, source) for err in e.errors()]
        raise ConfigError("\n".join(lines)) from e


def load(path: str | Path, spec_cls: type[BaseModel], overrides: list[str] | None = None) -> Any:
    """Read a YAML spec, apply dotted overrides and validate it as `spec_cls`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: spec file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data = _merge(data, parse_overrides(overrides))
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return validate(data, spec_cls, source)


def dump(spec: BaseModel) -> str:
    """The resolved spec as YAML (saved next to every checkpoint)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
