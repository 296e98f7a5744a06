"""Drills (experiments.tiny_recipe.drills): one question family each on varied scenes, answers that follow
from the stored scene, exact counts, deterministic; `make_scenes --drill` writes them."""

import json
import random
import re
from collections import Counter

import pytest

from experiments.tests.conftest import encode_all, run_module
from experiments.tiny_recipe import varied_scenes
from experiments.tiny_recipe.drills import DRILLS, NAMINGS, generate_drill, side_question

PLURALS = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star", "hexagons": "hexagon",
           "diamonds": "diamond", "crosses": "cross", "rings": "ring", "rectangles": "rectangle", "bars": "bar"}  # fmt: skip


def the_one(name: str, scene: dict) -> dict:
    """The one object "star", "red star" (shortest unique names) or "red object" / "red star" (its colour is unique) names."""
    *color, word = name.split()
    if word == "object" or (color and sum(o["color"] == color[0] for o in scene["objects"]) == 1):
        (obj,) = [o for o in scene["objects"] if o["color"] == color[0] and word in ("object", o["shape"])]
    else:
        (obj,) = [o for o in scene["objects"] if o["shape"] == word and color in ([], [o["color"]])]
    return obj


def centre(obj: dict) -> tuple[float, float]:
    x0, y0, w, h = obj["box"]
    return x0 + w / 2, y0 + h / 2


def oracle(question: str, scene: dict) -> str:
    """The answer worked out from the scene's boxes, independently of the generator."""
    if m := re.fullmatch(r"Is the (.+) (to the left or to the right of|above or below) the (.+)\?", question):
        a, b = centre(the_one(m[1], scene)), centre(the_one(m[3], scene))
        axis = 0 if m[2].startswith("to the left") else 1
        assert abs(a[axis] - b[axis]) >= 10, question  # never borderline
        return (("left", "right") if axis == 0 else ("above", "below"))[a[axis] > b[axis]]
    if m := re.fullmatch(r"Is the (.+) (to the left of|to the right of|above|below) the (.+)\?", question):
        a, b = centre(the_one(m[1], scene)), centre(the_one(m[3], scene))
        axis = 0 if m[2].startswith("to the") else 1
        truth = a[axis] < b[axis] if m[2] in ("to the left of", "above") else a[axis] > b[axis]
        return "yes" if truth else "no"
    if m := re.fullmatch(r"Which is (further left|higher), the (.+) or the (.+)\?", question):
        axis = 0 if m[1] == "further left" else 1
        a, b = centre(the_one(m[2], scene)), centre(the_one(m[3], scene))
        return m[2] if a[axis] < b[axis] else m[3]
    if m := re.fullmatch(r"Is the (.+) (on the left or on the right side|at the top or at the bottom)\?", question):
        axis = 0 if "left" in m[2] else 1
        where = centre(the_one(m[1], scene))[axis] / scene["size"][axis]
        assert not 1 / 3 <= where <= 2 / 3, question  # an outer third
        return (("left", "right") if axis == 0 else ("top", "bottom"))[where > 2 / 3]
    objects = [(o["color"], o["shape"]) for o in scene["objects"]]
    if re.fullmatch(r"How many (objects are there|shapes are in the image|objects can you see)\?", question):
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) (?:are there|are in the image)\?|Count the (\w+)\.", question):
        if (word := m[1] or m[2]) in PLURALS:
            return str(sum(shape == PLURALS[word] for _, shape in objects))
    if m := re.fullmatch(r"How many (\w+) (?:objects|shapes) are there\?|How many things are (\w+)\?", question):
        return str(sum(color == (m[1] or m[2]) for color, _ in objects))
    raise AssertionError(f"not a drill question: {question!r}")


@pytest.mark.parametrize("drill", list(DRILLS))
def test_every_answer_follows_from_the_scene(tmp_path, drill):
    root = generate_drill(tmp_path, drill, num_train=20, num_test=150, seed=3)
    test = json.loads((root / "test.json").read_text())
    assert len(test) == 150 and len(json.loads((root / "finetune.json").read_text())) == 20
    answers = Counter()
    for record in test:
        (question, answer) = (turn["value"] for turn in record["conversations"])
        assert question.startswith("<image>\n") and record["answer"] == answer
        assert answer == oracle(question.removeprefix("<image>\n"), record["scene"]), record["id"]
        objects = len(record["scene"]["objects"])
        assert record["kind"] == f"{drill} {objects} object" + ("s" if objects > 1 else "")
        answers[answer] += 1
    if drill.startswith("between") or drill == "side":  # two answers per axis, neither far more common than its pair
        assert all(n < 0.4 * len(test) for n in answers.values()) and len(answers) == 4, answers
    if drill == "relation":
        assert 0.3 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.7 and answers["yes"] + answers["no"] < len(test)
    if drill.startswith("between") or drill == "relation":
        assert all(len(r["scene"]["objects"]) >= 2 for r in test)


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_side_questions_name_one_object_in_an_outer_third(naming):
    """position_readout's --names: each naming picks out one object, and the answer is the third it is in."""
    rng, asked = random.Random(5), 0
    for _ in range(400):
        scene = varied_scenes.sample_scene(rng)
        if (pair := side_question(rng, scene, naming)) is None:
            continue
        question, answer = pair
        assert answer == oracle(question, varied_scenes.scene_json(scene))
        name = re.fullmatch(r"Is the (.+) (on the left|at the top).*", question)[1]
        assert name.endswith(" object") == (naming == "color")
        if naming != "shortest":  # named by a colour no other object has
            assert sum(t.color == name.split()[0] for t in scene.things) == 1
        asked += 1
    assert asked > 150


def test_training_scenes_ask_distinct_questions_up_to_the_drills_limit(tmp_path):
    for drill, most in [("between", 3), ("side", 1), ("count", 3)]:
        records = json.loads((generate_drill(tmp_path / drill, drill, num_train=60, num_test=0, seed=1) / "finetune.json").read_text())
        asked = [[t["value"] for t in r["conversations"][::2]] for r in records]
        assert all(1 <= len(q) <= most and len(set(q)) == len(q) for q in asked), drill
        assert max(map(len, asked)) == most, drill  # the limit is reached
        assert (tmp_path / drill / records[-1]["image"]).is_file() and not (tmp_path / drill / "pretrain.json").exists()


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (generate_drill(tmp_path / name, "between_color", 12, 6, seed) for name, seed in [("a", 0), ("b", 0), ("c", 1)])
    assert (a / "finetune.json").read_bytes() == (b / "finetune.json").read_bytes() != (c / "finetune.json").read_bytes()
    assert (a / "images/train_00011.png").read_bytes() == (b / "images/train_00011.png").read_bytes()


def test_bad_arguments_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="unknown drill 'relations'; drills: between, between_color, "):
        generate_drill(tmp_path, "relations", 1)
    with pytest.raises(ValueError, match="num_train and num_test must be >= 0, got -1 and 300"):
        generate_drill(tmp_path, "side", -1)


def test_cli_writes_a_drill_the_platform_trains_on(tmp_path):
    out = tmp_path / "d"
    result = run_module("experiments.tiny_recipe.make_scenes", "--drill", "between", "--out", str(out), "--num-train", "12",
                        "--num-test", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "finetune: 12 records" in result.stdout and "test: 4 records" in result.stdout and "pretrain" not in result.stdout
    assert len(list((out / "images").glob("*.png"))) == 16
    assert encode_all(out) == 12 and encode_all(out, "test.json") == 4

    default = run_module("experiments.tiny_recipe.make_scenes", "--drill", "side", "--out", str(tmp_path / "e"), "--num-train", "1")
    assert default.returncode == 0 and "test: 300 records" in default.stdout, default.stderr  # the recipe's held-out count
