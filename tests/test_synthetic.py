"""The synthetic scenes: deterministic, consistent answers, held-out test scenes, drawn as described."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import run_job
from llava_platform.data.records import Record, read_records
from llava_platform.data.synthetic import CELLS, COLORS, caption, generate


def answer_from_scene(question: str, scene: list[dict]) -> str:
    """An independent oracle for every question kind."""
    objs = [(o["cell"], o["color"], o["shape"]) for o in scene]
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"What shape is at the (.+)\?", question):
        return next((s for c, _, s in objs if c == m[1]), "nothing")
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        (cell,) = [c for c, col, s in objs if (col, s) == (m[1], m[2])]  # exactly one, or the question is ambiguous
        return cell
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        (color,) = [col for _, col, s in objs if s == m[1]]
        return color
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if any((col, s) == (m[1], m[2]) for _, col, s in objs) else "no"
    raise AssertionError(f"unknown question {question!r}")


def scene_from_caption(text: str) -> list[tuple[str, str, str]]:
    """An independent parse of 'a red circle at the top left, ... and a blue square at the bottom right'."""
    parts = re.split(r", | and (?=a )", text)
    return [tuple(re.fullmatch(r"a (\w+) (\w+) at the (.+)", p).group(3, 1, 2)) for p in parts]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / n, 30, 10, seed=s) for n, s in [("a", 1), ("b", 1), ("c", 2)])
    for name in ("pretrain", "finetune", "test"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
    images = sorted(p.name for p in (a.root / "images").iterdir())
    assert len(images) == 40 and images == sorted(p.name for p in (b.root / "images").iterdir())
    for name in images:
        assert (a.root / "images" / name).read_bytes() == (b.root / "images" / name).read_bytes(), name
    assert a.finetune.read_bytes() != c.finetune.read_bytes()
    assert a.test.read_bytes() != c.test.read_bytes()


def test_records_answers_and_split(tmp_path):
    paths = generate(tmp_path, num_train=300, num_test=60, seed=0)
    pretrain, finetune, test = (list(read_records(getattr(paths, n))) for n in ("pretrain", "finetune", "test"))
    assert (len(pretrain), len(finetune), len(test)) == (300, 300, 60)
    assert all(isinstance(r, Record) for r in pretrain + finetune + test)
    assert all(r["conversations"][0] == {"from": "human", "value": "<image>"} for r in json.loads(paths.pretrain.read_text()))
    for r in pretrain:
        assert len(r.messages) == 2
        assert (paths.image_folder / r.images[0]).is_file()
        scene = [(o["cell"], o["color"], o["shape"]) for o in r.extra["scene"]]
        assert r.messages[1].content == caption(tuple(sorted(scene)))
        # objects listed in the fixed cell order, and exactly the scene's objects
        assert scene_from_caption(r.messages[1].content) == sorted(scene, key=lambda o: CELLS.index(o[0]))
        assert 1 <= len(scene) <= 3 and len({o[0] for o in scene}) == len(scene)
    for raw in json.loads(paths.finetune.read_text()) + json.loads(paths.test.read_text()):  # as written, not normalised
        turns = [t["value"] for t in raw["conversations"]]
        assert turns[0].startswith("<image>\n") and not any("<image>" in t for t in turns[1:]), raw["id"]
        assert [t["from"] for t in raw["conversations"]] == ["human", "gpt"] * (len(turns) // 2)
    for r in finetune + test:
        assert (paths.image_folder / r.images[0]).is_file()
        assert 2 <= len(r.messages) <= 8
        for q, a in zip(r.messages[::2], r.messages[1::2]):
            assert a.content == answer_from_scene(q.content.removeprefix("<image>\n"), r.extra["scene"]), r.id
    for r in test:
        assert len(r.messages) == 2 and r.extra["answer"] == r.messages[1].content
        assert r.extra["answer"] == r.extra["answer"].lower().rstrip(".?!")  # short, exact, lower case
    key = lambda r: json.dumps(r.extra["scene"])  # noqa: E731
    assert not {key(r) for r in test} & {key(r) for r in finetune}, "a test scene is also in train"
    assert len({key(r) for r in finetune}) == 300
    kinds = {re.sub(r"(the|a) .*\?", "", r.messages[0].content) for r in test}
    assert len(kinds) >= 4, kinds


def test_pixels_show_the_scene(tmp_path):
    paths = generate(tmp_path, num_train=20, num_test=0, seed=3)
    for r in json.loads(paths.finetune.read_text()):
        pixels = np.asarray(Image.open(paths.image_folder / r["image"]))
        assert pixels.shape == (64, 64, 3)
        for o in r["scene"]:
            row, col = divmod(CELLS.index(o["cell"]), 2)
            center = pixels[row * 32 + 20, col * 32 + 16]  # lower middle of the cell: inside all three shapes
            assert tuple(center) == COLORS[o["color"]], (r["id"], o)
        empty = set(CELLS) - {o["cell"] for o in r["scene"]}
        for cell in empty:
            row, col = divmod(CELLS.index(cell), 2)
            assert np.all(pixels[row * 32 : row * 32 + 32, col * 32 : col * 32 + 32] == 235)


def test_bad_arguments_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="at most 7000 distinct scenes exist for train \\+ test; asked for 8000"):
        generate(tmp_path, num_train=7000, num_test=1000)
    with pytest.raises(ValueError, match="num_train and num_test must be >= 0"):
        generate(tmp_path, num_train=-1)
    with pytest.raises(ValueError, match="image_size must be at least 16"):
        generate(tmp_path, num_train=1, num_test=1, image_size=8)


def test_cli_writes_the_dataset(tmp_path):
    result = run_job("make_synthetic_data", "--out", str(tmp_path / "d"), "--num-train", "12", "--num-test", "4")
    assert result.returncode == 0, result.stderr
    assert "finetune: 12 records" in result.stdout and "test: 4 records" in result.stdout
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 16
