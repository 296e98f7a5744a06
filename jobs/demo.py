"""The embedded demo: synthetic scenes -> stage 1 and stage 2 training of the tiny preset on a local Ray
-> exact-match accuracy and a few answers on held-out questions.

    python -m jobs.demo --out demo_output

No cluster, no downloads: the two stages are the shipped specs jobs/configs/tiny_pretrain.yaml and
tiny_finetune.yaml, trained as jobs.pipeline trains them (stage 2 from stage 1's final model), with their
paths pointed under --out. Each run trains afresh (the demo clears its runs under --out).

    python -m jobs.demo --data my_scenes --out demo_mine

trains the same way on another dataset: a folder with finetune.json (QA), test.json (one question
per record; the gold answer is its "answer" field, else its reply) and, optionally, pretrain.json
(captions), in LLaVA JSON with image paths relative to the folder. Without captions, stage 1 trains
on finetune.json too, in the model's chat template instead of `plain` (which keeps only the image and
the reply of one turn). The specs' length is a number of steps (train.max_steps), so a smaller set is
repeated more often in the same time. Overrides after the options apply to both stages, or, prefixed
`pretrain:` / `finetune:`, to one.

    python -m jobs.demo --data my_scenes --base jobs/assets/tiny-base --out demo_mine

starts stage 1 from the shipped tiny base instead of random init: a demo run's model trained further on
varied scenes and drills (its recipe: jobs/assets/tiny-base/recipe.json, made in experiments/tiny_recipe),
so it sees shapes, colours, sizes and places. That is how a new small dataset is learnt in the same
6 minutes, as LLaVA starts from CLIP and Vicuna rather than from nothing.
"""

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.data.synthetic import SyntheticPaths, generate
from llava_platform.eval.heldout import answer_held_out
from llava_platform.model import load_checkpoint, save_checkpoint
from llava_platform.pipeline import StageStep, train_stages

CONFIGS = Path(__file__).parent / "configs"
RESULTS_FILE = "demo_results.json"
STAGES = ("pretrain", "finetune")


def step(title: str, started: float) -> None:
    print(f"\n== {title} (t={time.perf_counter() - started:.0f}s)", flush=True)


def overrides_for(stage: str, overrides: list[str]) -> list[str]:
    """The unprefixed overrides, and those prefixed "<stage>:" with the prefix cut ("pretrain:train.max_steps=1500"
    reaches stage 1 only); the other stage's are left out."""
    kept = []
    for override in overrides:
        prefix, colon, rest = override.partition(":")
        if not colon or prefix not in STAGES:
            kept.append(override)
        elif prefix == stage:
            kept.append(rest)
    return kept


def stage_step(stage: str, out: Path, data: SyntheticPaths, start: Path | None, extra: list[str]) -> StageStep:
    """The shipped tiny spec of a stage, its paths under the demo folder, stage 1's model the checkpoint
    `start` (None: the spec's own, the random-init preset; stage 2 starts from stage 1's final model)."""
    source = data.pretrain if stage == "pretrain" else data.finetune
    overrides = []
    if not source.exists() and stage == "pretrain":  # no captions: stage 1 learns from the QA, in the chat template
        source, overrides = data.finetune, ["data.template=null"]
    overrides += [f"data.path={source}", f"data.image_folder={data.image_folder}", f"train.output_dir={out / stage}",
                 f"run.storage_path={out / 'ray'}", f"run.name=demo-{stage}"]  # fmt: skip
    if start is not None and stage == "pretrain":
        overrides += ["model.preset=null", f"model.checkpoint={start}"]
    return StageStep(config=str(CONFIGS / f"tiny_{stage}.yaml"), overrides=overrides + overrides_for(stage, extra))


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line: main parses it, and a caller can check a demo command against it unrun."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="folder for the data, checkpoints and results")
    parser.add_argument("--num-train", type=int, default=6800, help="training scenes (at most 6800 with 200 held out)")
    parser.add_argument("--num-test", type=int, default=200, help="held-out scenes, one question each")
    parser.add_argument("--data", type=Path, help="train and test on this dataset folder instead of generated scenes")
    parser.add_argument("--base", type=Path, help="start stage 1 from this checkpoint instead of random init, e.g. "
                        "jobs/assets/tiny-base, the shipped base that has seen varied scenes")  # fmt: skip
    parser.add_argument("--export", type=Path, help="also save the final model, with demo_results.json, here")
    parser.add_argument("--show", type=int, default=6, help="question/answer pairs to print")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value applied to both stages, e.g. train.max_steps=100; "
                        "prefixed pretrain: or finetune:, to that stage only")  # fmt: skip
    return parser


@user_errors_exit
def main() -> None:
    args = build_parser().parse_args()
    quiet_transformers()
    started = time.perf_counter()
    out = Path(args.out).resolve()
    for run in ("ray", *STAGES):  # fresh runs: a stage with a final model would be skipped, a run name resumed
        shutil.rmtree(out / run, ignore_errors=True)

    if args.data is None:
        step("1. synthetic scenes", started)
        data = generate(out / "data", args.num_train, args.num_test, seed=0)
        print(f"{args.num_train} train scenes (captions + QA), {args.num_test} held-out questions in {data.root}")
    else:
        root = args.data.resolve()
        data = SyntheticPaths.in_folder(root)
        step(f"1. dataset {root}", started)
    first = stage_step("pretrain", out, data, args.base, args.overrides)  # on the captions or, without them, the QA
    on = "captions" if first.spec().data.path == str(data.pretrain) else f"{data.finetune.name} (no {data.pretrain.name}), in the chat template"
    start = "random init" if args.base is None else f"from {args.base}"
    step(f"2. stage 1: projector alignment on {on}, {start} (tiny_pretrain.yaml); then stage 2: visual instruction "
         "tuning (tiny_finetune.yaml), as jobs.pipeline trains them", started)  # fmt: skip
    trained = train_stages(first, stage_step("finetune", out, data, None, args.overrides))

    step("3. answers on held-out questions (engine, batched greedy decoding)", started)
    answers = answer_held_out(trained.final, data.test, data.image_folder)
    for question, gold, prediction in list(zip(answers.questions, answers.golds, answers.predictions))[: args.show]:
        print(f"Q: {question}\n   gold: {gold!r}  model: {prediction!r}")
    score, by_kind = answers.accuracy, answers.by_kind()
    seconds = trained.seconds
    train_seconds = sum(seconds.values())
    print(f"\nexact-match accuracy on {len(answers.golds)} held-out questions: {score:.1%}")
    if by_kind:  # the test records name their question kinds
        print("by kind: " + ", ".join(f"{kind} {value:.0%}" for kind, value in by_kind.items()))
    print(f"training time (both stages, Ray Train fit): {train_seconds:.0f}s "
          f"(stage 1 {seconds['pretrain']:.0f}s, stage 2 {seconds['finetune']:.0f}s); final model: {trained.final}")  # fmt: skip
    results = {"accuracy": score, "num_test": len(answers.golds), "by_kind": by_kind, "train_seconds": train_seconds,
               "stage_seconds": seconds, "final": trained.final}  # fmt: skip
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1))
    if args.export is not None:  # re-saved, so that its llava_platform.yaml names the copy, not this run
        bundle = load_checkpoint(trained.final)
        save_checkpoint(replace(bundle, spec=bundle.spec.model_copy(update={"checkpoint": str(args.export)})), args.export)
        shutil.copy(out / RESULTS_FILE, args.export / RESULTS_FILE)
        print(f"final model exported to {args.export}")
    print(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
