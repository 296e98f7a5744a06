"""Rebuild the tiny base from scratch: every stage of recipe.RECIPE, in one command.

    python -m experiments.tiny_recipe.rebuild_base --out runs/tiny-base                # ~2 h of training on 2 CPU cores
    python -m experiments.tiny_recipe.rebuild_base --out /tmp/tiny-base --scale 0.001  # every count and step / 1000
    python -m experiments.tiny_recipe.rebuild_base --out runs/tiny-base --dry-run      # check every stage, train nothing
    python -m experiments.tiny_recipe.rebuild_base --out /tmp/tb --from v5 --base jobs/assets/tiny-base --scale 0.001

Stages run in order, each from the checkpoint the one before wrote under --work:

    demo stages (v1-v3)     `python -m jobs.demo ... --export WORK/<stage>` as a user runs it: Ray, the shipped
                            tiny specs, the recipe's step counts as `pretrain:` / `finetune:` overrides
    refresh stages (v5-v7)  refresh_base.refresh in this process (train.loop.train, one worker)

Before a stage, the sets it reads are drawn into WORK/data/<name> ("varied_1", "between_21"; each set
once). The last stage writes to --out, and beside its weights recipe.json:

    {"command": ..., "scale": 1.0,
     "recipe": [{"name": "v1", "run": "jobs.demo", "base": null, "data": [{"generator", "seed", "num_train",
                 "num_test"}], "steps": {"pretrain", "finetune"}, "overrides": [...]},
                ...,
                {"name": "v7", "run": "experiments.tiny_recipe.refresh_base", "base": "v6",
                 "data": [{..., "take"}], "steps": 6000, "held_out": {...}}],
     "results": {"stage", "steps", "records", "train_seconds", "last_loss",
                 "held_out": {"num_test", "accuracy", "by_kind"}},
     "note": ...}

"recipe" is recipe.as_json of the recipe as run (scaled), "results" the last stage's measurements. The
shipped base's jobs/assets/tiny-base/recipe.json has the same form (experiments/tests checks that its
recipe is RECIPE's).

--dry-run draws, trains and writes nothing: it prints the plan, one line per stage (the sets it would
draw, the command it would run), and checks each stage: a demo stage's argument list parses with
jobs.demo's own parser and both of its stage specs load with the recipe's steps; a refresh stage's sets
are drawn by it or an earlier stage, its steps load into the stage 2 recipe, and its base is the
checkpoint an earlier stage writes (or --base). Exit 0: every stage would start.

--from STAGE --base CHECKPOINT runs only STAGE and the stages after it, STAGE from CHECKPOINT instead of
the stage the recipe names (e.g. the refresh stages from the shipped base, or a chain resumed from
WORK/v5 after v6 failed). Its record lists only the stages that ran, the first with CHECKPOINT as its
base, and says so: "partial": {"from": STAGE, "base": CHECKPOINT, "skipped": [the stages before]}; so
it never reads as a rebuild. A partial or scaled run refuses to write into jobs/assets/tiny-base.
"""

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.tiny_recipe.recipe import RECIPE, DemoStage, RefreshStage, Scenes, Stage, as_json, check, datasets, scaled
from experiments.tiny_recipe.refresh_base import STAGE2_SPEC, refresh
from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import TrainJobSpec, load

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "jobs/assets/tiny-base"
RECORD = "recipe.json"


@dataclass(frozen=True)
class Run:
    """A stage as this command runs it: the checkpoint it starts from (None: random init) and the folder it writes."""

    stage: Stage
    base: Path | None
    out: Path


def plan(recipe: tuple[Stage, ...], out: Path, work: Path, start: str | None = None, base: Path | None = None) -> list[Run]:
    """The stages to run, in order: every stage of `recipe`, or with `start` that stage and those after it,
    `start` from the checkpoint `base` instead of the stage the recipe names. Each stage writes work/<name>,
    the last one `out`. The whole recipe is checked first (recipe.check)."""
    check(recipe)
    names = [stage.name for stage in recipe]
    if (start is None) != (base is None):
        raise ValueError("--from STAGE and --base CHECKPOINT go together: the first stage to run and what it starts from")
    first = 0
    if start is not None:
        assert base is not None
        if start not in names:
            raise ValueError(f"--from {start}: not a stage of the recipe ({', '.join(names)})")
        if not (base / "config.json").is_file():
            raise ValueError(f"--base {base}: not a checkpoint folder (no config.json there)")
        first = names.index(start)
    runs = []
    for index in range(first, len(recipe)):
        stage = recipe[index]
        start_from = base if start is not None and index == first else (work / stage.base if stage.base else None)
        runs.append(Run(stage, start_from, out if index == len(recipe) - 1 else work / stage.name))
    return runs


def draw_sets(stage: Stage, data: Path, drawn: dict[str, Path]) -> None:
    """Draws the sets `stage` reads that no earlier stage drew into data/<name>; `drawn` maps name -> folder."""
    for scenes in datasets(stage):
        if scenes.name not in drawn:
            started = time.perf_counter()
            drawn[scenes.name] = scenes.write(data / scenes.name)
            print(f"drew {scenes.name}: {scenes.num_train} + {scenes.num_test} held-out ({scenes.generator}, seed "
                  f"{scenes.seed}) in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


def demo_arguments(run: Run, work: Path, drawn: dict[str, Path]) -> list[str]:
    """The arguments of `python -m jobs.demo` for a demo stage: exported to run.out, its sets' folders from `drawn`."""
    stage = run.stage
    assert isinstance(stage, DemoStage)
    arguments = ["--out", str(work / f"{stage.name}_run"), "--export", str(run.out)]
    if stage.scenes.generator == "synthetic":  # the demo draws its own scenes (seed 0)
        arguments += ["--num-train", str(stage.scenes.num_train), "--num-test", str(stage.scenes.num_test)]
    else:
        arguments += ["--data", str(drawn[stage.scenes.name])]
    if run.base is not None:
        arguments += ["--base", str(run.base)]
    return arguments + [f"pretrain:train.max_steps={stage.pretrain_steps}", f"finetune:train.max_steps={stage.finetune_steps}",
                        *stage.overrides]  # fmt: skip


def run_demo(run: Run, work: Path, drawn: dict[str, Path]) -> float:
    """`python -m jobs.demo` for this stage, exported to run.out; its training seconds (both stages' fits)."""
    command = [sys.executable, "-m", "jobs.demo", *demo_arguments(run, work, drawn)]
    print("$ python " + " ".join(command[1:]), flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        sys.exit(f"error: stage {run.stage.name}: jobs.demo failed (its output is above); the stages before it are in {work}")
    return json.loads((run.out / "demo_results.json").read_text())["train_seconds"]


def refresh_parts(stage: RefreshStage, drawn: dict[str, Path]) -> list[str]:
    """A refresh stage's parts as refresh_base takes them: FOLDER[:COUNT]."""
    return [f"{drawn[p.scenes.name]}:{p.take}" if p.take is not None else str(drawn[p.scenes.name]) for p in stage.parts]


def run_refresh(run: Run, drawn: dict[str, Path]) -> dict:
    """refresh_base.refresh for this stage; the summary it returns."""
    stage = run.stage
    assert isinstance(stage, RefreshStage) and run.base is not None  # check(): a refresh starts from an earlier stage
    held_out = drawn[stage.held_out.name] if stage.held_out else None
    return refresh(run.base, run.out, stage.steps, refresh_parts(stage, drawn), held_out=held_out,
                   log_every=max(1, stage.steps // 10))  # fmt: skip


def rebuild(runs: list[Run], work: Path) -> dict:
    """Runs the planned stages (the last one into its --out); the last stage's summary."""
    drawn: dict[str, Path] = {}
    summary: dict = {}
    seconds: dict[str, float] = {}
    for run in runs:
        stage = run.stage
        print(f"\n==== {stage.name}: {type(stage).__name__} from {run.base or 'random init'} -> {run.out}", flush=True)
        draw_sets(stage, work / "data", drawn)
        if isinstance(stage, DemoStage):
            seconds[stage.name] = run_demo(run, work, drawn)
        else:
            summary = run_refresh(run, drawn)
            seconds[stage.name] = summary["train_seconds"]
    print("\ntraining seconds by stage: " + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()), flush=True)
    return summary


def check_demo(run: Run, arguments: list[str]) -> str:
    """A demo stage's arguments parse with jobs.demo's parser and both stage specs load (jobs.demo.stage_step)
    with the recipe's steps and base; what the specs train, as a phrase. The sets are not drawn, so stage 1's
    spec is loaded as for a set without captions (the QA in the chat template): the same shipped spec and
    overrides, bar data.path and data.template."""
    from jobs.demo import build_parser, stage_step
    from llava_platform.data.synthetic import SyntheticPaths

    stage = run.stage
    assert isinstance(stage, DemoStage)
    try:
        parsed = build_parser().parse_args(arguments)
    except SystemExit:  # argparse printed why
        raise ValueError(f"stage {stage.name}: jobs.demo does not accept {' '.join(arguments)}") from None
    demo_out = Path(parsed.out).resolve()
    data = SyntheticPaths.in_folder(parsed.data.resolve() if parsed.data else demo_out / "data")  # where the demo reads
    try:
        first = stage_step("pretrain", demo_out, data, parsed.base, parsed.overrides).spec()
        second = stage_step("finetune", demo_out, data, None, parsed.overrides).spec()
    except ValueError as e:  # ConfigError: an override or the spec itself
        raise ValueError(f"stage {stage.name}: jobs.demo's spec does not load: {e}") from e
    steps = (first.train.max_steps, second.train.max_steps)
    if steps != (stage.pretrain_steps, stage.finetune_steps):
        raise ValueError(f"stage {stage.name}: jobs.demo would train {steps[0]} + {steps[1]} steps, the recipe says "
                         f"{stage.pretrain_steps} + {stage.finetune_steps}")  # fmt: skip
    if first.model.checkpoint != (None if run.base is None else str(run.base)) or parsed.export != run.out:
        raise ValueError(f"stage {stage.name}: jobs.demo would start from {first.model.checkpoint or 'random init'} "
                         f"and export to {parsed.export}, not {run.base or 'random init'} and {run.out}")  # fmt: skip
    return f"specs load: {steps[0]} + {steps[1]} steps"


def check_refresh(run: Run, drawn: dict[str, Path]) -> str:
    """A refresh stage's sets are drawn (by it or an earlier stage: `drawn`), each part's take is within its set,
    its steps load into the stage 2 recipe as refresh does; what it trains on, as a phrase."""
    stage = run.stage
    assert isinstance(stage, RefreshStage)
    for part in stage.parts:
        if part.scenes.name not in drawn:
            raise ValueError(f"stage {stage.name}: set {part.scenes.name} is drawn by no stage up to it")
        if part.take is not None and not 0 < part.take <= part.scenes.num_train:
            raise ValueError(f"stage {stage.name}: takes {part.take} of {part.scenes.name}'s {part.scenes.num_train}")
    if stage.held_out is not None and stage.held_out.num_test < 1:
        raise ValueError(f"stage {stage.name}: its held-out set {stage.held_out.name} has no test questions")
    try:  # what refresh loads before it trains
        load(STAGE2_SPEC, TrainJobSpec, [f"train.max_steps={stage.steps}", f"train.output_dir={run.out}"])
    except ValueError as e:
        raise ValueError(f"stage {stage.name}: the stage 2 recipe does not load with its steps: {e}") from e
    records = sum(p.scenes.num_train if p.take is None else p.take for p in stage.parts)
    return f"{stage.steps} steps on {records} records"


def dry_run(runs: list[Run], work: Path, base: Path | None) -> None:
    """Prints the plan, one line per stage, after checking each stage as far as it can be checked without
    drawing, training or writing anything (check_demo, check_refresh, and that its base is random init only
    where the recipe says so, the checkpoint --base gave, or one an earlier stage writes)."""
    drawn: dict[str, Path] = {}
    written: list[Path] = []
    print(f"plan ({len(runs)} stages; a dry run: nothing is drawn, trained or written):")
    for run in runs:
        stage = run.stage
        if not (run.base in written or (run.base is None and stage.base is None) or (run is runs[0] and run.base == base)):
            raise ValueError(f"stage {stage.name}: starts from {run.base}, which no earlier stage writes")
        new: list[Scenes] = [s for s in datasets(stage) if s.name not in drawn]
        drawn.update({s.name: work / "data" / s.name for s in new})  # where draw_sets draws them
        if isinstance(stage, DemoStage):
            arguments = demo_arguments(run, work, drawn)
            checked = check_demo(run, arguments)
            command = "python -m jobs.demo " + " ".join(arguments)
        else:
            checked = check_refresh(run, drawn)
            held_out = drawn[stage.held_out.name] if stage.held_out else None
            command = (f"python -m experiments.tiny_recipe.refresh_base --base {run.base} --out {run.out} --steps {stage.steps} "
                       f"--data {' '.join(refresh_parts(stage, drawn))}" + (f" --held-out {held_out}" if held_out else "")
                       + f" --log-every {max(1, stage.steps // 10)}  (in this process)")  # fmt: skip
        draws = ", ".join(f"{s.name} {s.num_train} + {s.num_test}" for s in new) or "none"
        print(f"{stage.name}: from {run.base or 'random init'} -> {run.out}; draws {draws}; {checked}; $ {command}",
              flush=True)  # fmt: skip
        written.append(run.out)
    print(f"dry run: all {len(runs)} stages valid ({', '.join(run.stage.name for run in runs)})")


def record(runs: list[Run], scale: float, summary: dict, command: str, note: str, partial: dict | None = None) -> dict:
    """recipe.json: the recipe as run and the last stage's results (summary: what refresh returned). `partial`
    ({"from", "base", "skipped"}): only these stages ran, the first from partial["base"], which its entry names."""
    recipe = as_json(tuple(run.stage for run in runs))
    if partial is not None:
        recipe[0]["base"] = partial["base"]
    results = {key: summary[key] for key in ("steps", "records", "train_seconds", "last_loss")}
    results["held_out"] = {key: summary["held_out"][key] for key in ("num_test", "accuracy", "by_kind")}
    return {"command": command, "scale": scale, **({"partial": partial} if partial is not None else {}), "recipe": recipe,
            "results": {"stage": runs[-1].stage.name, **results}, "note": note}  # fmt: skip


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="the base's folder: weights, tokenizer, recipe.json")
    parser.add_argument("--work", type=Path, default=Path("runs/tiny-base-build"),
                        help="the sets and the earlier stages' checkpoints (default: runs/tiny-base-build)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count and step by this (0 < s <= 1; "
                        "1: the recipe as recorded; 0.001: a smoke run of the whole chain)")  # fmt: skip
    parser.add_argument("--from", dest="start", metavar="STAGE", help="run only this stage and those after it "
                        "(with --base); the record says which ran and from what")  # fmt: skip
    parser.add_argument("--base", type=Path, metavar="CHECKPOINT", help="with --from: the checkpoint the --from stage "
                        "starts from instead of the stage before it, e.g. jobs/assets/tiny-base")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="check every stage and print the plan; draw, train "
                        "and write nothing")  # fmt: skip
    args = parser.parse_args()
    if (args.start is None) != (args.base is None):
        parser.error("--from STAGE and --base CHECKPOINT go together")
    out, work = args.out.resolve(), args.work.resolve()
    if out == SHIPPED and args.scale != 1:
        parser.error(f"--scale {args.scale} would overwrite the shipped base with a smaller one: give another --out")
    if out == SHIPPED and args.start is not None:
        parser.error(f"--from {args.start} would overwrite the shipped base with a partial rebuild: give another --out")
    recipe = scaled(RECIPE, args.scale)
    base = args.base.resolve() if args.base is not None else None
    runs = plan(recipe, out, work, args.start, base)
    if args.dry_run:
        dry_run(runs, work, base)
        return
    quiet_transformers()
    summary = rebuild(runs, work)
    command = " ".join(["python -m experiments.tiny_recipe.rebuild_base", *sys.argv[1:]])
    partial = None
    note = f"written by rebuild_base at scale {args.scale}: every figure in results measured by that run"
    if args.start is not None:
        skipped = [stage.name for stage in recipe[: len(recipe) - len(runs)]]
        partial = {"from": args.start, "base": str(base), "skipped": skipped}
        note = (f"written by rebuild_base at scale {args.scale}, stages {runs[0].stage.name}-{runs[-1].stage.name} only "
                f"({args.start} from {base}, not from {recipe[len(skipped)].base or 'random init'}): not a rebuild of the "
                "base; every figure in results measured by that run")  # fmt: skip
    (out / RECORD).write_text(json.dumps(record(runs, args.scale, summary, command, note, partial), indent=1) + "\n")
    print(f"record -> {out / RECORD}")


if __name__ == "__main__":
    main()
