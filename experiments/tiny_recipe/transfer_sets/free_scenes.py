"""A third synthetic LLaVA dataset, made as data the tiny recipe was not tuned on.

    python -m experiments.tiny_recipe.transfer_sets.free_scenes --out runs/free_scenes
    python -m jobs.demo --data runs/free_scenes --out runs/free_demo

Free placement (no grid): 1-5 objects on a 128x96 px image, shapes triangle, ring, star, bar in 5 colours
and 2 sizes (~18 and ~28 px). Five question kinds: count (of a shape or colour), color (of an object named
by shape), shape (of one named by colour), relation (left/right/above/below, yes/no) and exists (yes/no).
Writes pretrain.json (captions), finetune.json (1-4 QA turns) and test.json (one question per held-out
scene, gold in "answer", question kind in "kind"; kinds round-robin, yes/no balanced, counts cycling 0-3).
No training scene shares a test scene's signature: each object's size, colour, shape and third of the image.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from PIL import Image, ImageDraw

from llava_platform.data.synthetic import conversation

W, H, SS = 128, 96, 3  # image size; shapes are drawn SS times larger and downsampled (anti-aliasing)
SHAPES = ["triangle", "ring", "star", "bar"]
COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 225), "yellow": (235, 195, 20), "purple": (150, 55, 190)}
SIZES = {"small": 18, "large": 28}
GAP, MARGIN = 4, 2  # px between object boxes, and to the image border
REL_MIN = 10  # px apart along the axis before "left of" / "above" is asked
KINDS = ["count", "color", "shape", "relation", "exists"]
NUM_WORDS = ["zero", "one", "two", "three", "four", "five"]


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str  # "small" or "large"
    x0: int
    y0: int
    w: int
    h: int

    @property
    def cx(self) -> float:
        return self.x0 + self.w / 2

    @property
    def cy(self) -> float:
        return self.y0 + self.h / 2

    @property
    def row(self) -> str:
        return "top" if self.cy < H / 3 else "middle" if self.cy < 2 * H / 3 else "bottom"

    @property
    def column(self) -> str:
        return "left" if self.cx < W / 3 else "center" if self.cx < 2 * W / 3 else "right"


def too_close(a: Obj, b: Obj) -> bool:
    """Boxes under GAP px apart, or centres under 3 px apart in x (left-to-right order must be clear)."""
    apart = a.x0 + a.w + GAP <= b.x0 or b.x0 + b.w + GAP <= a.x0 or a.y0 + a.h + GAP <= b.y0 or b.y0 + b.h + GAP <= a.y0
    return not apart or abs(a.cx - b.cx) < 3


def place(rng: random.Random, n: int, shapes: list[str], colors: list[str]) -> list[Obj] | None:
    """n objects, each at the first of 100 random spots clear of the others; None if one finds no spot."""
    objs: list[Obj] = []
    for _ in range(n):
        shape, color, size = rng.choice(shapes), rng.choice(colors), rng.choice(list(SIZES))
        w = SIZES[size] + rng.randint(-1, 1)
        h = max(8, round(w * 0.45)) if shape == "bar" else w
        for _ in range(100):
            o = Obj(shape, color, size, rng.randint(MARGIN, W - MARGIN - w), rng.randint(MARGIN, H - MARGIN - h), w, h)
            if not any(too_close(o, p) for p in objs):
                objs.append(o)
                break
        else:
            return None
    return objs


def sample_scene(rng: random.Random) -> tuple[list[Obj], tuple[int, int, int]]:
    """Objects sorted left to right, and the background colour."""
    while True:  # after 50 failed layouts, start over with a new count and palette
        n = rng.randint(1, 5)
        # half the scenes use two shapes / two colours, so repeats (counts > 1) are common
        shapes = rng.sample(SHAPES, 2) if rng.random() < 0.5 else SHAPES
        colors = rng.sample(list(COLORS), 2) if rng.random() < 0.5 else list(COLORS)
        for _ in range(50):
            if (objs := place(rng, n, shapes, colors)) is not None:
                return sorted(objs, key=lambda o: o.cx), tuple(238 + rng.randint(-10, 10) for _ in range(3))


def signature(objs: list[Obj]) -> tuple:
    """Coarse scene identity: test scenes never share one with training scenes."""
    return tuple((o.size, o.color, o.shape, o.column, o.row) for o in objs)


def star(cx: float, cy: float, outer: float, inner: float) -> list[tuple[float, float]]:
    angles = [-math.pi / 2 + i * math.pi / 5 for i in range(10)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip([outer, inner] * 5, angles)]


def draw(objs: list[Obj], background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (W * SS, H * SS), background)
    pen = ImageDraw.Draw(image)
    for o in objs:
        fill = COLORS[o.color]
        x0, y0, w, h = o.x0 * SS, o.y0 * SS, o.w * SS, o.h * SS
        x1, y1 = x0 + w, y0 + h
        if o.shape == "triangle":
            pen.polygon([(x0 + w / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o.shape == "ring":
            pen.ellipse((x0, y0, x1, y1), outline=fill, width=max(SS * 4, int(w * 0.22)))
        elif o.shape == "star":  # centre nudged down 4% so the star sits in its box
            pen.polygon(star(x0 + w / 2, y0 + h / 2 + h * 0.04, w / 2, w / 2 * 0.45), fill=fill)
        else:
            pen.rectangle((x0, y0, x1, y1), fill=fill)
    return image.resize((W, H), Image.LANCZOS)


def caption(objs: list[Obj]) -> str:
    parts = [f"a {o.size} {o.color} {o.shape} {'in' if o.row == 'middle' else 'at'} the {o.row}" for o in objs]
    if len(objs) == 1:
        return f"There is one object: {parts[0]}."
    return f"There are {NUM_WORDS[len(objs)]} objects, from left to right: {', '.join(parts)}."


def unique_name(objs: list[Obj], o: Obj, keysets: list[tuple[str, ...]]) -> str | None:
    """The first keyset whose values single o out among objs, as words ("large red star"); None if none does."""
    for keys in keysets:
        if sum(all(getattr(p, k) == getattr(o, k) for k in keys) for p in objs) == 1:
            return " ".join(getattr(o, k) for k in keys)
    return None


def count_question(rng: random.Random, objs: list[Obj], want: int | None = None) -> tuple[str, str] | None:
    cands = [(f"How many {s}s are there?", sum(o.shape == s for o in objs)) for s in SHAPES]
    cands += [(f"How many {c} objects are there?", sum(o.color == c for o in objs)) for c in COLORS]
    values = sorted({n for _, n in cands})
    if want is None:  # zero and one come easily: favour larger counts
        want = rng.choices(values, weights=[0.6 if n == 0 else n for n in values])[0]
    elif want not in values:
        return None
    question, n = rng.choice([c for c in cands if c[1] == want])
    return question, str(n)


def attribute_question(rng: random.Random, objs: list[Obj], asked: str) -> tuple[str, str] | None:
    """The colour of an object named by its shape, or the shape of one named by its colour (with size if needed)."""
    known = "shape" if asked == "color" else "color"
    cands = [(ref, getattr(o, asked)) for o in objs if (ref := unique_name(objs, o, [(known,), ("size", known)]))]
    if not cands:
        return None
    ref, answer = rng.choice(cands)
    return (f"What color is the {ref}?" if asked == "color" else f"What shape is the {ref} object?"), answer


def relation_question(rng: random.Random, objs: list[Obj], want: bool | None = None) -> tuple[str, str] | None:
    keysets = [("shape",), ("color", "shape"), ("size", "color", "shape")]  # the shortest description that is unique
    named = [(o, ref) for o in objs if (ref := unique_name(objs, o, keysets))]
    cands = []
    for (a, ra), (b, rb) in permutations(named, 2):
        if abs(a.cx - b.cx) >= REL_MIN:
            cands += [(ra, "to the left of", rb, a.cx < b.cx), (ra, "to the right of", rb, a.cx > b.cx)]
        if abs(a.cy - b.cy) >= REL_MIN:
            cands += [(ra, "above", rb, a.cy < b.cy), (ra, "below", rb, a.cy > b.cy)]
    if not cands:
        return None
    want = rng.random() < 0.5 if want is None else want
    ra, relation, rb, _ = rng.choice([c for c in cands if c[3] == want])
    return f"Is the {ra} {relation} the {rb}?", "yes" if want else "no"


def exists_question(rng: random.Random, objs: list[Obj], want: bool | None = None) -> tuple[str, str]:
    want = rng.random() < 0.5 if want is None else want
    present = {(o.color, o.shape) for o in objs}
    if want:
        color, shape = rng.choice(sorted(present))
    else:  # prefer hard negatives: the colour and the shape are both there, just not together
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        hard = [(c, s) for c, s in absent if c in {o.color for o in objs} and s in {o.shape for o in objs}]
        color, shape = rng.choice(hard if hard and rng.random() < 0.6 else absent)
    return f"Is there a {color} {shape}?", "yes" if want else "no"


def ask(rng: random.Random, kind: str, objs: list[Obj], want: int | bool | None = None) -> tuple[str, str] | None:
    if kind in ("color", "shape"):
        return attribute_question(rng, objs, kind)
    return {"count": count_question, "relation": relation_question, "exists": exists_question}[kind](rng, objs, want)


def generate(out: Path, num_train: int, num_test: int, seed: int) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    test, test_signatures, n_asked = [], set(), Counter()
    while len(test) < num_test:  # test first: kinds round-robin, yes/no alternating, counts cycling 0-3
        kind = KINDS[len(test) % len(KINDS)]
        objs, background = sample_scene(rng)
        if (sig := signature(objs)) in test_signatures:
            continue
        want = n_asked[kind] % 4 if kind == "count" else n_asked[kind] % 2 == 0 if kind in ("relation", "exists") else None
        if (pair := ask(rng, kind, objs, want)) is None:
            continue
        n_asked[kind] += 1
        test_signatures.add(sig)
        ident = f"test_{len(test):05d}"
        image = f"images/{ident}.png"
        draw(objs, background).save(out / image, optimize=False, compress_level=1)
        test.append({"id": ident, "image": image, "answer": pair[1], "kind": kind, "conversations": conversation([pair])})
    pretrain, finetune = [], []
    while len(pretrain) < num_train:
        objs, background = sample_scene(rng)
        if signature(objs) in test_signatures:
            continue
        ident = f"train_{len(pretrain):05d}"
        image = f"images/{ident}.png"
        draw(objs, background).save(out / image, optimize=False, compress_level=1)
        pretrain.append({"id": ident, "image": image, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(objs)}]})  # fmt: skip
        num_turns, kinds = rng.randint(1, 4), KINDS[:]
        rng.shuffle(kinds)
        qa = []
        for kind in kinds:  # each kind at most once, so questions never repeat
            if len(qa) == num_turns:
                break
            if (pair := ask(rng, kind, objs)) is not None:
                qa.append(pair)
        finetune.append({"id": ident, "image": image, "conversations": conversation(qa)})
    for name, records in [("pretrain", pretrain), ("finetune", finetune), ("test", test)]:
        (out / f"{name}.json").write_text(json.dumps(records, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-train", type=int, default=6800)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.out, args.num_train, args.num_test, args.seed)
    print(f"{args.num_train} train and {args.num_test} held-out scenes in {args.out}")


if __name__ == "__main__":
    main()
