"""Batch inference on Ray Data: a model over a question file, conversations, an image folder or Parquet.

    ray job submit --working-dir . -- python -m jobs.batch_infer --config jobs/configs/llava-1.5-7b_batch.yaml
    python -m jobs.batch_infer --config jobs/configs/tiny_batch.yaml batch.input=questions.jsonl \
        batch.image_folder=images batch.output=out/ model.checkpoint=jobs/assets/tiny-base

Trailing dotted.key=value arguments override the spec. Answers go to part files under batch.output in
LLaVA's answers format (question_id, prompt, text, answer_id, model_id, metadata, token counts, error),
one row per question: a row that cannot be answered carries its `error`. Re-running the same job after a
crash or a stop answers only the questions not yet written.
"""

from llava_platform.batch.job import run_batch
from llava_platform.batch.spec import BatchJobSpec
from llava_platform.cli import spec_job

if __name__ == "__main__":
    spec_job(__doc__, BatchJobSpec, run_batch, "batch job spec YAML (see jobs/configs/*_batch.yaml)",
             "batch.actors=4 sampling.max_new_tokens=64")
