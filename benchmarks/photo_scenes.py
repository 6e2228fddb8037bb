"""Photo-like multi-label scenes in MS-COCO's and Pascal VOC's layouts.

The default data (Fashion-MNIST outfits) and the shapes CSV are small, square and clean.
Users bring photos: colour JPEGs of many sizes, objects small and large anywhere in the
frame, clutter, and labels that come in contexts. This script draws such a set (no
download) and writes it the way the users' data comes:

    .venv/bin/python benchmarks/photo_scenes.py --out runs/photo --train 2000 --val 500 --test 1000

    OUT/coco/{train,val,test}/*.jpg + OUT/coco/annotations/instances_{split}.json
    OUT/voc/JPEGImages/*.jpg + OUT/voc/Annotations/*.xml + OUT/voc/ImageSets/Main/{split}.txt

then convert with ``cnnrnn data from-coco --annotations OUT/coco/annotations/instances_train.json
--images OUT/coco/train --out DATA/train`` (or ``from-voc --root OUT/voc --split train``).

A scene: an image of 120-400 x 100-360 pixels, a two-tone background (sky and ground
colours drawn per scene, a soft horizon, low-frequency colour noise and grain), 0-4
grey or brown clutter blobs that are not labels, and 1-5 objects of 12 categories
drawn with varying size (6-35 % of the short side), position, colour and outline.
A scene follows one of four contexts, so labels depend on each other:

    context   objects (each present with its probability)
    --------  ------------------------------------------------------
    street    house 0.7, car 0.7, person 0.6, tree 0.4, ball 0.1
    beach     boat 0.7, sun 0.6, person 0.4, kite 0.4, fish 0.3
    park      tree 0.8, flower 0.6, person 0.5, ball 0.4, bird 0.4
    sky       sun 0.5, cloud 0.8, bird 0.6, kite 0.5, plane 0.5

plus, with probability 0.15, one object of another context. Object bounding boxes
go into the annotations (COCO ``bbox``, VOC ``bndbox``). Everything comes from
``numpy.random.default_rng([seed, split])``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, List, Tuple
from xml.sax.saxutils import escape

import numpy as np

CONTEXTS: Dict[str, Tuple[Tuple[str, float], ...]] = {
    "street": (("house", 0.7), ("car", 0.7), ("person", 0.6), ("tree", 0.4), ("ball", 0.1)),
    "beach": (("boat", 0.7), ("sun", 0.6), ("person", 0.4), ("kite", 0.4), ("fish", 0.3)),
    "park": (("tree", 0.8), ("flower", 0.6), ("person", 0.5), ("ball", 0.4), ("bird", 0.4)),
    "sky": (("sun", 0.5), ("cloud", 0.8), ("bird", 0.6), ("kite", 0.5), ("plane", 0.5)),
}
CATEGORIES = sorted({name for items in CONTEXTS.values() for name, _ in items})
OFF_CONTEXT = 0.15
MAX_OBJECTS = 5
SPLITS = ("train", "val", "test")
# (sky, ground) base colours per context; jittered per scene.
BACKGROUNDS = {"street": ((150, 170, 190), (110, 110, 115)), "beach": ((120, 180, 235), (225, 205, 150)),
               "park": ((140, 190, 230), (90, 150, 70)), "sky": ((90, 150, 225), (170, 200, 235))}


def sample_scene(rng: np.random.Generator) -> Tuple[str, List[str]]:
    while True:
        context = str(rng.choice(list(CONTEXTS)))
        names = [n for n, p in CONTEXTS[context] if rng.random() < p]
        if rng.random() < OFF_CONTEXT:
            others = [n for n in CATEGORIES if n not in names]
            names.append(str(rng.choice(others)))
        if names:
            return context, names[:MAX_OBJECTS]


def _jitter(rng, colour, amount=30):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(rng, width, height, context):
    sky, ground = (np.array(_jitter(rng, c, 35), np.float32) for c in BACKGROUNDS[context])
    horizon = rng.uniform(0.35, 0.7) * height
    y = np.arange(height, dtype=np.float32)[:, None, None]
    t = 1.0 / (1.0 + np.exp(-(y - horizon) / rng.uniform(3, 15)))
    img = (1 - t) * sky + t * ground
    img = np.broadcast_to(img, (height, width, 3)).copy()
    # low-frequency colour noise: a coarse random grid upsampled
    gh, gw = 4 + int(rng.integers(0, 4)), 4 + int(rng.integers(0, 4))
    coarse = rng.normal(0, 14, (gh, gw, 3)).astype(np.float32)
    yi = np.linspace(0, gh - 1, height)
    xi = np.linspace(0, gw - 1, width)
    y0, x0 = np.floor(yi).astype(int), np.floor(xi).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    wy, wx = (yi - y0)[:, None, None], (xi - x0)[None, :, None]
    smooth = ((1 - wy) * ((1 - wx) * coarse[y0][:, x0] + wx * coarse[y0][:, x1])
              + wy * ((1 - wx) * coarse[y1][:, x0] + wx * coarse[y1][:, x1]))
    img += smooth + rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(draw, rng, name, cx, cy, s, colour):
    """Draws object ``name`` centred at (cx, cy) with size s (pixels); returns its box."""
    dark = tuple(max(0, c - 90) for c in colour)
    line = max(1, int(s / 14))
    if name == "sun":
        r = s * 0.3
        for k in range(10):
            a = 2 * math.pi * k / 10
            draw.line([cx + r * 1.2 * math.cos(a), cy + r * 1.2 * math.sin(a),
                       cx + r * 1.7 * math.cos(a), cy + r * 1.7 * math.sin(a)],
                      fill=(250, 210, 40), width=line)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(252, 220, 60))
        return cx - r * 1.7, cy - r * 1.7, cx + r * 1.7, cy + r * 1.7
    if name == "cloud":
        w, h = s * 0.9, s * 0.45
        for dx, dy, rr in ((-0.25, 0.05, 0.22), (0.0, -0.08, 0.28), (0.25, 0.05, 0.22)):
            r = rr * w
            draw.ellipse([cx + dx * w - r, cy + dy * w - r * 0.8, cx + dx * w + r, cy + dy * w + r * 0.8],
                         fill=_jitter(rng, (245, 245, 250), 8))
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if name == "tree":
        w, h = s * 0.6, s
        draw.rectangle([cx - w * 0.08, cy, cx + w * 0.08, cy + h / 2], fill=(110, 75, 40))
        draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h * 0.15], fill=_jitter(rng, (40, 130, 50), 25))
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if name == "house":
        w, h = s * 0.8, s * 0.5
        draw.rectangle([cx - w / 2, cy - h * 0.1, cx + w / 2, cy + h / 2], fill=colour, outline=dark, width=line)
        draw.polygon([(cx - w * 0.6, cy - h * 0.1), (cx + w * 0.6, cy - h * 0.1), (cx, cy - h * 0.75)],
                     fill=_jitter(rng, (170, 50, 40), 25))
        draw.rectangle([cx - w * 0.1, cy + h * 0.15, cx + w * 0.1, cy + h / 2], fill=dark)
        return cx - w * 0.6, cy - h * 0.75, cx + w * 0.6, cy + h / 2
    if name == "car":
        w, h = s, s * 0.35
        draw.rectangle([cx - w / 2, cy - h * 0.2, cx + w / 2, cy + h * 0.35], fill=colour)
        draw.polygon([(cx - w * 0.3, cy - h * 0.2), (cx - w * 0.15, cy - h * 0.7),
                      (cx + w * 0.2, cy - h * 0.7), (cx + w * 0.35, cy - h * 0.2)], fill=colour)
        for wx in (-0.3, 0.3):
            r = h * 0.28
            draw.ellipse([cx + wx * w - r, cy + h * 0.35 - r, cx + wx * w + r, cy + h * 0.35 + r],
                         fill=(30, 30, 30))
        return cx - w / 2, cy - h * 0.7, cx + w / 2, cy + h * 0.63
    if name == "boat":
        w, h = s, s * 0.8
        draw.polygon([(cx - w / 2, cy + h * 0.1), (cx + w / 2, cy + h * 0.1),
                      (cx + w * 0.35, cy + h * 0.35), (cx - w * 0.35, cy + h * 0.35)], fill=colour)
        draw.line([cx, cy + h * 0.1, cx, cy - h * 0.5], fill=(60, 40, 30), width=line)
        draw.polygon([(cx + line, cy - h * 0.45), (cx + line, cy + h * 0.02), (cx + w * 0.35, cy + h * 0.02)],
                     fill=(245, 245, 240))
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h * 0.35
    if name == "person":
        h = s
        r = h * 0.11
        draw.ellipse([cx - r, cy - h / 2, cx + r, cy - h / 2 + 2 * r], fill=(230, 185, 150))
        draw.rectangle([cx - h * 0.12, cy - h / 2 + 2 * r, cx + h * 0.12, cy + h * 0.1], fill=colour)
        draw.line([cx - h * 0.06, cy + h * 0.1, cx - h * 0.12, cy + h / 2], fill=(40, 40, 80), width=line + 1)
        draw.line([cx + h * 0.06, cy + h * 0.1, cx + h * 0.12, cy + h / 2], fill=(40, 40, 80), width=line + 1)
        return cx - h * 0.15, cy - h / 2, cx + h * 0.15, cy + h / 2
    if name == "ball":
        r = s * 0.2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=dark, width=line)
        draw.arc([cx - r, cy - r * 0.4, cx + r, cy + r * 0.4], 0, 180, fill=dark, width=line)
        return cx - r, cy - r, cx + r, cy + r
    if name == "flower":
        h = s * 0.7
        draw.line([cx, cy, cx, cy + h / 2], fill=(40, 140, 40), width=line + 1)
        r = h * 0.13
        for k in range(6):
            a = 2 * math.pi * k / 6
            px, py = cx + 1.6 * r * math.cos(a), cy + 1.6 * r * math.sin(a)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 220, 50))
        return cx - 2.6 * r, cy - 2.6 * r, cx + 2.6 * r, cy + h / 2
    if name == "fish":
        w, h = s * 0.7, s * 0.3
        draw.ellipse([cx - w / 2, cy - h / 2, cx + w * 0.25, cy + h / 2], fill=colour)
        draw.polygon([(cx + w * 0.2, cy), (cx + w / 2, cy - h / 2), (cx + w / 2, cy + h / 2)], fill=colour)
        draw.ellipse([cx - w * 0.35, cy - h * 0.15, cx - w * 0.25, cy - h * 0.05], fill=(0, 0, 0))
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if name == "bird":
        w = s * 0.5
        draw.line([cx - w / 2, cy - w * 0.2, cx, cy + w * 0.1, cx + w / 2, cy - w * 0.2],
                  fill=(35, 35, 40), width=line + 1, joint="curve")
        return cx - w / 2, cy - w * 0.25, cx + w / 2, cy + w * 0.15
    if name == "kite":
        w, h = s * 0.4, s * 0.6
        draw.polygon([(cx, cy - h / 2), (cx + w / 2, cy - h * 0.1), (cx, cy + h * 0.25),
                      (cx - w / 2, cy - h * 0.1)], fill=colour, outline=dark)
        draw.line([cx, cy + h * 0.25, cx - w * 0.2, cy + h / 2], fill=(60, 60, 60), width=1)
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if name == "plane":
        w = s
        draw.ellipse([cx - w / 2, cy - w * 0.07, cx + w / 2, cy + w * 0.07], fill=(215, 215, 225))
        draw.polygon([(cx - w * 0.1, cy), (cx + w * 0.1, cy), (cx - w * 0.05, cy + w * 0.3),
                      (cx - w * 0.2, cy + w * 0.3)], fill=(190, 190, 205))
        draw.polygon([(cx + w * 0.35, cy), (cx + w * 0.48, cy), (cx + w * 0.5, cy - w * 0.2)],
                     fill=(190, 190, 205))
        return cx - w / 2, cy - w * 0.2, cx + w / 2, cy + w * 0.3
    raise ValueError(name)


def render(rng: np.random.Generator, context: str, names: List[str]):
    """(JPEG-ready PIL image, [(name, (x, y, w, h))])."""
    from PIL import Image, ImageDraw

    width, height = int(rng.integers(120, 401)), int(rng.integers(100, 361))
    img = Image.fromarray(_background(rng, width, height, context))
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    for _ in range(int(rng.integers(0, 5))):  # clutter that is not a label
        r = rng.uniform(0.04, 0.12) * short
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        draw.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6],
                     fill=_jitter(rng, (120, 105, 90) if rng.random() < 0.5 else (128, 128, 128), 25))
    boxes = []
    for name in names:
        s = rng.uniform(0.18, 0.45) * short * (0.75 if name in ("bird", "ball") else 1.0)
        cx = rng.uniform(0.1, 0.9) * width
        cy = rng.uniform(0.12, 0.88) * height
        colour = tuple(int(c) for c in rng.integers(30, 240, 3))
        x0, y0, x1, y1 = _draw(draw, rng, name, cx, cy, s, colour)
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(width), x1), min(float(height), y1)
        boxes.append((name, (round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1))))
    return img, boxes


def write(out: str, counts: Dict[str, int], seed: int = 0) -> None:
    coco = os.path.join(out, "coco")
    voc = os.path.join(out, "voc")
    os.makedirs(os.path.join(coco, "annotations"), exist_ok=True)
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(CATEGORIES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    image_id = 0
    for split_index, split in enumerate(SPLITS):
        n = counts.get(split, 0)
        if not n:
            continue
        rng = np.random.default_rng([seed, split_index])
        folder = os.path.join(coco, split)
        os.makedirs(folder, exist_ok=True)
        images, annotations, names_list = [], [], []
        for i in range(n):
            image_id += 1
            context, names = sample_scene(rng)
            img, boxes = render(rng, context, names)
            stem = f"{split}_{i:06d}"
            quality = int(rng.integers(75, 96))
            img.save(os.path.join(folder, stem + ".jpg"), quality=quality)
            img.save(os.path.join(voc, "JPEGImages", stem + ".jpg"), quality=quality)
            images.append({"id": image_id, "file_name": stem + ".jpg",
                           "width": img.width, "height": img.height})
            for name, (x, y, w, h) in boxes:
                annotations.append({"id": len(annotations) + 1 + image_id * 100, "image_id": image_id,
                                    "category_id": cat_id[name], "bbox": [x, y, w, h],
                                    "area": round(w * h, 1), "iscrowd": 0})
            objects = "".join(
                f"<object><name>{escape(name)}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{int(x) + 1}</xmin><ymin>{int(y) + 1}</ymin>"
                f"<xmax>{int(x + w)}</xmax><ymax>{int(y + h)}</ymax></bndbox></object>"
                for name, (x, y, w, h) in boxes)
            with open(os.path.join(voc, "Annotations", stem + ".xml"), "w") as f:
                f.write(f"<annotation><filename>{stem}.jpg</filename><size><width>{img.width}"
                        f"</width><height>{img.height}</height><depth>3</depth></size>"
                        f"{objects}</annotation>\n")
            names_list.append(stem)
        with open(os.path.join(coco, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(names_list) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.seed)
    print(f"wrote {args.train}/{args.val}/{args.test} scenes to {args.out}/coco and {args.out}/voc")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
