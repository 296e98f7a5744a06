"""The varied scenes the tiny base learns from: deterministic, well-formed, answers that follow from the
stored scene, pixels that show it."""

import json
import math
import random
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from experiments.tests.conftest import run_module
from experiments.tiny_recipe.varied_scenes import CANVASES, COLORS, KINDS, SHAPES, ask, generate, sample_scene
from llava_platform.data.records import read_records

PLURALS = {shape + ("es" if shape == "cross" else "s"): shape for shape in SHAPES}


def named(name: str, scene: dict) -> dict:
    """The one object a question's "star" or "red star" names."""
    *color, shape = name.split()
    (obj,) = [o for o in scene["objects"] if o["shape"] == shape and color in ([], [o["color"]])]
    return obj


def centre(obj: dict) -> tuple[float, float]:
    x0, y0, w, h = obj["box"]
    return x0 + w / 2, y0 + h / 2


def oracle(question: str, scene: dict) -> str | None:
    """An independent answer for most kinds (None: not one of them)."""
    objs = [(o["color"], o["shape"]) for o in scene["objects"]]
    if m := re.fullmatch(r"Is the (\w+(?: \w+)?) (to the left of|to the right of|above|below) the (\w+(?: \w+)?)\?", question):
        (ax, ay), (bx, by) = centre(named(m[1], scene)), centre(named(m[3], scene))
        truth = {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}[m[2]]
        return "yes" if truth else "no"
    if m := re.fullmatch(r"Are the (\w+(?: \w+)?) and the (\w+(?: \w+)?) the same color\?", question):
        return "yes" if named(m[1], scene)["color"] == named(m[2], scene)["color"] else "no"
    if m := re.fullmatch(r"Are there more (\w+) than (\w+)\?", question):
        a, b = (sum(s == PLURALS[word] for _, s in objs) for word in m.group(1, 2))
        return "yes" if a > b else "no"
    if m := re.fullmatch(r"(?:Where is|In which part of the image is) the (\w+(?: \w+)?)\?", question):
        (x, y), (width, height) = centre(named(m[1], scene)), scene["size"]
        row = "top" if y < height / 3 else "bottom" if y >= 2 * height / 3 else ""
        col = "left" if x < width / 3 else "right" if x >= 2 * width / 3 else ""
        return f"{row} {col}".strip() or "center"
    if re.fullmatch(r"How many (objects are there|shapes are in the image|objects can you see)\?", question):
        return str(len(objs))
    if m := re.fullmatch(r"(?:How many (\w+) (?:are there|are in the image)\?|Count the (\w+)\.)", question):
        word = m[1] or m[2]
        if word in PLURALS:
            return str(sum(s == PLURALS[word] for _, s in objs))
    if m := re.fullmatch(r"How many (\w+) (?:objects|shapes) are there\?|How many things are (\w+)\?", question):
        return str(sum(c == (m[1] or m[2]) for c, _ in objs))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)(?: in the image)?\?", question):
        return "yes" if (m[1], m[2]) in objs else "no"
    if m := re.fullmatch(r"(?:Is there a|Does the image contain a) (\w+)\?|Are there any (\w+)\?", question):
        shape = m[1] or PLURALS[m[2]]
        return "yes" if any(s == shape for _, s in objs) else "no"
    if m := re.fullmatch(r"(?:What shape is the|What is the shape of the) (\w+) object\?|Which shape is (\w+)\?", question):
        (shape,) = [s for c, s in objs if c == (m[1] or m[2])]  # exactly one object of that colour
        return shape
    if m := re.fullmatch(r"(?:What colou?r is the|What is the color of the|Which color is the) (?:(\w+) )?(\w+)\?", question):
        (color,) = [c for c, s in objs if s == m[2] and m[1] in (None, c)]  # the name picks out one object
        return color
    return None


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / n, 20, 11, seed=s) for n, s in [("a", 1), ("b", 1), ("c", 2)])
    for name in ("pretrain", "finetune", "test"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
        assert getattr(a, name).read_bytes() != getattr(c, name).read_bytes()
    for image in (a.root / "images").iterdir():
        assert image.read_bytes() == (b.root / "images" / image.name).read_bytes(), image.name


def test_records_are_llava_json_and_answers_follow_from_the_scene(tmp_path):
    paths = generate(tmp_path, num_train=400, num_test=110, seed=0)
    pretrain, finetune, test = (list(read_records(getattr(paths, n))) for n in ("pretrain", "finetune", "test"))
    assert (len(pretrain), len(finetune), len(test)) == (400, 400, 110)
    assert Counter(r.extra["kind"] for r in test) == {kind: 10 for kind in KINDS}  # round-robin over the 11 kinds
    checked = Counter()
    for raw in json.loads(paths.finetune.read_text()) + json.loads(paths.test.read_text()):
        turns = raw["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and 2 <= len(turns) <= 10, raw["id"]
        assert turns[0]["value"].startswith("<image>\n") and not any("<image>" in t["value"] for t in turns[1:])
        assert tuple(raw["scene"]["size"]) in CANVASES and 1 <= len(raw["scene"]["objects"]) <= 6
        for q, a in zip(turns[::2], turns[1::2]):
            if (expected := oracle(q["value"].removeprefix("<image>\n"), raw["scene"])) is not None:
                assert a["value"] == expected, (raw["id"], q["value"])
                checked[a["value"] in ("yes", "no")] += 1
    assert checked[True] > 250 and checked[False] > 400, checked  # the oracle covered many questions of both sorts
    for r in test:
        assert r.extra["answer"] == r.messages[1].content and len(r.extra["answer"].split()) <= 3
    yes_no = Counter(r.extra["answer"] for r in test if r.extra["answer"] in ("yes", "no"))
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.4 * sum(yes_no.values()), yes_no


def test_pixels_show_the_objects_in_their_colours(tmp_path):
    paths = generate(tmp_path, num_train=40, num_test=0, seed=5)
    seen = 0
    for r in json.loads(paths.finetune.read_text()):
        pixels = np.asarray(Image.open(paths.image_folder / r["image"]).convert("RGB")).astype(int)
        assert pixels.shape == (r["scene"]["size"][1], r["scene"]["size"][0], 3)
        for o in r["scene"]["objects"]:
            x0, y0, w, h = o["box"]
            centre = pixels[round(y0 + h / 2), round(x0 + w / 2)]
            if o["shape"] == "ring":  # hollow: the centre shows the background
                assert math.dist(centre, r["scene"]["background"]) < 20, (r["id"], o)
            else:  # filled there, within the drawing's colour jitter (+-18 per channel)
                assert math.dist(centre, COLORS[o["color"]]) < 40, (r["id"], o, centre)
            seen += 1
    assert seen > 80


def test_bad_counts_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="num_train and num_test must be >= 0, got -1 and 5"):
        generate(tmp_path, num_train=-1, num_test=5)


def test_an_unknown_question_kind_lists_the_kinds():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="unknown question kind 'colour'; kinds: color, shape, count, "):
        ask(rng, "colour", sample_scene(rng))


def test_cli_writes_the_varied_dataset(tmp_path):
    result = run_module("experiments.tiny_recipe.make_scenes", "--varied", "--out", str(tmp_path / "d"), "--num-train", "12",
                        "--num-test", "4", "--seed", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pretrain: 12 records" in result.stdout and "finetune: 12 records" in result.stdout and "test: 4 records" in result.stdout
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 16
    assert (tmp_path / "d" / "test.json").read_bytes() == generate(tmp_path / "e", 12, 4, seed=3).test.read_bytes()


def test_cli_needs_one_generator(tmp_path):
    neither = run_module("experiments.tiny_recipe.make_scenes", "--out", str(tmp_path / "d"))
    assert neither.returncode == 2 and "one of the arguments --varied --drill is required" in neither.stderr
    both = run_module("experiments.tiny_recipe.make_scenes", "--varied", "--drill", "side", "--out", str(tmp_path / "d"))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert not (tmp_path / "d").exists()
