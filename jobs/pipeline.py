"""From data to a served model in one job: stage 1, stage 2, evaluation, and Serve when the evaluation passes.

    python -m jobs.pipeline --config jobs/configs/tiny_pipeline.yaml        # joins this machine's Ray, if one runs
    ray job submit --working-dir . -- python -m jobs.pipeline --config jobs/configs/llava-1.5-7b_pipeline.yaml

A submitted job gets the code, not the gitignored data/ and runs/: its data and outputs live where every node
reaches them (object storage, a shared file system).

Each step resumes where it stopped when the job runs again (a finished stage is not trained again).
A model whose score is under evaluate.threshold is reported and not served: the job exits 1.
"""

import sys

from llava_platform.cli import spec_job
from llava_platform.pipeline import PipelineFailed, PipelineSpec, run_pipeline


def run(spec: PipelineSpec) -> None:
    try:
        run_pipeline(spec)
    except PipelineFailed as e:
        print(e, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    spec_job(__doc__, PipelineSpec, run, "pipeline spec YAML (see jobs/configs/*_pipeline.yaml)",
             "evaluate.threshold=0.9")
