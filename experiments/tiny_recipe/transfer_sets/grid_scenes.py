"""A second synthetic LLaVA dataset, unlike the platform's scenes, to see how the tiny recipe transfers.

    python -m experiments.tiny_recipe.transfer_sets.grid_scenes --out runs/grid_scenes --num-train 3000
    python -m jobs.demo --data runs/grid_scenes --out runs/grid_demo

What differs from `llava_platform.data.synthetic`: a 3x3 grid (cells do not line up with the tiny
tower's 16-px patches), 96-px images (resized to 64), 1-4 objects with a random margin, other
shapes (circle, square, diamond, cross) and colours, and other questions: the object in a cell
(two-word answer or "empty"), how many objects of a colour, whether a shape is present, and the row
of a colour+shape. Writes pretrain.json (captions), finetune.json (1-4 QA turns) and test.json
(held-out scenes, one question, gold in "answer"): the folder layout `jobs.demo --data` reads.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from llava_platform.data.synthetic import conversation

SHAPES = ["circle", "square", "diamond", "cross"]
COLORS = {"red": (200, 30, 30), "orange": (240, 140, 20), "purple": (130, 40, 170), "teal": (20, 150, 150), "black": (20, 20, 20)}
ROWS, COLUMNS = ["top", "middle", "bottom"], ["left", "center", "right"]
CELLS = [(row, column) for row in ROWS for column in COLUMNS]

Obj = tuple[tuple[str, str], str, str]  # ((row, column), color, shape)


def random_scene(rng: random.Random) -> tuple[Obj, ...]:
    return tuple(sorted((cell, rng.choice(list(COLORS)), rng.choice(SHAPES)) for cell in rng.sample(CELLS, rng.randint(1, 4))))


def draw(scene: tuple[Obj, ...], size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (250, 250, 240))
    pen, cell = ImageDraw.Draw(image), size / 3
    for (row, column), color, shape in scene:
        margin = rng.uniform(2, 6)
        x0, y0 = COLUMNS.index(column) * cell + margin, ROWS.index(row) * cell + margin
        x1, y1 = x0 + cell - 2 * margin, y0 + cell - 2 * margin
        cx, cy, fill = (x0 + x1) / 2, (y0 + y1) / 2, COLORS[color]
        if shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape == "diamond":
            pen.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        else:  # cross: two bars a third of the object wide
            arm = (x1 - x0) / 6
            pen.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
            pen.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
    return image


def caption(scene: tuple[Obj, ...]) -> str:
    return "; ".join(f"{color} {shape} in the {row} {column}" for (row, column), color, shape in scene)


def questions(scene: tuple[Obj, ...], rng: random.Random) -> list[tuple[str, str]]:
    by_cell = {cell: f"{color} {shape}" for cell, color, shape in scene}
    cell = rng.choice(CELLS)
    color = rng.choice(list(COLORS)) if rng.random() < 0.5 else rng.choice(scene)[1]
    shape = rng.choice(SHAPES)
    qa = [
        (f"What is in the {cell[0]} {cell[1]} cell?", by_cell.get(cell, "empty")),
        (f"How many {color} things are there?", str(sum(o[1] == color for o in scene))),
        (f"Is there a {shape}?", "yes" if any(o[2] == shape for o in scene) else "no"),
    ]
    (row, _), color, shape = rng.choice(scene)
    if sum(o[1:] == (color, shape) for o in scene) == 1:
        qa.append((f"Which row has the {color} {shape}?", row))
    rng.shuffle(qa)
    return qa


def generate(out: Path, num_train: int, num_test: int, seed: int, image_size: int = 96) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes: dict[tuple[Obj, ...], None] = {}
    while len(scenes) < num_train + num_test:  # distinct scenes: the test ones are never trained on
        scenes.setdefault(random_scene(rng))
    pretrain, finetune, test = [], [], []
    for i, scene in enumerate(scenes):
        image = f"images/{i:05d}.png"
        draw(scene, image_size, rng).save(out / image)
        qa = questions(scene, rng)
        if i < num_test:
            test.append({"id": f"test-{i}", "image": image, "answer": qa[0][1], "conversations": conversation(qa[:1])})
            continue
        pretrain.append({"id": f"cap-{i}", "image": image, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(scene)}]})  # fmt: skip
        finetune.append({"id": f"qa-{i}", "image": image, "conversations": conversation(qa[: rng.randint(1, 4)])})
    for name, records in [("pretrain", pretrain), ("finetune", finetune), ("test", test)]:
        (out / f"{name}.json").write_text(json.dumps(records, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(args.out, args.num_train, args.num_test, args.seed)
    print(f"{args.num_train} train and {args.num_test} held-out scenes in {args.out}")


if __name__ == "__main__":
    main()
