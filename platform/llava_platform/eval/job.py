"""An evaluation job: the batch job answers the task's questions, then the task scores them.

    metrics = run_evaluation(load("jobs/configs/eval/pope.yaml", EvalJobSpec, ["model.checkpoint=runs/7b/final"]))

Re-running resumes the batch part (only unanswered questions are asked) and scores every answer again.
The metrics JSON (task.metrics_file, default <batch.output>/metrics.json) holds the task, the checkpoint,
the counts, and the scores overall ("all") and per category.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llava_platform.batch.answers import read_answers
from llava_platform.batch.job import absolute_batch_spec, run_batch
from llava_platform.eval.spec import EvalJobSpec
from llava_platform.eval.tasks import load_annotations, score
from llava_platform.storage import Storage

__all__ = ["run_evaluation", "judge_client", "headline"]


def judge_client(spec: EvalJobSpec):
    """The review's judge as an openai.OpenAI client (None for other metrics); a missing key is an error now, not
    after the batch."""
    judge = spec.task.judge
    if judge is None:
        return None
    import openai

    key = os.environ.get(judge.api_key_env) if judge.api_key_env else "none"
    if not key:
        raise ValueError(f"task.judge.api_key_env: the environment variable {judge.api_key_env} is not set; export the "
                         "judge endpoint's key there, or set task.judge.api_key_env: null for an endpoint without one")  # fmt: skip
    return openai.OpenAI(base_url=judge.base_url, api_key=key, max_retries=2)


def headline(metrics: dict[str, Any]) -> str:
    """The overall score in one line: 'pope: accuracy 0.873, f1 0.861 (9000 rows, 0 errors)'."""
    overall = metrics["scores"]["all"]
    keys = [k for k in ("accuracy", "f1", "circular_accuracy", "relative") if overall.get(k) is not None]
    values = ", ".join(f"{k} {overall[k]:.4g}" for k in keys)
    return f"{metrics['task']}: {values} ({metrics['rows']} rows, {sum(metrics['errors'].values())} errors)"


def run_evaluation(spec: EvalJobSpec, log=print) -> dict[str, Any]:
    client = judge_client(spec)
    storage = Storage(spec.storage)
    batch_job = absolute_batch_spec(spec.batch_job())
    summary = run_batch(batch_job, log)
    output = batch_job.batch.output
    task = spec.task
    annotations = load_annotations(task.annotations, storage, task.answer_field) if task.annotations else None
    metrics = score(read_answers(output, storage), task, annotations, client)
    metrics |= {"checkpoint": spec.model.checkpoint, "batch_seconds": summary.seconds}
    path = task.metrics_file or Storage.join(output, "metrics.json")
    storage.write_bytes(path, json.dumps(metrics, indent=1).encode())
    log(f"[eval] {headline(metrics)}")
    log(f"[eval] metrics -> {path}")
    return metrics
