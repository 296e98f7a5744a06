"""A deterministic generator of simple scenes for the tiny model to learn (no download, seconds to make).

A scene is a 2x2 grid with 1-3 objects in distinct cells; each object is a shape
(circle, square, triangle) in a colour (red, green, blue, yellow). Writes, in
LLaVA JSON:

    pretrain.json   stage 1: "<image>" -> "a red circle at the top left and a blue square at the bottom right"
    finetune.json   stage 2: 2-4 question/answer turns per image, short exact answers
    test.json       held-out scenes (never in train), one question each, gold in "answer"
    questions.jsonl test.json as a LLaVA question file (question_id, image, text, answer) for batch jobs

Every record also carries its "scene" (list of {shape, color, cell}) so answers can be re-derived.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLORS", "CELLS", "SyntheticPaths", "generate", "check_counts", "caption", "questions", "conversation"]

SHAPES = ["circle", "square", "triangle"]
COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
CELLS = ["top left", "top right", "bottom left", "bottom right"]  # (row, col) = divmod(index, 2)
BACKGROUND = (235, 235, 235)

Obj = tuple[str, str, str]  # (cell, color, shape)


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path
    image_folder: Path  # records' image paths are relative to this (== root)
    pretrain: Path
    finetune: Path
    test: Path
    questions: Path  # test.json's questions as a LLaVA question file (question_id, image, text, answer): batch jobs

    @classmethod
    def in_folder(cls, root: Path) -> SyntheticPaths:
        """The layout `generate` writes (and `jobs.demo --data` reads): the three JSON files, image paths relative to root."""
        return cls(root, root, root / "pretrain.json", root / "finetune.json", root / "test.json", root / "questions.jsonl")


def _random_scene(rng: random.Random) -> tuple[Obj, ...]:
    cells = rng.sample(CELLS, rng.randint(1, 3))
    return tuple(sorted((cell, rng.choice(list(COLORS)), rng.choice(SHAPES)) for cell in cells))


def _draw(scene: tuple[Obj, ...], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half, margin = size // 2, max(1, size // 16)  # shapes fill ~3/4 of their cell
    for cell, color, shape in scene:
        row, col = divmod(CELLS.index(cell), 2)
        x0, y0, x1, y1 = col * half + margin, row * half + margin, (col + 1) * half - margin, (row + 1) * half - margin
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def caption(scene: tuple[Obj, ...]) -> str:
    parts = [f"a {color} {shape} at the {cell}" for cell, color, shape in sorted(scene, key=lambda o: CELLS.index(o[0]))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def questions(scene: tuple[Obj, ...], rng: random.Random) -> list[tuple[str, str]]:
    """Every question kind that has one exact answer for this scene, shuffled."""
    by_cell = {cell: (color, shape) for cell, color, shape in scene}
    shape_count = {s: sum(o[2] == s for o in scene) for s in SHAPES}
    qa = [("How many objects are there?", str(len(scene)))]
    cell = rng.choice(CELLS)
    qa.append((f"What shape is at the {cell}?", by_cell[cell][1] if cell in by_cell else "nothing"))
    cell, color, shape = rng.choice(scene)
    if sum((c, s) == (color, shape) for _, c, s in scene) == 1:  # two blue circles: "where" has no one answer
        qa.append((f"Where is the {color} {shape}?", cell))
    if shape_count[shape] == 1:
        qa.append((f"What color is the {shape}?", color))
    asked = (rng.choice(list(COLORS)), rng.choice(SHAPES)) if rng.random() < 0.5 else (color, shape)
    present = any((c, s) == asked for _, c, s in scene)
    qa.append((f"Is there a {asked[0]} {asked[1]}?", "yes" if present else "no"))
    rng.shuffle(qa)
    return qa


def conversation(qa: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Question/answer pairs as LLaVA JSON turns, the image placeholder before the first question."""
    turns = []
    for t, (question, answer) in enumerate(qa):
        turns += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + question}, {"from": "gpt", "value": answer}]
    return turns


def _scene_json(scene: tuple[Obj, ...]) -> list[dict[str, str]]:
    return [{"cell": cell, "color": color, "shape": shape} for cell, color, shape in scene]


def check_counts(num_train: int, num_test: int) -> None:
    """The record counts a generator is asked for: negative ones are a caller's mistake, named."""
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train and num_test must be >= 0, got {num_train} and {num_test}")


def generate(out_dir: str | Path, num_train: int = 2000, num_test: int = 200, seed: int = 0, image_size: int = 64) -> SyntheticPaths:
    """Write images and the three JSON files; the same arguments give byte-identical output."""
    check_counts(num_train, num_test)
    # distinct scenes: 4*12 + 6*12**2 + 4*12**3 = 7824; the cap keeps rejection sampling quick
    limit = 7000
    if num_train + num_test > limit:
        raise ValueError(f"at most {limit} distinct scenes exist for train + test; asked for {num_train + num_test}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels so each shape is visible, got {image_size}")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    test_scenes: set[tuple[Obj, ...]] = set()
    train_scenes: list[tuple[Obj, ...]] = []
    seen: set[tuple[Obj, ...]] = set()
    while len(seen) < num_test + num_train:
        scene = _random_scene(rng)
        if scene in seen:
            continue
        seen.add(scene)
        (test_scenes.add(scene) if len(test_scenes) < num_test else train_scenes.append(scene))

    pretrain, finetune, test = [], [], []
    for i, scene in enumerate(train_scenes):
        image = f"images/train_{i:05d}.png"
        _draw(scene, image_size).save(root / image)
        meta = {"image": image, "scene": _scene_json(scene)}
        pretrain.append({"id": f"cap-{i:05d}", **meta, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(scene)}]})  # fmt: skip
        finetune.append({"id": f"qa-{i:05d}", **meta, "conversations": conversation(questions(scene, rng)[: rng.randint(2, 4)])})
    for i, scene in enumerate(sorted(test_scenes)):
        image = f"images/test_{i:05d}.png"
        _draw(scene, image_size).save(root / image)
        q, a = questions(scene, rng)[0]
        test.append({"id": f"test-{i:05d}", "image": image, "scene": _scene_json(scene), "answer": a,
                     "conversations": conversation([(q, a)])})  # fmt: skip

    paths = SyntheticPaths.in_folder(root)
    for path, records in [(paths.pretrain, pretrain), (paths.finetune, finetune), (paths.test, test)]:
        path.write_text(json.dumps(records, indent=1))
    lines = [{"question_id": r["id"], "image": r["image"], "text": r["conversations"][0]["value"].removeprefix("<image>\n"),
              "answer": r["answer"]} for r in test]  # fmt: skip
    paths.questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return paths
