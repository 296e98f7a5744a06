"""Evaluate a checkpoint on a task: the batch job answers the task's questions, then they are scored.

    python -m jobs.evaluate --config jobs/configs/eval/pope.yaml model.checkpoint=runs/7b/final
    ray job submit --working-dir . -- python -m jobs.evaluate --config jobs/configs/eval/scienceqa.yaml

A task spec (jobs/configs/eval/*.yaml) names the question file, the prompt suffix (only where the
question file does not carry it), the gold answers and the metric (exact_match, vqa_accuracy, pope,
multiple_choice, circular, review). The metrics JSON, overall and per category, is written under
batch.output (task.metrics_file to move it). Re-running resumes the answering and scores again.
"""

from llava_platform.cli import spec_job
from llava_platform.eval.job import run_evaluation
from llava_platform.eval.spec import EvalJobSpec

if __name__ == "__main__":
    spec_job(__doc__, EvalJobSpec, run_evaluation, "evaluation spec YAML (see jobs/configs/eval)",
             "model.checkpoint=runs/7b/final")
