"""Varied synthetic scenes: the broad set the tiny base learns to see from (`make_scenes --varied`).

The demo's scenes (synthetic.py) are one narrow task: 3 shapes, 4 colours, a 2x2 grid. A model that is
to learn *another* small set in 6 minutes needs what CLIP gives LLaVA: a tower that has seen many
shapes, colours, sizes, places and backgrounds, and an LLM that has met many ways of asking. So a scene
here is 1-6 objects, 10 shapes in 12 colours (jittered), of any size from 15 to 40% of the short
side, placed freely or in a 2x2 / 3x3 / 1x3 / 2x3 grid, on light, white, dark or tinted backgrounds,
on canvases of 96-160 px in five aspect ratios; its questions are 11 kinds, each in 2-4 wordings.
Answers are single words, digits, "yes"/"no", a place ("top left") or an object's name ("red star").

Writes the same layout as synthetic.py (`SyntheticPaths.in_folder`): pretrain.json (captions),
finetune.json (1-4 QA turns, sometimes "Describe the image." -> the caption), test.json (one question
per held-out scene, gold in "answer", kind in "kind"); every QA record carries its "scene". Deterministic
for a seed.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from PIL import Image, ImageDraw

from llava_platform.data.synthetic import SyntheticPaths, check_counts, conversation

__all__ = ["SHAPES", "COLORS", "KINDS", "Thing", "Scene", "sample_scene", "draw", "caption", "has_unique_color", "unique_name", "ask", "scene_json", "question_record", "generate"]

SHAPES = ["circle", "square", "triangle", "diamond", "star", "ring", "cross", "hexagon", "rectangle", "bar"]
COLORS = {
    "red": (215, 35, 35), "green": (35, 155, 60), "blue": (40, 75, 220), "yellow": (235, 200, 25),
    "orange": (245, 130, 20), "purple": (135, 50, 180), "pink": (240, 120, 190), "brown": (125, 75, 35),
    "black": (20, 20, 20), "white": (252, 252, 252), "gray": (128, 128, 128), "cyan": (30, 200, 215),
}  # fmt: skip
BACKGROUNDS = {"white": (255, 255, 255), "light gray": (232, 232, 232), "black": (12, 12, 12), "tinted": None}
CANVASES = [(96, 96), (128, 96), (96, 128), (128, 128), (160, 120)]
GRIDS = [(2, 2), (3, 3), (1, 3), (2, 3)]  # (rows, columns)
KINDS = ["color", "shape", "count", "exists", "where", "what_at", "relation", "size", "more", "same_color", "total"]
SS = 3  # shapes are drawn 3x larger and downsampled: anti-aliased edges


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
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
    def area(self) -> int:
        return self.w * self.h


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    things: tuple[Thing, ...]

    def place(self, thing: Thing) -> str:
        """Its ninth of the image: "top left", "top", ..., "center", ..., "bottom right"."""
        row = ["top", "", "bottom"][min(2, int(3 * thing.cy / self.height))]
        col = ["left", "", "right"][min(2, int(3 * thing.cx / self.width))]
        return f"{row} {col}".strip() or "center"


def _background(rng: random.Random) -> tuple[int, int, int]:
    name = rng.choices(list(BACKGROUNDS), weights=[3, 4, 1, 2])[0]
    if name == "tinted":  # a pale random tint
        return tuple(rng.randint(205, 250) for _ in range(3))  # type: ignore[return-value]
    base = BACKGROUNDS[name]
    return tuple(max(0, min(255, c + rng.randint(-6, 6))) for c in base)  # type: ignore[return-value]


def _size(rng: random.Random, shape: str, short_side: int) -> tuple[int, int]:
    side = round(short_side * rng.uniform(0.15, 0.4))
    aspect = {"rectangle": rng.uniform(0.5, 0.65), "bar": rng.uniform(0.22, 0.32)}.get(shape, 1.0)
    return side, max(5, round(side * aspect))


def _overlaps(a: Thing, b: Thing, gap: int = 3) -> bool:
    return not (a.x0 + a.w + gap <= b.x0 or b.x0 + b.w + gap <= a.x0 or a.y0 + a.h + gap <= b.y0 or b.y0 + b.h + gap <= a.y0)


def sample_scene(rng: random.Random) -> Scene:
    """1-6 objects, free or on a grid; colours far enough from the background to be seen."""
    while True:
        width, height = rng.choice(CANVASES)
        background = _background(rng)
        colors = [c for c, rgb in COLORS.items() if math.dist(rgb, background) > 120]
        # a small palette half the time, so that repeats (counts > 1, "same color") are common
        shapes = rng.sample(SHAPES, rng.randint(2, 3)) if rng.random() < 0.5 else SHAPES
        colors = rng.sample(colors, min(len(colors), rng.randint(2, 3))) if rng.random() < 0.5 else colors
        n = rng.randint(1, 6)
        things: list[Thing] = []
        if rng.random() < 0.35:  # grid: one object per chosen cell, centred with a little jitter
            rows, cols = rng.choice(GRIDS)
            cw, ch = width // cols, height // rows
            for cell in rng.sample(range(rows * cols), min(n, rows * cols)):
                shape = rng.choice(shapes)
                w, h = _size(rng, shape, min(cw, ch) * 2)  # at most 0.8 of the cell's short side
                r, c = divmod(cell, cols)
                x0 = c * cw + (cw - w) // 2 + rng.randint(-1, 1)
                y0 = r * ch + (ch - h) // 2 + rng.randint(-1, 1)
                things.append(Thing(shape, rng.choice(colors), max(0, x0), max(0, y0), w, h))
        else:
            for _ in range(n):
                shape = rng.choice(shapes)
                w, h = _size(rng, shape, min(width, height))
                for _ in range(60):
                    t = Thing(shape, rng.choice(colors), rng.randint(2, width - w - 2), rng.randint(2, height - h - 2), w, h)
                    if not any(_overlaps(t, o) for o in things):
                        things.append(t)
                        break
        if things:
            return Scene(width, height, background, tuple(sorted(things, key=lambda t: (t.cx, t.cy))))


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in rgb)  # type: ignore[return-value]


def _star(cx: float, cy: float, outer: float, points: int = 5) -> list[tuple[float, float]]:
    angles = [-math.pi / 2 + i * math.pi / points for i in range(2 * points)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip([outer, outer * 0.45] * points, angles)]


def draw(scene: Scene, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (scene.width * SS, scene.height * SS), scene.background)
    pen = ImageDraw.Draw(image)
    for t in scene.things:
        fill = _jitter(COLORS[t.color], rng)
        x0, y0, x1, y1 = t.x0 * SS, t.y0 * SS, (t.x0 + t.w) * SS, (t.y0 + t.h) * SS
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        if t.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif t.shape == "ring":
            pen.ellipse((x0, y0, x1, y1), outline=fill, width=max(2 * SS, round(w * 0.2)))
        elif t.shape == "triangle":
            pen.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif t.shape == "diamond":
            pen.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        elif t.shape == "star":
            pen.polygon(_star(cx, cy + h * 0.04, w / 2), fill=fill)
        elif t.shape == "hexagon":
            pen.regular_polygon((cx, cy, w / 2), 6, fill=fill)
        elif t.shape == "cross":
            arm = w * 0.32
            pen.rectangle((cx - arm / 2, y0, cx + arm / 2, y1), fill=fill)
            pen.rectangle((x0, cy - arm / 2, x1, cy + arm / 2), fill=fill)
        else:  # square, rectangle, bar
            pen.rectangle((x0, y0, x1, y1), fill=fill)
    return image.resize((scene.width, scene.height), Image.LANCZOS)


def _size_word(scene: Scene, t: Thing) -> str | None:
    """"large" / "small" where the object is clearly one of the two among the others (area ratio >= 2.5)."""
    others = [o.area for o in scene.things if o is not t]
    if others and t.area >= 2.5 * max(others):
        return "large"
    if others and t.area * 2.5 <= min(others):
        return "small"
    return None


def has_unique_color(scene: Scene, t: Thing) -> bool:
    """No other object of the scene has t's colour ("the red object" picks it out)."""
    return sum(o.color == t.color for o in scene.things) == 1


def unique_name(scene: Scene, t: Thing) -> str | None:
    """The shortest of "star", "red star" that picks t out alone, or None."""
    for words in ([t.shape], [t.color, t.shape]):
        if sum(o.shape == t.shape and (len(words) == 1 or o.color == t.color) for o in scene.things) == 1:
            return " ".join(words)
    return None


def _plural(shape: str) -> str:
    return shape + ("es" if shape == "cross" else "s")


# One asker per question kind: (rng, scene, named = [(object, its unique name)]) -> (question, answer), or
# None when the scene has no question of that kind with one exact answer.
Named = list[tuple[Thing, str]]


def _ask_color(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    if not named:
        return None
    t, n = rng.choice(named)
    q = rng.choice(["What color is the {}?", "What is the color of the {}?", "What colour is the {}?", "Which color is the {}?"])
    return q.format(n), t.color


def _ask_shape(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    by_color = [t for t in scene.things if has_unique_color(scene, t)]
    if not by_color:
        return None
    t = rng.choice(by_color)
    q = rng.choice(["What shape is the {} object?", "What is the shape of the {} object?", "Which shape is {}?"])
    return q.format(t.color), t.shape


def _ask_count(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    things = scene.things
    if rng.random() < 0.5:
        shape = rng.choice(sorted({t.shape for t in things}) if rng.random() < 0.8 else SHAPES)
        q = rng.choice(["How many {} are there?", "How many {} are in the image?", "Count the {}."]).format(_plural(shape))
        return q, str(sum(t.shape == shape for t in things))
    color = rng.choice(sorted({t.color for t in things}) if rng.random() < 0.8 else list(COLORS))
    q = rng.choice(["How many {} objects are there?", "How many {} shapes are there?", "How many things are {}?"])
    return q.format(color), str(sum(t.color == color for t in things))


def _ask_total(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    q = rng.choice(["How many objects are there?", "How many shapes are in the image?", "How many objects can you see?"])
    return q, str(len(scene.things))


def _ask_exists(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    things = scene.things
    want = rng.random() < 0.5
    present = {(t.color, t.shape) for t in things}
    if rng.random() < 0.3:  # a shape alone
        shapes = {t.shape for t in things}
        pool = sorted(shapes) if want else [s for s in SHAPES if s not in shapes]
        shape = rng.choice(pool)
        q = rng.choice(["Is there a {}?", "Are there any {}?", "Does the image contain a {}?"])
        return q.format(_plural(shape) if "any" in q else shape), "yes" if want else "no"
    if want:
        color, shape = rng.choice(sorted(present))
    else:  # half the time a hard negative: colour and shape both there, not together
        hard = [(c, s) for c in {t.color for t in things} for s in {t.shape for t in things} if (c, s) not in present]
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = rng.choice(sorted(hard) if hard and rng.random() < 0.5 else absent)
    return rng.choice(["Is there a {} {}?", "Is there a {} {} in the image?"]).format(color, shape), "yes" if want else "no"


def _ask_where(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    if not named:
        return None
    t, n = rng.choice(named)
    return rng.choice(["Where is the {}?", "In which part of the image is the {}?"]).format(n), scene.place(t)


def _ask_what_at(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    places: dict[str, list[Thing]] = {}
    for t in scene.things:
        places.setdefault(scene.place(t), []).append(t)
    place = rng.choice(sorted(places))
    if len(places[place]) != 1:
        return None
    t = places[place][0]
    if rng.random() < 0.5:
        return f"What shape is at the {place}?" if place != "center" else "What shape is in the center?", t.shape
    return f"What color is the object at the {place}?" if place != "center" else "What color is the object in the center?", t.color


def _ask_relation(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    cands = []
    for (a, na), (b, nb) in permutations(named, 2):  # centres >= 10 px apart along the asked axis
        if abs(a.cx - b.cx) >= 10:
            cands += [(na, "to the left of", nb, a.cx < b.cx), (na, "to the right of", nb, a.cx > b.cx)]
        if abs(a.cy - b.cy) >= 10:
            cands += [(na, "above", nb, a.cy < b.cy), (na, "below", nb, a.cy > b.cy)]
    want = rng.random() < 0.5
    cands = [c for c in cands if c[3] == want]
    if not cands:
        return None
    na, rel, nb, _ = rng.choice(cands)
    if rng.random() < 0.3 and rel in ("to the left of", "above"):  # a choice between the two instead of yes/no
        q = "Which is further left, the {} or the {}?" if rel == "to the left of" else "Which is higher, the {} or the {}?"
        return q.format(na, nb), na if want else nb
    return f"Is the {na} {rel} the {nb}?", "yes" if want else "no"


def _ask_size(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    sized = [(n, s) for t, n in named if (s := _size_word(scene, t))]
    if not sized:
        return None
    n, s = rng.choice(sized)
    big = rng.choice(["large", "big"])
    return f"Is the {n} {big} or small?", big if s == "large" else s


def _ask_more(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    things = scene.things
    a, b = rng.sample(SHAPES, 2) if rng.random() < 0.3 else rng.sample(sorted({t.shape for t in things}) + [rng.choice(SHAPES)], 2)
    if a == b:
        return None
    na, nb = sum(t.shape == a for t in things), sum(t.shape == b for t in things)
    if na == nb and rng.random() < 0.7:
        return None
    return f"Are there more {_plural(a)} than {_plural(b)}?", "yes" if na > nb else "no"


def _ask_same_color(rng: random.Random, scene: Scene, named: Named) -> tuple[str, str] | None:
    if len(named) < 2:
        return None
    (a, na), (b, nb) = rng.sample(named, 2)
    return f"Are the {na} and the {nb} the same color?", "yes" if a.color == b.color else "no"


_ASKERS = {"color": _ask_color, "shape": _ask_shape, "count": _ask_count, "total": _ask_total, "exists": _ask_exists,
           "where": _ask_where, "what_at": _ask_what_at, "relation": _ask_relation, "size": _ask_size,
           "more": _ask_more, "same_color": _ask_same_color}  # fmt: skip


def ask(rng: random.Random, kind: str, scene: Scene) -> tuple[str, str] | None:
    """A question of this kind with one exact answer for the scene, or None if the scene has none."""
    if kind not in _ASKERS:
        raise ValueError(f"unknown question kind {kind!r}; kinds: {', '.join(KINDS)}")
    named = [(t, n) for t in scene.things if (n := unique_name(scene, t))]
    return _ASKERS[kind](rng, scene, named)


def caption(scene: Scene) -> str:
    parts = [f"a {t.color} {t.shape} at the {scene.place(t)}" for t in scene.things]
    if len(parts) == 1:
        return f"There is {parts[0]}."
    return f"There are {len(parts)} objects: " + ", ".join(parts[:-1]) + f" and {parts[-1]}."


def scene_json(scene: Scene) -> dict:
    """The scene as stored in each record's "scene": canvas, background and objects (box = x0, y0, w, h in px)."""
    things = [{"shape": t.shape, "color": t.color, "box": [t.x0, t.y0, t.w, t.h]} for t in scene.things]
    return {"size": [scene.width, scene.height], "background": list(scene.background), "objects": things}


def question_record(root: Path, ident: str, scene: Scene, pair: tuple[str, str], kind: str, rng: random.Random) -> dict:
    """Draws the scene to root/images/<ident>.png; its held-out record: one question, gold in "answer", kind in "kind"."""
    image = f"images/{ident}.png"
    draw(scene, rng).save(root / image, compress_level=1)
    return {"id": ident, "image": image, "answer": pair[1], "kind": kind, "conversations": conversation([pair]),
            "scene": scene_json(scene)}  # fmt: skip


def generate(out_dir: str | Path, num_train: int = 16000, num_test: int = 220, seed: int = 0) -> SyntheticPaths:
    """Images and the three JSON files; test questions round-robin over the kinds."""
    check_counts(num_train, num_test)
    paths = SyntheticPaths.in_folder(Path(out_dir))
    (paths.root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pretrain, finetune, test = [], [], []
    while len(test) < num_test:
        kind, scene = KINDS[len(test) % len(KINDS)], sample_scene(rng)
        if (pair := ask(rng, kind, scene)) is None:
            continue
        test.append(question_record(paths.root, f"test_{len(test):05d}", scene, pair, kind, rng))
    for i in range(num_train):
        scene, ident = sample_scene(rng), f"train_{i:05d}"
        image = f"images/{ident}.png"
        draw(scene, rng).save(paths.root / image, compress_level=1)
        turns = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(scene)}]
        pretrain.append({"id": ident, "image": image, "conversations": turns})
        qa: list[tuple[str, str]] = []
        num_turns = rng.randint(1, 4)
        for kind in rng.sample(KINDS, len(KINDS)):  # each kind at most once
            if len(qa) == num_turns:
                break
            if (pair := ask(rng, kind, scene)) is not None:
                qa.append(pair)
        if rng.random() < 0.1:
            qa.insert(0, ("Describe the image.", caption(scene)))
        finetune.append({"id": ident, "image": image, "conversations": conversation(qa), "scene": scene_json(scene)})
    for path, records in [(paths.pretrain, pretrain), (paths.finetune, finetune), (paths.test, test)]:
        path.write_text(json.dumps(records, indent=1))
    return paths
