"""The tiny base's recipe: the record beside the shipped weights states recipe.RECIPE, the weights still
score what it says, rebuild_base --dry-run checks every stage of it at scale 1, and the refresh stages run end
to end (--from v5 --base the shipped base, scale 0.001). The demo stages' training is the demo's own,
tested in tests/test_demo.py; a whole chain at scale 0.001 is ~4 minutes, most of it Ray starting up."""

import json

import pytest

from experiments.tests.conftest import TINY_BASE, run_module
from experiments.tiny_recipe import varied_scenes
from experiments.tiny_recipe.recipe import RECIPE, DemoStage, Part, RefreshStage, Scenes, as_json, check, scaled
from llava_platform.eval.heldout import answer_held_out
from llava_platform.model.checkpoint import load_checkpoint_spec

SHIPPED_RECORD = json.loads((TINY_BASE / "recipe.json").read_text())


def json_form(recipe) -> list[dict]:
    """as_json after a trip through JSON text (tuples -> lists), as a record file holds it."""
    return json.loads(json.dumps(as_json(recipe)))


def test_shipped_record_states_the_rebuild_recipe():
    assert SHIPPED_RECORD["recipe"] == json_form(RECIPE) and SHIPPED_RECORD["scale"] == 1
    assert SHIPPED_RECORD["command"] == "python -m experiments.tiny_recipe.rebuild_base --out jobs/assets/tiny-base"
    results = SHIPPED_RECORD["results"]
    assert results["stage"] == RECIPE[-1].name and results["steps"] == RECIPE[-1].steps
    assert results["records"] == sum(p.take or p.scenes.num_train for p in RECIPE[-1].parts) == 100_000
    # the stages the README documented: v1 -> v2 -> v3 (jobs.demo) -> v5 -> v6 -> v7 (refresh_base)
    assert [(s["name"], s["base"], s["run"]) for s in SHIPPED_RECORD["recipe"]] == [
        ("v1", None, "jobs.demo"), ("v2", "v1", "jobs.demo"), ("v3", "v2", "jobs.demo"),
        ("v5", "v3", "experiments.tiny_recipe.refresh_base"), ("v6", "v5", "experiments.tiny_recipe.refresh_base"),
        ("v7", "v6", "experiments.tiny_recipe.refresh_base")]  # fmt: skip


def test_shipped_base_answers_the_held_out_scenes_its_record_names(tmp_path):
    """The last stage scored the base on the held-out questions of varied seed 1: the first 220 drawn with that
    seed whatever num_train is (so none need be drawn here); greedy decoding gives the recorded answers again,
    to a question or two."""
    held_out, recorded = SHIPPED_RECORD["recipe"][-1]["held_out"], SHIPPED_RECORD["results"]["held_out"]
    assert (held_out["generator"], held_out["seed"], held_out["num_test"]) == ("varied", 1, 220) == (
        "varied", 1, recorded["num_test"])  # fmt: skip
    data = varied_scenes.generate(tmp_path, 0, held_out["num_test"], seed=held_out["seed"])
    answers = answer_held_out(TINY_BASE, data.test, data.image_folder)
    assert load_checkpoint_spec(TINY_BASE).template == "mistral_instruct"  # the tiny preset's, saved with it
    assert answers.accuracy == pytest.approx(recorded["accuracy"], abs=2.5 / recorded["num_test"])
    assert answers.accuracy > 0.75  # the base before the drills (v3) scored 75.0%; each kind's most common answer 43%


def test_scaling_shrinks_every_count_and_step_and_keeps_the_chain():
    assert scaled(RECIPE, 1) == RECIPE
    small = scaled(RECIPE, 0.001)
    check(small)
    assert [(s.name, s.base, type(s)) for s in small] == [(s.name, s.base, type(s)) for s in RECIPE]
    v1, v2, v3, v5, v6, v7 = small
    assert (v1.scenes.num_train, v1.scenes.num_test, v1.pretrain_steps, v1.finetune_steps) == (32, 4, 1, 1)  # the least
    assert (v3.scenes.num_train, v3.pretrain_steps, v3.finetune_steps, v3.overrides) == (60, 2, 4, ("data.cache_encoded=false",))
    assert v5.steps == 4 and v5.parts[-1] == Part(v3.scenes, take=20)  # 20 k of v3's 60 k scenes: 20 of its 60
    assert [(p.scenes.generator, p.scenes.seed) for p in v6.parts] == [(p.scenes.generator, p.scenes.seed) for p in RECIPE[4].parts]
    assert v7.held_out == v3.scenes and v7.steps == 6
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\], got 2"):
        scaled(RECIPE, 2)


def test_a_recipe_that_cannot_run_is_refused_before_it_starts():
    demo = DemoStage("a", None, Scenes("synthetic", 0, 64, 4), 1, 1)
    refresh = RefreshStage("b", "a", 1, (Part(Scenes("side", 1, 32, 4)),), held_out=Scenes("side", 1, 32, 4))
    check((demo, refresh))
    with pytest.raises(ValueError, match=r"stage b: base 'z' is not an earlier stage \(a\)"):
        check((demo, RefreshStage("b", "z", 1, refresh.parts, refresh.held_out)))
    with pytest.raises(ValueError, match="two sets named side_1"):
        check((demo, RefreshStage("b", "a", 1, (Part(Scenes("side", 1, 32, 4)), Part(Scenes("side", 1, 64, 4))), refresh.held_out)))
    with pytest.raises(ValueError, match="the last stage must be a RefreshStage with held_out scenes"):
        check((demo,))
    with pytest.raises(ValueError, match="jobs.demo draws its synthetic scenes with seed 0, not 3"):
        check((DemoStage("a", None, Scenes("synthetic", 3, 64, 4), 1, 1), refresh))
    with pytest.raises(ValueError, match="unknown generator 'sides'; generators: synthetic, varied, between, "):
        Scenes("sides", 0, 1, 1)


@pytest.mark.slow
def test_dry_run_checks_every_stage_of_the_recipe_and_prints_its_plan(tmp_path):
    """`rebuild_base --dry-run` at scale 1: each stage's jobs.demo arguments parse with jobs.demo's parser and
    its specs load with the recipe's steps, each refresh's sets are drawn by then; one plan line per stage, and
    nothing drawn, trained or written."""
    out, work = (tmp_path / "base").resolve(), (tmp_path / "work").resolve()
    result = run_module("experiments.tiny_recipe.rebuild_base", "--out", str(out), "--work", str(work), "--dry-run")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("v")]
    assert [line.split(":")[0] for line in lines] == [stage.name for stage in RECIPE]
    v1, v2, v3, v5, v6, v7 = lines
    assert f"from random init -> {work / 'v1'}; draws none; specs load: 300 + 750 steps; $ python -m jobs.demo " in v1
    assert v1.endswith("--num-test 200 pretrain:train.max_steps=300 finetune:train.max_steps=750")
    assert f"draws varied_0 16000 + 220; specs load: 1500 + 3500 steps; $ python -m jobs.demo --out {work / 'v2_run'} " in v2
    assert f"--data {work / 'data/varied_0'} --base {work / 'v1'} pretrain:train.max_steps=1500" in v2
    assert v3.endswith("finetune:train.max_steps=3500 data.cache_encoded=false")
    assert f"from {work / 'v3'} -> {work / 'v5'}; draws between_color_5 10000 + 300, " in v5
    assert f"4000 steps on 80000 records; $ python -m experiments.tiny_recipe.refresh_base --base {work / 'v3'} " in v5
    assert f"{work / 'data/varied_1'}:20000 --log-every 400" in v5  # v3's set, drawn once
    assert "; 8000 steps on 175000 records; " in v6 and "between_color_5" not in v6.split("; ")[1]  # v5 drew it
    assert f"-> {out}; " in v7 and "6000 steps on 100000 records; " in v7 and f"--held-out {work / 'data/varied_1'} " in v7
    assert "dry run: all 6 stages valid (v1, v2, v3, v5, v6, v7)" in result.stdout
    assert not out.exists() and not work.exists()


@pytest.mark.slow
def test_the_refresh_stages_run_from_a_given_base_and_the_record_says_so(tmp_path):
    """`rebuild_base --from v5 --base jobs/assets/tiny-base --scale 0.001`: v5, v6, v7 end to end in this process
    (each from the one before, v5 from the shipped base), and a record that lists only those stages and names
    the base: a partial run never reads as a rebuild."""
    out, work = (tmp_path / "base").resolve(), (tmp_path / "work").resolve()
    result = run_module("experiments.tiny_recipe.rebuild_base", "--out", str(out), "--work", str(work), "--scale", "0.001",
                        "--from", "v5", "--base", "jobs/assets/tiny-base")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    for name, base, target in [("v5", TINY_BASE, work / "v5"), ("v6", work / "v5", work / "v6"), ("v7", work / "v6", out)]:
        assert f"==== {name}: RefreshStage from {base} -> {target}" in result.stdout
    assert "==== v3" not in result.stdout and "drew varied_1: 60 + 4 held-out (varied, seed 1)" in result.stdout
    record = json.loads((out / "recipe.json").read_text())
    assert record["scale"] == 0.001
    assert record["partial"] == {"from": "v5", "base": str(TINY_BASE), "skipped": ["v1", "v2", "v3"]}
    ran = json_form(scaled(RECIPE, 0.001)[3:])
    ran[0]["base"] = str(TINY_BASE)
    assert record["recipe"] == ran and "not a rebuild" in record["note"]
    results = record["results"]
    assert results["stage"] == "v7" and results["steps"] == 6 and results["records"] == 6 * 32
    assert results["train_seconds"] > 0 and results["last_loss"] > 0
    assert load_checkpoint_spec(out).checkpoint == str(out)  # the base names itself, not the stage it came from
    held_out = varied_scenes.generate(tmp_path / "held_out", 0, 4, seed=1)  # v7's held-out: varied seed 1's first 4
    rescored = answer_held_out(out, held_out.test, held_out.image_folder).accuracy
    assert rescored == pytest.approx(results["held_out"]["accuracy"], abs=1 / 4)  # greedy: the same answers, to one


def test_a_partial_or_scaled_run_never_writes_the_shipped_base(monkeypatch, capsys):
    """Refused before any stage runs (in this process: the refusal is argument checking)."""
    from experiments.tiny_recipe import rebuild_base

    for extra, refusal in [(["--from", "v5", "--base", str(TINY_BASE)], "--from v5 would overwrite the shipped base"),
                           (["--scale", "0.5"], "--scale 0.5 would overwrite the shipped base"),
                           (["--from", "v5"], "--from STAGE and --base CHECKPOINT go together")]:  # fmt: skip
        monkeypatch.setattr("sys.argv", ["rebuild_base", "--out", str(TINY_BASE), "--dry-run", *extra])
        with pytest.raises(SystemExit) as exited:
            rebuild_base.main()
        assert exited.value.code == 2 and refusal in capsys.readouterr().err
