#!/usr/bin/env python3
"""A fourth synthetic LLaVA dataset, written blind: a helper that never saw this repository wrote it
(stdlib + Pillow only) as a sealed check of what the tiny base transfers to; it was opened only after
the bases were scored on it (benchmarks/RESULTS.md, fifth session).

    python -m experiments.tiny_recipe.transfer_sets.sealed_scenes --out runs/sealed --num-train 4000 --num-test 200 --seed 0
    python -m jobs.demo --data runs/sealed --base jobs/assets/tiny-base --out runs/sealed_demo

Writes DIR/images/*.png, DIR/finetune.json (1-4 turns per image) and DIR/test.json (one turn per
image, with "answer" and "kind" fields); no pretrain.json (no captions). Deterministic for a seed.
"""
import argparse
import hashlib
import json
import math
import os
import random

from PIL import Image, ImageDraw

IMG = 128          # output side in pixels
SS = 4             # supersampling factor for anti-aliased edges
MIN_SIZE = 26      # smallest object extent (~19.5 px at 96x96)
MAX_SIZE = 44
GAP = 6            # minimum free space between objects
MARGIN = 4         # minimum distance from image border

COLORS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 10),
    "yellow": (235, 205, 0),
    "green": (30, 150, 55),
    "blue": (35, 75, 215),
    "purple": (135, 50, 175),
}
SHAPES = ["circle", "square", "triangle", "star"]
PLURAL = {"circle": "circles", "square": "squares",
          "triangle": "triangles", "star": "stars"}
BACKGROUNDS = [(255, 255, 255), (236, 236, 236), (246, 241, 228),
               (228, 236, 246), (234, 244, 232)]

KINDS = ["color", "shape", "count", "position", "presence"]
MAX_OBJECTS = 6
NUMBER = {i: str(i) for i in range(0, 10)}


# ----------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------

def make_scene(rng, n=None):
    """Random non-overlapping scene with unique (color, shape) pairs."""
    if n is None:
        n = rng.randint(1, MAX_OBJECTS)
    for _ in range(200):
        pairs = [(c, s) for c in COLORS for s in SHAPES]
        rng.shuffle(pairs)
        objs = []
        ok = True
        for color, shape in pairs[:n]:
            placed = False
            for _ in range(100):
                hi = MAX_SIZE if n <= 4 else MAX_SIZE - 8
                size = rng.randint(MIN_SIZE, hi)
                r = size / 2.0
                x = rng.uniform(MARGIN + r, IMG - MARGIN - r)
                y = rng.uniform(MARGIN + r, IMG - MARGIN - r)
                if all(math.hypot(x - o["x"], y - o["y"]) >= r + o["r"] + GAP
                       for o in objs):
                    objs.append({"color": color, "shape": shape, "x": x,
                                 "y": y, "r": r})
                    placed = True
                    break
            if not placed:
                ok = False
                break
        if ok:
            bg = rng.randrange(len(BACKGROUNDS))
            return {"bg": bg, "objects": objs}
    raise RuntimeError("could not place objects")


def _star_points(cx, cy, r):
    pts = []
    inner = r * 0.48
    for i in range(10):
        ang = -math.pi / 2 + i * math.pi / 5
        rad = r if i % 2 == 0 else inner
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def render(scene):
    W = IMG * SS
    img = Image.new("RGB", (W, W), BACKGROUNDS[scene["bg"]])
    d = ImageDraw.Draw(img)
    for o in scene["objects"]:
        cx, cy, r = o["x"] * SS, o["y"] * SS, o["r"] * SS
        col = COLORS[o["color"]]
        if o["shape"] == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif o["shape"] == "square":
            h = r * 0.8
            d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=col)
        elif o["shape"] == "triangle":
            # upward triangle inscribed in the object's bounding circle
            pts = [(cx, cy - r * 0.97),
                   (cx - r * 0.84, cy + r * 0.52),
                   (cx + r * 0.84, cy + r * 0.52)]
            d.polygon(pts, fill=col)
        elif o["shape"] == "star":
            d.polygon(_star_points(cx, cy, r), fill=col)
    return img.resize((IMG, IMG), Image.LANCZOS)


# ----------------------------------------------------------------------------
# Questions: each generator returns a list of (question, answer) candidates
# that are unambiguous for the scene.
# ----------------------------------------------------------------------------

def desc(o):
    return "the %s %s" % (o["color"], o["shape"])


def q_color(scene, rng):
    objs = scene["objects"]
    out = []
    for o in objs:
        if sum(p["shape"] == o["shape"] for p in objs) == 1:
            s = o["shape"]
            for t in ("What color is the %s?", "What is the color of the %s?",
                      "Which color does the %s have?"):
                out.append((t % s, o["color"]))
    return out


def q_shape(scene, rng):
    objs = scene["objects"]
    out = []
    for o in objs:
        if sum(p["color"] == o["color"] for p in objs) == 1:
            c = o["color"]
            for t in ("What shape is the %s object?",
                      "What is the shape of the %s object?",
                      "Which shape is %s?"):
                out.append((t % c, o["shape"]))
    return out


def q_count(scene, rng):
    objs = scene["objects"]
    n = len(objs)
    out = [("How many objects are there?", NUMBER[n]),
           ("How many shapes are in the picture?", NUMBER[n])]
    for s in SHAPES:
        k = sum(o["shape"] == s for o in objs)
        if k >= 1:
            out.append(("How many %s are there?" % PLURAL[s], NUMBER[k]))
    for c in COLORS:
        k = sum(o["color"] == c for o in objs)
        if k >= 1:
            out.append(("How many %s objects are there?" % c, NUMBER[k]))
    return out


def q_position(scene, rng):
    objs = scene["objects"]
    out = []
    for a in objs:
        for b in objs:
            if a is b:
                continue
            dx = b["x"] - a["x"]
            dy = b["y"] - a["y"]
            # require a clear gap: the objects' extents do not overlap on the axis
            if abs(dx) > a["r"] + b["r"]:
                ans = "left" if dx > 0 else "right"
                out.append(("Is %s to the left or to the right of %s?"
                            % (desc(a), desc(b)), ans))
            if abs(dy) > a["r"] + b["r"]:
                ans = "above" if dy > 0 else "below"
                out.append(("Is %s above or below %s?" % (desc(a), desc(b)),
                            ans))
    return out


def q_presence(scene, rng):
    objs = scene["objects"]
    present = {(o["color"], o["shape"]) for o in objs}
    shapes = {o["shape"] for o in objs}
    colors = {o["color"] for o in objs}
    out = []
    for c in COLORS:
        for s in SHAPES:
            a = "yes" if (c, s) in present else "no"
            out.append(("Is there a %s %s in the image?" % (c, s), a))
    for s in SHAPES:
        out.append(("Is there a %s?" % s, "yes" if s in shapes else "no"))
    for c in COLORS:
        out.append(("Is anything %s?" % c, "yes" if c in colors else "no"))
    return out


GENERATORS = {"color": q_color, "shape": q_shape, "count": q_count,
              "position": q_position, "presence": q_presence}

ANSWERS = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "count": [NUMBER[i] for i in range(1, MAX_OBJECTS + 1)],
    "position": ["left", "right", "above", "below"],
    "presence": ["yes", "no"],
}


def pick_balanced(cands, rng):
    """Choose an answer uniformly among those available, then a question."""
    by_ans = {}
    for q, a in cands:
        by_ans.setdefault(a, []).append((q, a))
    ans = rng.choice(sorted(by_ans))
    return rng.choice(by_ans[ans])


# ----------------------------------------------------------------------------
# Dataset assembly
# ----------------------------------------------------------------------------

def img_hash(img):
    return hashlib.sha1(img.tobytes()).hexdigest()


def save(img, out, iid):
    rel = "images/%s.png" % iid
    img.save(os.path.join(out, rel))
    return rel


def build_test(rng, num, out, seen):
    # balanced kinds, and balanced answers within each kind
    kinds = [KINDS[i % len(KINDS)] for i in range(num)]
    rng.shuffle(kinds)
    targets = {}
    for k in KINDS:
        cnt = kinds.count(k)
        vocab = ANSWERS[k]
        lst = [vocab[i % len(vocab)] for i in range(cnt)]
        rng.shuffle(lst)
        targets[k] = lst
    recs = []
    for i, kind in enumerate(kinds):
        want = targets[kind].pop()
        for _ in range(100000):
            if kind == "count":
                scene = make_scene(rng, n=rng.randint(max(1, int(want)), MAX_OBJECTS))
            else:
                scene = make_scene(rng)
            cands = [c for c in GENERATORS[kind](scene, rng) if c[1] == want]
            if not cands:
                continue
            img = render(scene)
            h = img_hash(img)
            if h in seen:
                continue
            seen.add(h)
            break
        else:
            raise RuntimeError("could not satisfy %s=%s" % (kind, want))
        q, a = rng.choice(cands)
        iid = "sealed_test_%05d" % i
        rel = save(img, out, iid)
        recs.append({"id": iid, "image": rel,
                     "conversations": [{"from": "human", "value": "<image>\n" + q},
                                       {"from": "gpt", "value": a}],
                     "answer": a, "kind": kind})
    return recs


def build_train(rng, num, out, seen):
    recs = []
    i = 0
    while len(recs) < num:
        scene = make_scene(rng)
        img = render(scene)
        h = img_hash(img)
        if h in seen:
            continue
        seen.add(h)
        nturns = rng.randint(1, 4)
        kinds = KINDS[:]
        rng.shuffle(kinds)
        conv = []
        asked = set()
        for kind in kinds:
            if len(conv) // 2 >= nturns:
                break
            cands = [c for c in GENERATORS[kind](scene, rng) if c[0] not in asked]
            if not cands:
                continue
            q, a = pick_balanced(cands, rng)
            asked.add(q)
            prefix = "<image>\n" if not conv else ""
            conv.append({"from": "human", "value": prefix + q})
            conv.append({"from": "gpt", "value": a})
        iid = "sealed_train_%05d" % i
        i += 1
        rel = save(img, out, iid)
        recs.append({"id": iid, "image": rel, "conversations": conv})
    return recs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-train", type=int, default=4000)
    ap.add_argument("--num-test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    seen = set()
    # separate streams so test content does not depend on --num-train
    test = build_test(random.Random("test-%d" % args.seed), args.num_test,
                      args.out, seen)
    train = build_train(random.Random("train-%d" % args.seed), args.num_train,
                        args.out, seen)
    with open(os.path.join(args.out, "finetune.json"), "w") as f:
        json.dump(train, f, indent=1)
    with open(os.path.join(args.out, "test.json"), "w") as f:
        json.dump(test, f, indent=1)
    print("wrote %d train, %d test records to %s"
          % (len(train), len(test), args.out))


if __name__ == "__main__":
    main()
