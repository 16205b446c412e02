"""Embedded panoptic demo data: the demo shapes (things) over a sky and a ground region (stuff), in the COCO
panoptic layout, generated (no downloads) and cached beside the other demo data::

    ROOT/{train,val}/NNNNN.png                          RGB scenes
    ROOT/annotations/panoptic_{train,val}.json          COCO panoptic: segments_info, categories with isthing
    ROOT/annotations/panoptic_{train,val}/NNNNN.png     segment ids as R + 256·G + 256²·B (0 = void, unused here)

Each scene is :func:`focalbench.data.demo.make_scene`'s shapes (1-3, pixel-disjoint) with the background replaced by
two stuff regions split by a random tilted horizon: a light, bluish "sky" gradient above and a darker, textured
"ground" below, colours drawn per scene. Each thing class is drawn in its own colour family (:data:`THING_HUES`:
hue ± 0.03, saturation 0.6-1, value 0.75-1, mildly shaded): telling the four shapes apart by outline alone takes the
tiny from-scratch demo model far longer than a few CPU minutes (``configs/demo_panoptic.yaml`` gives the figures), so
colour names the class and the outline still has to be segmented. Segment ids are ``1000 · category id + k`` (so
they use the G channel).
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from focalbench.data.demo import SHAPE_CLASSES, default_root, make_scene
from focalbench.data.panoptic_format import id_to_rgb

VERSION = "demo-panoptic-v3"  # v3: shapes drawn as on demo-v3 (a few differ); v2: a colour family per thing class
STUFF_CLASSES = ("sky", "ground")
CATEGORIES = [
    *({"id": k + 1, "name": name, "isthing": 1, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES)),
    *({"id": len(SHAPE_CLASSES) + k + 1, "name": name, "isthing": 0, "supercategory": "stuff"}
      for k, name in enumerate(STUFF_CLASSES)),
]  # fmt: skip
COUNTS = {"train": 400, "val": 60}
THING_HUES = (0.0, 0.33, 0.8, 0.15)  # circle red, square green, star magenta, triangle yellow


def _stuff_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with a sky above a tilted horizon and ground below, and the bool H×W "is sky" map."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = size * rng.uniform(0.3, 0.7) + rng.uniform(-0.3, 0.3) * (xx - size / 2)
    sky = yy < horizon
    top = np.array([rng.uniform(120, 190), rng.uniform(160, 210), rng.uniform(200, 250)], np.float32)
    sky_image = top + (yy / size)[..., None] * rng.uniform(10, 50)  # lighter towards the horizon
    ground_colour = np.array([rng.uniform(70, 140), rng.uniform(60, 130), rng.uniform(20, 70)], np.float32)
    freq, angle = rng.uniform(3, 10), rng.uniform(0, np.pi)
    texture = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) / size) * rng.uniform(8, 20)
    ground_image = ground_colour + texture[..., None]
    return np.where(sky[..., None], sky_image, ground_image), sky


def _thing_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    hue = (THING_HUES[label] + rng.uniform(-0.03, 0.03)) % 1.0
    return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)), np.float32)


def make_panoptic_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One scene: the RGB uint8 image, its H×W segment-id map and its ``segments_info``."""
    scene = make_scene(rng, image_size=size, task="panoptic")
    background, sky = _stuff_background(rng, size)
    image = background.copy()
    shapes = np.zeros((size, size), bool)
    for inst in scene.instances:
        shapes |= inst.mask
        ys, xs = np.nonzero(inst.mask)
        shade = rng.uniform(-0.6, 0.6, 2) @ np.stack([xs - xs.mean(), ys - ys.mean()])
        image[ys, xs] = _thing_colour(rng, inst.label) + shade[:, None]
    image = image + rng.normal(0, rng.uniform(3, 8), background.shape)
    ids = np.zeros((size, size), np.int64)
    info = []
    stuff_base = len(SHAPE_CLASSES) + 1
    for k, region in enumerate((sky & ~shapes, ~sky & ~shapes)):
        if region.any():
            info.append({"id": 1000 * (stuff_base + k) + 1, "category_id": stuff_base + k, "iscrowd": 0})
            ids[region] = info[-1]["id"]
    for k, inst in enumerate(scene.instances):
        info.append({"id": 1000 * (inst.label + 1) + k + 1, "category_id": inst.label + 1, "iscrowd": 0})
        ids[inst.mask] = info[-1]["id"]
    for segment in info:
        ys, xs = np.nonzero(ids == segment["id"])
        segment["area"] = int(len(ys))
        segment["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return np.clip(image, 0, 255).round().astype(np.uint8), ids, info


Scene = tuple[np.ndarray, np.ndarray, list[dict]]  # image, segment-id map, segments_info


def write_coco_panoptic(
    root: str | os.PathLike, splits: dict[str, list[Scene]], categories: list[dict], year: str = ""
) -> Path:
    """Write scenes in the COCO panoptic layout: ``{split}{year}/NNNNN.png`` images,
    ``annotations/panoptic_{split}{year}/NNNNN.png`` id PNGs and ``annotations/panoptic_{split}{year}.json``
    (written last, per split)."""
    root = Path(root)
    for split, scenes in splits.items():
        name = f"{split}{year}"
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"panoptic_{name}").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index, (image, ids, info) in enumerate(scenes):
            file_name = f"{index:05d}.png"
            Image.fromarray(image).save(root / name / file_name)
            Image.fromarray(id_to_rgb(ids)).save(root / "annotations" / f"panoptic_{name}" / file_name)
            images.append({"id": index + 1, "file_name": file_name, "width": ids.shape[1], "height": ids.shape[0]})
            annotations.append({"image_id": index + 1, "file_name": file_name, "segments_info": info})
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"panoptic_{name}.json").write_text(json.dumps(data))
    return root


def generate_panoptic_demo(
    root: str | os.PathLike, size: int = 64, seed: int = 0, counts: dict[str, int] | None = None
) -> Path:
    """Write the panoptic demo data (``counts`` scenes per split, :data:`COUNTS` by default) under ``root``."""
    counts = counts or COUNTS
    splits = {
        split: [make_panoptic_scene(np.random.default_rng([seed, 7, k, index]), size) for index in range(count)]
        for k, (split, count) in enumerate(counts.items())
    }
    return write_coco_panoptic(root, splits, CATEGORIES)


def panoptic_demo_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The panoptic demo data beside the other demo data (``$FOCALBENCH_CACHE/demo-panoptic-v1``), generated on
    first use (a few seconds) in a temporary folder and renamed into place, so a concurrent or interrupted build
    never leaves a half-written set."""
    root = default_root(cache_dir).parent / VERSION
    if (root / "annotations" / "panoptic_val.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}.tmp-", dir=root.parent))
    try:
        generate_panoptic_demo(tmp)
        tmp.chmod(0o755)
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "annotations" / "panoptic_val.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
