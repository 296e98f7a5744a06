"""Stage 1, projector alignment, on Ray Train: the vision tower and the LLM frozen, the projector
trained on image-caption pairs with the `plain` template (the shipped specs set data.template: plain).

    ray job submit --working-dir . -- python -m jobs.pretrain --config jobs/configs/llava-1.5-7b_pretrain.yaml
    python -m jobs.pretrain --config jobs/configs/tiny_pretrain.yaml      # no cluster: starts a local Ray

Trailing dotted.key=value arguments override the spec (e.g. scaling.num_workers=8). Re-running
with the same run.name and run.storage_path resumes from the latest checkpoint. The model ends
up in <train.output_dir>/final, which a stage-2 spec names as model.checkpoint.
"""

from llava_platform.train.launch import main

if __name__ == "__main__":
    main("pretrain", __doc__)
