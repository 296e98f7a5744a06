"""`jobs.evaluate`'s spec: a batch job (model, batch, sampling) plus the task that scores its answers.

    task:
      name: pope
      metric: pope                 # exact_match | vqa_accuracy | pope | multiple_choice | circular | review
      answer_field: label          # the gold, in each question's record (or in task.annotations)
      category_field: category     # per-category breakdown
    batch: {input: eval/pope/llava_pope_test.jsonl, image_folder: eval/pope/val2014, output: runs/eval/pope}

Each metric reads the model's answer its own way (the normaliser is the metric's): exact_match compares
normalised strings, vqa_accuracy VQAv2's normalisation and soft score over the gold list, pope the
yes/no reading, multiple_choice and circular the option letter, review asks a judge model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llava_platform.batch.spec import BatchJobSpec
from llava_platform.config import StrictModel

__all__ = ["JudgeSpec", "TaskSpec", "EvalJobSpec", "METRICS"]

METRICS = ("exact_match", "vqa_accuracy", "pope", "multiple_choice", "circular", "review")


class JudgeSpec(StrictModel):
    """The judge of a GPT-assisted review: any OpenAI-compatible chat endpoint (OpenAI, vLLM, this platform's Serve)."""

    base_url: str = Field(pattern=r"^https?://", description="the endpoint's /v1 URL, e.g. https://api.openai.com/v1")
    model: str = Field(description="the judge model's name at that endpoint, e.g. gpt-4o")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="environment variable holding the endpoint's API key (null: no key)"
    )
    rules: str = Field("jobs/configs/eval/review_rules.json", description="rule file: {category: {role, prompt}}")
    context_field: str = Field("caption", description="the question's field holding the image's text context")
    reference_field: str = Field("reference", description="the question's field holding the reference answer")
    max_tokens: int = Field(256, gt=0, description="judge reply length")
    temperature: float = Field(0.2, ge=0, description="judge sampling temperature (LLaVA's review uses 0.2)")
    concurrency: int = Field(4, gt=0, description="judge requests at once")


class TaskSpec(StrictModel):
    """What the answers are scored against, and how."""

    name: str = Field(pattern=r"^[\w.-]+$", description="task name, written in the metrics file")
    metric: Literal["exact_match", "vqa_accuracy", "pope", "multiple_choice", "circular", "review"] = Field(
        description="exact_match: normalised string equality; vqa_accuracy: VQAv2 soft score over a list of gold "
        "answers; pope: yes/no accuracy, precision, recall, F1, yes-ratio; multiple_choice: option-letter accuracy; "
        "circular: MMBench's circular evaluation (every option order of a question right); review: a judge model "
        "scores answer and reference 1-10 (LLaVA-Bench)"
    )
    answer_field: str = Field("answer", description="the gold answer's field in each question's record (VQA: a list)")
    annotations: str | None = Field(
        None, description="a JSON / JSONL file of {question_id, <answer_field>} when the question file carries no "
        "golds (POPE's, for one); a path or a URI"
    )
    category_field: str | None = Field("category", description="the record field scores are broken down by")
    options_field: str = Field(
        "options", description="multiple_choice / circular: the record field listing the options (its length bounds "
        "the letters read), else the letters A-J"
    )
    group_field: str = Field(
        "group", description="circular: the record field shared by the option orders of one question"
    )
    judge: JudgeSpec | None = Field(None, description="review: the judge model")
    metrics_file: str | None = Field(None, description="where the metrics JSON goes; default: <batch.output>/metrics.json")

    @model_validator(mode="after")
    def _judge_for_review(self) -> "TaskSpec":
        if (self.metric == "review") != (self.judge is not None):
            raise ValueError("task.judge: give a judge exactly when task.metric is review")
        return self


class EvalJobSpec(BatchJobSpec):
    """`jobs.evaluate`: the batch job that answers the task's questions, then the task."""

    task: TaskSpec

    def batch_job(self) -> BatchJobSpec:
        return BatchJobSpec(**{k: getattr(self, k) for k in BatchJobSpec.model_fields})
