"""Stage 2, visual instruction tuning, on Ray Train: from a stage-1 output (model.checkpoint), the
projector and the LLM trained on conversations with the model's template (or LoRA / QLoRA on
the LLM with the projector trained fully, when the spec has model.lora).

    ray job submit --working-dir . -- python -m jobs.finetune --config jobs/configs/llava-1.5-7b_finetune.yaml
    python -m jobs.finetune --config jobs/configs/tiny_finetune.yaml      # no cluster: starts a local Ray

Trailing dotted.key=value arguments override the spec. Re-running with the same run.name and
run.storage_path resumes from the latest checkpoint. <train.output_dir>/final is a complete HF
checkpoint (LoRA merged unless train.merge_lora: false) for jobs.chat and plain transformers.
"""

from llava_platform.train.launch import main

if __name__ == "__main__":
    main("finetune", __doc__)
