"""The tiny base's recipe, defined once: what `rebuild_base` runs and what jobs/assets/tiny-base/recipe.json states.

Six stages, each from the one before (the names are those of benchmarks/RESULTS.md's tables, which
have no v4):

    v1  jobs.demo on the demo's synthetic scenes (300 + 750 steps): the demo run's model
    v2  jobs.demo --base v1 on 16 k varied scenes (seed 0), 1500 + 3500 steps
    v3  jobs.demo --base v2 on 60 k varied scenes (seed 1), 1500 + 3500 steps, streamed (no encoded cache)
    v5  refresh_base from v3, 4000 steps on drills (relations by colour and by shape, sides) + 20 k of v3's scenes
    v6  refresh_base from v5, 8000 steps on more drills (relations, sides, counts) and 40 k fresh varied scenes
    v7  refresh_base from v6, 6000 steps on relations (both forms), counts, sides and 20 k fresh varied
        scenes; scored on the 220 held-out questions of varied seed 1: the shipped base

A dataset is a `Scenes`: its generator, seed and counts name its bytes (every generator is
deterministic for a seed), so a recipe that holds the same Scenes twice means the same folder.
`scaled(RECIPE, s)` shrinks every count and step by s (the tests dry-run the whole chain and run v5-v7 at s = 0.001);
`as_json(recipe)` is the form the record beside the weights holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experiments.tiny_recipe import varied_scenes
from experiments.tiny_recipe.drills import DRILLS, generate_drill
from llava_platform.data import synthetic

__all__ = ["Scenes", "Part", "DemoStage", "RefreshStage", "Stage", "RECIPE", "scaled", "as_json", "datasets", "check"]

GENERATORS = ("synthetic", "varied", *DRILLS)
LEAST_TRAIN, LEAST_TEST = 32, 4  # a scaled set: at least one global batch (32) to train on, a few questions to score


@dataclass(frozen=True)
class Scenes:
    """A generated dataset: `generator` is "synthetic" (llava_platform.data.synthetic, the demo's scenes, which
    jobs.demo draws itself with seed 0), "varied" (varied_scenes) or a drill's name (drills.DRILLS)."""

    generator: str
    seed: int
    num_train: int
    num_test: int

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown generator {self.generator!r}; generators: {', '.join(GENERATORS)}")

    @property
    def name(self) -> str:
        """Its folder's name under the build's data/: "varied_1", "between_21" (the README's names)."""
        return f"{self.generator}_{self.seed}"

    def write(self, folder: Path) -> Path:
        """Draws the set into `folder` (pretrain.json with captions for synthetic and varied, finetune.json,
        test.json, images/); returns the folder."""
        if self.generator == "synthetic":
            return synthetic.generate(folder, self.num_train, self.num_test, self.seed).root
        if self.generator == "varied":
            return varied_scenes.generate(folder, self.num_train, self.num_test, self.seed).root
        return generate_drill(folder, self.generator, self.num_train, self.num_test, self.seed)


@dataclass(frozen=True)
class Part:
    """Scenes pooled into a refresh: the first `take` training records (None: all of them)."""

    scenes: Scenes
    take: int | None = None


@dataclass(frozen=True)
class DemoStage:
    """`python -m jobs.demo [--data SCENES] [--base BASE] --export NAME pretrain:train.max_steps=P
    finetune:train.max_steps=F *overrides`: stage 1 then stage 2 of the shipped tiny specs, on Ray."""

    name: str
    base: str | None  # an earlier stage's name; None: random init (the tiny preset)
    scenes: Scenes  # "synthetic": jobs.demo draws them (--num-train / --num-test); else they are --data
    pretrain_steps: int
    finetune_steps: int
    overrides: tuple[str, ...] = ()  # more job-spec overrides, both stages

    def as_json(self) -> dict:
        return {"name": self.name, "run": "jobs.demo", "base": self.base, "data": [asdict(self.scenes)],
                "steps": {"pretrain": self.pretrain_steps, "finetune": self.finetune_steps}, "overrides": list(self.overrides)}  # fmt: skip


@dataclass(frozen=True)
class RefreshStage:
    """`refresh_base`: the stage 2 recipe (tiny_finetune.yaml's train section) for `steps` optimizer steps, in
    one process, on the parts pooled and shuffled; scored on `held_out`'s test questions when set."""

    name: str
    base: str
    steps: int
    parts: tuple[Part, ...]
    held_out: Scenes | None = None

    def as_json(self) -> dict:
        data = [{**asdict(part.scenes), "take": part.take} for part in self.parts]
        held_out = asdict(self.held_out) if self.held_out else None
        return {"name": self.name, "run": "experiments.tiny_recipe.refresh_base", "base": self.base, "data": data,
                "steps": self.steps, "held_out": held_out}  # fmt: skip


Stage = DemoStage | RefreshStage


def _drill(name: str, seed: int, num_train: int) -> Scenes:
    return Scenes(name, seed, num_train, 300)


def _varied(seed: int, num_train: int = 20_000) -> Scenes:
    return Scenes("varied", seed, num_train, 220)


VARIED_1 = _varied(1, 60_000)  # v3's scenes; 20 k of them again in v5; its 220 held-out questions score v7
BETWEEN_COLOR_5, BETWEEN_COLOR_SHAPE_6 = _drill("between_color", 5, 10_000), _drill("between_color_shape", 6, 10_000)

RECIPE: tuple[Stage, ...] = (
    DemoStage("v1", None, Scenes("synthetic", 0, 6800, 200), pretrain_steps=300, finetune_steps=750),
    DemoStage("v2", "v1", _varied(0, 16_000), pretrain_steps=1500, finetune_steps=3500),
    DemoStage("v3", "v2", VARIED_1, pretrain_steps=1500, finetune_steps=3500, overrides=("data.cache_encoded=false",)),
    RefreshStage("v5", "v3", 4000, (Part(BETWEEN_COLOR_5), Part(BETWEEN_COLOR_SHAPE_6), Part(_drill("between", 5, 10_000)),
                                    Part(_drill("side", 11, 30_000)), Part(VARIED_1, take=20_000))),
    RefreshStage("v6", "v5", 8000, (Part(_drill("between", 8, 20_000)), Part(_drill("between", 13, 20_000)),
                                    Part(_drill("side", 12, 20_000)), Part(_drill("side", 14, 20_000)),
                                    Part(_drill("count", 9, 15_000)), Part(_drill("count", 15, 20_000)),
                                    Part(_varied(3)), Part(_varied(4)), Part(BETWEEN_COLOR_5), Part(BETWEEN_COLOR_SHAPE_6))),
    RefreshStage("v7", "v6", 6000, (Part(_drill("between", 21, 20_000)), Part(_drill("relation", 25, 20_000)),
                                    Part(_drill("count", 22, 20_000)), Part(_drill("side", 23, 10_000)),
                                    Part(_drill("between_color", 24, 10_000)), Part(_varied(5))), held_out=VARIED_1),
)  # fmt: skip


def _shrink(n: int, scale: float, least: int) -> int:
    """ceil(n * scale), at least `least` (never more than n): scale 1 keeps every number as it is."""
    return min(n, max(least, math.ceil(n * scale)))


def scaled(recipe: tuple[Stage, ...], scale: float) -> tuple[Stage, ...]:
    """The same chain with every count and step multiplied by `scale` (0 < scale <= 1), rounded up, so a
    test runs it end to end in minutes; a part's `take` stays within its shrunk set."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}: 1 is the recipe as recorded, 0.001 a smoke run")

    def shrink(s: Scenes) -> Scenes:
        return replace(s, num_train=_shrink(s.num_train, scale, LEAST_TRAIN), num_test=_shrink(s.num_test, scale, LEAST_TEST))

    def steps(n: int) -> int:
        return _shrink(n, scale, 1)

    out: list[Stage] = []
    for stage in recipe:
        if isinstance(stage, DemoStage):
            out.append(replace(stage, scenes=shrink(stage.scenes), pretrain_steps=steps(stage.pretrain_steps),
                               finetune_steps=steps(stage.finetune_steps)))  # fmt: skip
        else:
            parts = tuple(Part(shrink(p.scenes), None if p.take is None else min(shrink(p.scenes).num_train, _shrink(p.take, scale, 1)))
                          for p in stage.parts)  # fmt: skip
            held_out = shrink(stage.held_out) if stage.held_out else None
            out.append(replace(stage, steps=steps(stage.steps), parts=parts, held_out=held_out))
    return tuple(out)


def datasets(stage: Stage) -> list[Scenes]:
    """The sets a stage reads that the build draws (a demo's synthetic scenes it draws itself)."""
    if isinstance(stage, DemoStage):
        return [] if stage.scenes.generator == "synthetic" else [stage.scenes]
    return [p.scenes for p in stage.parts] + ([stage.held_out] if stage.held_out else [])


def as_json(recipe: tuple[Stage, ...]) -> list[dict]:
    """The recipe as the record beside the weights states it: one dict per stage (run, base, data, steps)."""
    return [stage.as_json() for stage in recipe]


def check(recipe: tuple[Stage, ...]) -> None:
    """Fail fast on a recipe that cannot run: a base that is not an earlier stage, one folder name for two sets,
    demo scenes on another seed than the 0 jobs.demo draws with, or a last stage with no held-out score to record."""
    if not (recipe and isinstance(recipe[-1], RefreshStage) and recipe[-1].held_out is not None):
        raise ValueError("the last stage must be a RefreshStage with held_out scenes: its score is the record's result")
    names: list[str] = []
    folders: dict[str, Scenes] = {}
    for stage in recipe:
        if isinstance(stage, DemoStage) and stage.scenes.generator == "synthetic" and stage.scenes.seed != 0:
            raise ValueError(f"stage {stage.name}: jobs.demo draws its synthetic scenes with seed 0, not {stage.scenes.seed}")
        if stage.base is not None and stage.base not in names:
            raise ValueError(f"stage {stage.name}: base {stage.base!r} is not an earlier stage ({', '.join(names) or 'none'})")
        names.append(stage.name)
        for scenes in datasets(stage):
            if folders.setdefault(scenes.name, scenes) != scenes:
                raise ValueError(f"stage {stage.name}: two sets named {scenes.name}: {folders[scenes.name]} and {scenes}")
