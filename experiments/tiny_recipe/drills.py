"""Drills on the varied scenes: datasets of one question family each, for what the tiny base learns slowly.

varied_scenes asks 11 kinds, each a few times in 16 k-60 k scenes. Two skills stay weak after that
(experiments/tiny_recipe/README.md): finding an object by its *shape* and reading where it is (relations between
two objects, "left or right side"), and counting shapes. A drill asks one family only, up to three
questions per scene, on fresh varied scenes (sample_scene / draw):

    between              "Is the star to the left or to the right of the red circle?" / "... above or below ..."
                         (shortest unique names, as varied_scenes asks; centres >= 10 px apart on the axis)
    between_color        the same about objects named by a colour no other one has: "the red object"
    between_color_shape  the same, "the red star" where no other object is red
    relation             varied_scenes' relation kind: "Is the star to the left of the red circle?" (yes / no)
                         or "Which is further left, the star or the ring?"
    side                 "Is the star on the left or on the right side?" / "at the top or at the bottom?",
                         one per scene, about an object in an outer third
    count                "How many stars are there?", "How many red objects are there?" (2 of 3) or
                         "How many objects are there?" (varied_scenes' count and total kinds)

`python -m experiments.tiny_recipe.make_scenes --drill NAME` writes one; `refresh_base` trains a base on a mix of them.
Output: finetune.json and test.json (one question per held-out scene, gold in "answer", kind
"<drill> <n> objects") with images/, like varied_scenes without the captions. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments.tiny_recipe import varied_scenes
from experiments.tiny_recipe.varied_scenes import Scene, Thing
from llava_platform.data.synthetic import check_counts, conversation

__all__ = ["DRILLS", "color_name", "generate_drill", "objects_kind", "side_question"]

Question = tuple[str, str]  # (question, answer)


def objects_kind(objects: int) -> str:
    """A held-out record's kind by scene size: "1 object", "2 objects", ..."""
    return f"{objects} object" + ("s" if objects > 1 else "")


def color_name(scene: Scene, thing: Thing) -> str | None:
    """"red object" where no other object is red, else None."""
    return f"{thing.color} object" if varied_scenes.has_unique_color(scene, thing) else None


def color_shape_name(scene: Scene, thing: Thing) -> str | None:
    """"red star" where no other object is red, else None."""
    return f"{thing.color} {thing.shape}" if varied_scenes.has_unique_color(scene, thing) else None


NAMINGS: dict[str, Callable[[Scene, Thing], str | None]] = {
    "shortest": varied_scenes.unique_name,
    "color": color_name,
    "color_shape": color_shape_name,
}


def _named(scene: Scene, naming: str) -> list[tuple[Thing, str]]:
    """The objects this naming can name alone, with their names."""
    return [(t, n) for t in scene.things if (n := NAMINGS[naming](scene, t))]


def side_question(rng: random.Random, scene: Scene, naming: str = "shortest") -> Question | None:
    """About a named object in the left / right (or top / bottom) third; None if the pick is in the middle one."""
    named = _named(scene, naming)
    if not named:
        return None
    thing, name = rng.choice(named)
    if rng.random() < 0.5:
        where = thing.cx / scene.width
        question, sides = f"Is the {name} on the left or on the right side?", ("left", "right")
    else:
        where = thing.cy / scene.height
        question, sides = f"Is the {name} at the top or at the bottom?", ("top", "bottom")
    if 1 / 3 <= where <= 2 / 3:
        return None
    return question, sides[where > 2 / 3]


def between_question(rng: random.Random, scene: Scene, naming: str) -> Question | None:
    """Where one named object is from another, along x or y; None when fewer than two are named or the
    centres are under 10 px apart on the drawn axis (no borderline answers)."""
    named = _named(scene, naming)
    if len(named) < 2:
        return None
    (a, name_a), (b, name_b) = rng.sample(named, 2)
    if rng.choice(["x", "y"]) == "x":
        offset, question, sides = a.cx - b.cx, f"Is the {name_a} to the left or to the right of the {name_b}?", ("left", "right")
    else:
        offset, question, sides = a.cy - b.cy, f"Is the {name_a} above or below the {name_b}?", ("above", "below")
    if abs(offset) < 10:
        return None
    return question, sides[offset > 0]


def count_question(rng: random.Random, scene: Scene) -> Question | None:
    return varied_scenes.ask(rng, rng.choice(["count", "count", "total"]), scene)


def relation_question(rng: random.Random, scene: Scene) -> Question | None:
    return varied_scenes.ask(rng, "relation", scene)


@dataclass(frozen=True)
class Drill:
    ask: Callable[[random.Random, Scene], Question | None]
    per_scene: int  # most distinct questions of a training scene
    tries: int  # draws of a question per training scene (a None or a repeat uses one up)


DRILLS = {
    "between": Drill(lambda rng, scene: between_question(rng, scene, "shortest"), per_scene=3, tries=8),
    "between_color": Drill(lambda rng, scene: between_question(rng, scene, "color"), per_scene=3, tries=8),
    "between_color_shape": Drill(lambda rng, scene: between_question(rng, scene, "color_shape"), per_scene=3, tries=8),
    "relation": Drill(relation_question, per_scene=3, tries=6),
    "side": Drill(side_question, per_scene=1, tries=1),
    "count": Drill(count_question, per_scene=3, tries=6),
}


def _training_questions(drill: Drill, rng: random.Random, scene: Scene) -> list[Question]:
    questions: list[Question] = []
    for _ in range(drill.tries):
        pair = drill.ask(rng, scene)
        if pair is not None and pair[0] not in [q for q, _ in questions]:
            questions.append(pair)
        if len(questions) == drill.per_scene:
            break
    return questions


def generate_drill(out_dir: str | Path, drill: str, num_train: int, num_test: int = 300, seed: int = 0) -> Path:
    """Writes out_dir/{finetune,test}.json and images/ (held-out scenes first); returns out_dir.
    Scenes the drill has no question for are drawn again, so the counts are exact."""
    if drill not in DRILLS:
        raise ValueError(f"unknown drill {drill!r}; drills: {', '.join(DRILLS)}")
    check_counts(num_train, num_test)
    spec, root, rng = DRILLS[drill], Path(out_dir), random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    test, finetune = [], []
    while len(test) < num_test:
        scene = varied_scenes.sample_scene(rng)
        if (pair := spec.ask(rng, scene)) is None:
            continue
        kind = f"{drill} {objects_kind(len(scene.things))}"
        test.append(varied_scenes.question_record(root, f"test_{len(test):05d}", scene, pair, kind, rng))
    while len(finetune) < num_train:
        scene = varied_scenes.sample_scene(rng)
        if not (questions := _training_questions(spec, rng, scene)):
            continue
        ident = f"train_{len(finetune):05d}"
        image = f"images/{ident}.png"
        varied_scenes.draw(scene, rng).save(root / image, compress_level=1)
        finetune.append({"id": ident, "image": image, "conversations": conversation(questions)})
    (root / "finetune.json").write_text(json.dumps(finetune, indent=1))
    (root / "test.json").write_text(json.dumps(test, indent=1))
    return root
