"""Training checkpoints: everything a restarted worker group needs, and a model usable as it is.

    step_000040/
      model/               HF checkpoint (full training) or adapter checkpoint (LoRA: adapters + projector),
                           with the processor and llava_platform.yaml: jobs.chat loads it directly
      optimizer.pt         DDP: optimizer + LR schedule (rank 0; identical on every rank)
      deepspeed/state/     DeepSpeed: each rank's ZeRO partitions, the module and the LR schedule
      trainer_state.json   step (= the data position: the plan fixes which samples each step holds),
                           total steps, world size, the plan, the last metrics
      job_spec.yaml        the resolved job spec

Every rank writes into its own local directory; Ray Train merges them into one checkpoint,
so files written by more than one rank must not share a name.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llava_platform.config import TrainJobSpec, dump
from llava_platform.model.bundle import ModelBundle
from llava_platform.model.checkpoint import save_checkpoint
from llava_platform.train.plan import DataPlan
from llava_platform.train.strategy import DeepSpeedRunner, StepRunner

__all__ = ["MODEL_DIR", "STATE_FILE", "save_training_state", "read_trainer_state"]

MODEL_DIR = "model"
STATE_FILE = "trainer_state.json"


def save_training_state(directory: Path, bundle: ModelBundle, runner: StepRunner, spec: TrainJobSpec, plan: DataPlan,
                        step: int, metrics: dict[str, Any], rank: int) -> None:  # fmt: skip
    """Write this rank's part of the checkpoint at `step` into `directory` (all ranks call it: ZeRO collectives)."""
    runner.save_state(directory, rank)
    state_dict = runner.full_state_dict() if isinstance(runner, DeepSpeedRunner) else None
    if rank != 0:
        return
    save_checkpoint(bundle, directory / MODEL_DIR, state_dict=state_dict)
    (directory / STATE_FILE).write_text(json.dumps({
        "step": step, "total_steps": plan.total_steps, "workers": plan.workers, "plan": asdict(plan),
        "optimizer": spec.train.optimizer, "metrics": metrics,
    }, indent=1))  # fmt: skip
    (directory / "job_spec.yaml").write_text(dump(spec))


def read_trainer_state(directory: Path, plan: DataPlan, optimizer: str) -> dict[str, Any]:
    """The saved state, after checking that it belongs to the same plan (same data, batch, workers, seed)
    and the same train.optimizer (whose state it holds)."""
    state = json.loads((directory / STATE_FILE).read_text())
    saved_optimizer = state.get("optimizer", "adamw")  # checkpoints from before train.optimizer: AdamW
    if saved_optimizer != optimizer:
        raise ValueError(
            f"{directory}: the run was checkpointed with train.optimizer={saved_optimizer}, and this spec says "
            f"{optimizer}; its optimizer state does not carry over. Resume with train.optimizer={saved_optimizer}, "
            "or start a new run.name from the checkpoint's model (model.checkpoint)"
        )
    saved = DataPlan(**state["plan"])
    if saved != plan:
        changed = [f"{k}: {v} -> {getattr(plan, k)}" for k, v in asdict(saved).items() if getattr(plan, k) != v]
        raise ValueError(
            f"{directory}: the run was checkpointed with another data plan ({'; '.join(changed)}); resuming would "
            "retrain or skip samples. Use a new run.name, or restore the original dataset and scaling settings"
        )
    return state
