"""`jobs.batch_infer`'s spec: the model, the input and output, the pipeline's sizes, the decoding.

    model: {checkpoint: runs/7b/final}                   # a directory, hub id or s3:// / gs:// URI
    batch:
      input: s3://bucket/eval/questions.jsonl            # question file, conversations, image folder or glob, Parquet
      image_folder: s3://bucket/coco/val2014
      output: s3://bucket/answers/7b                     # part files of LLaVA's answers format
      actors: 8                                          # model replicas (one GPU each with gpus_per_actor: 1)
    sampling: {max_new_tokens: 128}

Unknown keys are a ConfigError naming the dotted key and the closest valid one, as for every spec.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llava_platform.config import ModelSpec, SamplingSpec, StorageSpec, StrictModel

__all__ = ["BatchSpec", "BatchJobSpec", "INPUT_FORMATS"]

INPUT_FORMATS = ("questions", "conversations", "images", "parquet")


class BatchSpec(StrictModel):
    """What is asked, where the answers go, and how the Ray Data pipeline is sized."""

    input: str = Field(
        description="LLaVA question file (.jsonl: question_id, image, text), LLaVA conversations (.json list or .jsonl "
        "with `conversations`), a folder or glob of images, or Parquet with an image-bytes column; a path or a URI"
    )
    format: Literal["auto", "questions", "conversations", "images", "parquet"] = Field(
        "auto", description="auto: a folder or glob is images, .parquet is parquet, a .jsonl/.json file is conversations "
        "when its first record has `conversations`, else questions"
    )
    image_folder: str | None = Field(
        None, description="folder or URI prefix that the records' image paths are relative to"
    )
    prompt: str = Field(
        "Describe the image.", description="images and parquet formats: the question asked about every image "
        "(parquet: when the row has no text_column)"
    )
    prompt_suffix: str | None = Field(
        None, description="appended to every question of a question file or Parquet input (LLaVA-1.5's question "
        "files already carry theirs: set it only when the task says so)"
    )
    id_column: str = Field("question_id", description="parquet: the column naming each row (required: a re-run skips rows "
                           "by it)")
    image_column: str = Field(
        "image", description="parquet: the column of encoded image bytes (PNG, JPEG ...), or of {bytes, path} structs "
        "as Hugging Face datasets write them"
    )
    text_column: str = Field("text", description="parquet: the column of questions (absent: `prompt` for every row)")
    output: str = Field(description="folder or URI prefix the answers are written under (part files; re-running resumes)")
    output_format: Literal["jsonl", "parquet"] = Field(
        "jsonl", description="jsonl: LLaVA's answers format, one JSON object per line; parquet: the same columns, "
        "metadata as a JSON string"
    )
    batch_size: int = Field(16, gt=0, description="rows each model call answers together")
    actors: int = Field(1, gt=0, description="model actors (each holds one copy of the model)")
    cpus_per_actor: float = Field(1.0, gt=0, description="logical CPUs each model actor reserves (its torch threads on CPU)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each model actor reserves (0: the model runs on CPU)")
    preprocess_workers: int = Field(
        2, gt=0, description="most Ray Data tasks at once in each CPU stage (reading questions; decoding images and "
        "encoding prompts), so up to twice this many run"
    )
    preprocess_cpus: float = Field(1.0, gt=0, description="logical CPUs each preprocessing task reserves")
    max_image_pixels: int = Field(
        89_478_485, gt=0, description="images with more pixels are answered with an error row (decompression bombs)"
    )
    max_image_side: int = Field(
        4096, gt=0, description="images with a longer side are scaled down to it, aspect kept, before the processor "
        "(pad mode pads to a square: a 60000 x 2 image would become 60000 x 60000)"
    )
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="prompts longer than this (images expanded) get a too_long error row; default: the "
        "LLM's context length less sampling.max_new_tokens"
    )
    rows_per_part: int = Field(1000, gt=0, description="answers per output part file")
    commit_every_s: float = Field(
        60.0, gt=0, description="a part holding fewer rows is written after this many seconds anyway (what a crash can "
        "lose, at most)"
    )
    progress_every_s: float = Field(30.0, gt=0, description="seconds between progress lines in logs (not at a terminal)")
    model_id: str | None = Field(None, description="the answers' model_id; default: the checkpoint's folder name")
    cache_dir: str | None = Field(
        None, description="where a question or conversation file is kept as Parquet shards between runs (a path every "
        "node reaches, or a URI); default: <output>/.cache"
    )


class BatchJobSpec(StrictModel):
    """`jobs.batch_infer`."""

    model: ModelSpec
    batch: BatchSpec
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @model_validator(mode="after")
    def _saved_model(self) -> "BatchJobSpec":
        if self.model.checkpoint is None:
            raise ValueError(
                "model.checkpoint: a batch job answers with a saved model (a directory, hub id or URI), so that every "
                "actor holds the same weights; save a preset first with `python -m jobs.build_model`"
            )
        return self
