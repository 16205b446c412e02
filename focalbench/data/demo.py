"""The embedded demo data: coloured shapes on textured backgrounds, generated (no downloads) for all three tasks.

One generator (:func:`make_scene`) draws a scene: a muted background (a colour gradient, sinusoidal stripes at a
random angle and frequency) with non-overlapping shapes of random saturated colour (mildly shaded), size, position
and rotation, plus Gaussian noise over everything, and returns the image with its instances (class, box, mask,
polygon). Every shape is a polygon (a circle has 32 vertices) rasterised by pycocotools, so the masks, boxes and
COCO polygons agree exactly. Shapes never share a pixel (a 1-pixel gap is kept); their *boxes* may overlap. Each
scene has its own random stream, ``default_rng([seed, task, split, index])``, so the data is deterministic and a
scene does not depend on the counts.

:func:`generate_demo` writes the scenes in the layouts users have, so the tasks' ordinary loaders read them::

    ROOT/manifest.json                                 version, seed, image size, classes, counts (written last)
    ROOT/classification/{train,val}/{class}/NNNNN.png  image folders; one large shape, label = its class
    ROOT/segmentation/images/{train,val}/NNNNN.png     RGB, 1-3 shapes
    ROOT/segmentation/masks/{train,val}/NNNNN.png      uint8 "L": 0 = background, k = SHAPE_CLASSES[k - 1]
    ROOT/segmentation/classes.txt                      SEGMENTATION_CLASSES, one per line (background first)
    ROOT/detection/{train,val}/NNNNN.png               RGB, 1-4 shapes; every 20th image (index 0, 20, …) has none
    ROOT/detection/annotations/instances_{train,val}.json   COCO: category ids 1..K, bbox xywh, polygon segmentation

Background is a real class (0) in segmentation, nothing is ignored (255 does not occur). :func:`demo_root` builds
the data once into ``$FOCALBENCH_CACHE/VERSION`` (default ``~/.cache/focalbench/demo-v4``): it writes into a
temporary folder beside it and renames that into place, so an interrupted or concurrent build never leaves a
half-written data set. ``python -m focalbench.data.demo [--root DIR]`` does the same from the shell.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from focalbench.user_cache import cache_root

VERSION = "demo-v4"  # v4: larger segmentation shapes; v3: muted backgrounds (BACKGROUND_CHROMA); v2: 4000 cls images
BACKGROUND_CHROMA = 0.25  # v2 and before: 1.0
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "star", "triangle")  # sorted, as image folders order them
SEGMENTATION_CLASSES: tuple[str, ...] = ("background", *SHAPE_CLASSES)
SPLITS: tuple[str, ...] = ("train", "val")
TASKS: tuple[str, ...] = ("classification", "segmentation", "detection")
MANIFEST = "manifest.json"
# Training images per task. Classification gets 4000 (1000 a class): with 1000 the tiny demo FocalNet fits its
# training set and stays near 0.6 val top-1; with 4000 it reaches 0.9 in a similar number of steps.
DEFAULT_NUM_TRAIN = {"classification": 4000, "segmentation": 1000, "detection": 1000}
DEFAULT_NUM_VAL = 200
DETECTION_EMPTY_EVERY = 20  # detection images 0, 20, 40, … are background only

# (min shapes, max shapes, min radius, max radius) with radii as fractions of the image size. Segmentation's shapes
# are at least 0.15 (demo-v4; 0.11 before): at 64 px the demo UPerNet told the smallest third of the shapes apart
# poorly (pixels given their class, circles 0.65 and squares 0.29 against 0.97 and 0.90 for the largest third), and
# its 40-epoch recipe reached val mIoU 0.66 on these sizes against 0.54-0.62 on the old ones. About 1 scene in 10
# then has a shape fewer than drawn (no room left). The panoptic demo keeps the old sizes.
_LAYOUTS = {
    "classification": (1, 1, 0.22, 0.40),
    "segmentation": (1, 3, 0.15, 0.30),
    "panoptic": (1, 3, 0.11, 0.28),
    "detection": (1, 4, 0.09, 0.25),
}


@dataclass(frozen=True)
class Instance:
    """One shape: ``label`` indexes :data:`SHAPE_CLASSES`; ``box`` is xyxy in pixel edges (x2 = last column + 1);
    ``mask`` a bool H×W array; ``polygon`` the (V, 2) xy vertices it was rasterised from."""

    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray
    polygon: np.ndarray


@dataclass(frozen=True)
class Scene:
    """An RGB uint8 H×W×3 image and its shapes (pixel-disjoint)."""

    image: np.ndarray
    instances: list[Instance]

    def semantic_mask(self) -> np.ndarray:
        """uint8 H×W class map: 0 = background, ``label + 1`` under each shape (:data:`SEGMENTATION_CLASSES`)."""
        out = np.zeros(self.image.shape[:2], np.uint8)
        for inst in self.instances:
            out[inst.mask] = inst.label + 1
        return out


def shape_polygon(label: int, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) of shape ``SHAPE_CLASSES[label]`` with circumradius ``radius``, rotated by ``angle``."""
    name = SHAPE_CLASSES[label]
    if name == "circle":
        radii, count = np.array([radius]), 32
    elif name == "square":
        radii, count = np.array([radius]), 4
    elif name == "triangle":
        radii, count = np.array([radius]), 3
    elif name == "star":
        radii, count = np.array([radius, 0.45 * radius]), 10  # alternating outer / inner vertices
    else:
        raise ValueError(f"unknown shape {name!r}")
    theta = angle + 2 * np.pi * np.arange(count) / count
    r = np.resize(radii, count)
    xy = np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)
    # Rounded so that the polygon written to JSON rasterises to exactly this mask.
    return np.round(xy, 2)


def rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool mask of a polygon, rasterised the way COCO tools rasterise ``segmentation`` polygons."""
    rle = mask_utils.frPyObjects([polygon.ravel().tolist()], height, width)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _dilate(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return grown


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Muted (low-saturation) gradient + stripes + the noise added later: textured, but the shapes stand out. The
    # colour of the background (each channel's departure from the grey mean) is kept at 1/4 of the drawn one:
    # with the full tint (demo-v2) the tiny demo FocalNet took about twice the steps to tell the shapes apart
    # (val top-1 after 900 steps: 0.47, against 0.70 at 1/4 tint in a close variant of this code, 0.73 with grey
    # backgrounds, 0.74 with flat grey ones).
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(50, 200) + _muted(rng.uniform(-25, 25, 3))
    ends = rng.uniform(-40, 40, (2, 3))
    c0, c1 = (base + ends.mean(1, keepdims=True) + _muted(ends)).astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * xx + np.sin(a) * yy
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    image = c0 + (c1 - c0) * t[..., None]
    b, freq, phase = rng.uniform(0, 2 * np.pi), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(b) * xx + np.sin(b) * yy) + phase)
    amplitude = rng.uniform(8, 25)
    channels = rng.uniform(0.6, 1, 3)
    channels = channels.mean() + _muted(channels)
    return image + stripes[..., None] * (amplitude * channels).astype(np.float32)


def _muted(per_channel: np.ndarray) -> np.ndarray:
    """Each row's departure from its mean, scaled by BACKGROUND_CHROMA."""
    return BACKGROUND_CHROMA * (per_channel - per_channel.mean(-1, keepdims=True))


def _shape_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    # A saturated colour (HSV s, v >= 0.5), far from the background under the shape when one can be found.
    for _ in range(10):
        rgb = 255 * np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1), rng.uniform(0.5, 1)))
        if np.abs(rgb - under).sum() > 150:
            break
    return rgb.astype(np.float32)


def make_scene(
    rng: np.random.Generator,
    *,
    image_size: int = 64,
    task: str = "segmentation",
    num_shapes: int | None = None,
    labels: Sequence[int] | None = None,
    radius: tuple[float, float] | None = None,
) -> Scene:
    """Draw one scene with the shape count and sizes of ``task`` (see ``_LAYOUTS``), unless ``labels`` (the class
    of each shape), ``num_shapes`` (random classes) or ``radius`` ((min, max) fractions of the size) are given.

    Shapes that cannot be placed without touching another after 30 tries are dropped (about 1 segmentation scene
    in 10, rarely otherwise)."""
    lo, hi, rmin, rmax = _LAYOUTS[task]
    if labels is None:
        num = int(rng.integers(lo, hi + 1)) if num_shapes is None else num_shapes
        labels = rng.integers(0, len(SHAPE_CLASSES), num).tolist()
    rmin, rmax = radius or (rmin, rmax)
    image = _background(rng, image_size)
    taken = np.zeros((image_size, image_size), bool)
    instances = []
    for label in labels:
        for _ in range(30):
            r = rng.uniform(rmin, rmax) * image_size
            center = rng.uniform(r, image_size - r, 2)
            polygon = shape_polygon(int(label), (center[0], center[1]), r, rng.uniform(0, 2 * np.pi))
            mask = rasterize(polygon, image_size, image_size)
            if mask.any() and not (mask & taken).any():
                break
        else:
            continue
        taken |= _dilate(mask)
        colour = _shape_colour(rng, image[mask].mean(0))
        ys, xs = np.nonzero(mask)
        shade = rng.uniform(-0.6, 0.6, 2) @ np.stack([xs - center[0], ys - center[1]])
        image[ys, xs] = colour + shade[:, None].astype(np.float32)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        instances.append(Instance(int(label), box, mask, polygon))
    image = image + rng.normal(0, rng.uniform(4, 12), image.shape).astype(np.float32)
    return Scene(np.clip(image, 0, 255).round().astype(np.uint8), instances)


def _scene_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, TASKS.index(task), SPLITS.index(split), index])


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def _write_classification(root: Path, split: str, count: int, image_size: int, seed: int) -> None:
    for name in SHAPE_CLASSES:
        (root / split / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        label = index % len(SHAPE_CLASSES)  # balanced classes
        rng = _scene_rng(seed, "classification", split, index)
        scene = make_scene(rng, image_size=image_size, task="classification", labels=[label])
        _save_png(scene.image, root / split / SHAPE_CLASSES[label] / f"{index:05d}.png")


def _write_segmentation(root: Path, split: str, count: int, image_size: int, seed: int) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = make_scene(_scene_rng(seed, "segmentation", split, index), image_size=image_size, task="segmentation")
        _save_png(scene.image, root / "images" / split / f"{index:05d}.png")
        _save_png(scene.semantic_mask(), root / "masks" / split / f"{index:05d}.png")
    (root / "classes.txt").write_text("\n".join(SEGMENTATION_CLASSES) + "\n")


def _write_detection(root: Path, split: str, count: int, image_size: int, seed: int) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = _scene_rng(seed, "detection", split, index)
        empty = index % DETECTION_EMPTY_EVERY == 0
        scene = make_scene(rng, image_size=image_size, task="detection", **({"num_shapes": 0} if empty else {}))
        file_name = f"{index:05d}.png"
        _save_png(scene.image, root / split / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size})
        for inst in scene.instances:
            x1, y1, x2, y2 = inst.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": inst.label + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": float(inst.mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [inst.polygon.ravel().tolist()],
                }
            )
    coco = {
        "info": {"description": f"focalbench {VERSION} shapes ({split})", "version": VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES)],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def generate_demo(
    root: str | os.PathLike,
    *,
    image_size: int = 64,
    num_train: int | None = None,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = 0,
) -> Path:
    """Write the demo data for all three tasks under ``root`` (``num_train`` / ``num_val`` images per task and
    split, ``num_train`` by default :data:`DEFAULT_NUM_TRAIN`; classification spreads them evenly over the
    classes). ``manifest.json`` is written last."""
    root = Path(root)
    counts = {
        task: {"train": DEFAULT_NUM_TRAIN[task] if num_train is None else num_train, "val": num_val} for task in TASKS
    }
    writers = {
        "classification": _write_classification,
        "segmentation": _write_segmentation,
        "detection": _write_detection,
    }
    for task, write in writers.items():
        for split in SPLITS:
            write(root / task, split, counts[task][split], image_size, seed)
    manifest = {
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "shape_classes": list(SHAPE_CLASSES),
        "segmentation_classes": list(SEGMENTATION_CLASSES),
        "counts": counts,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def is_complete(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a finished demo data set (its manifest is written last)."""
    return (Path(root) / MANIFEST).is_file()


def ensure_demo(root: str | os.PathLike, **kwargs) -> Path:
    """``root`` with the demo data in it, generated (``generate_demo(**kwargs)``) only if not there yet.

    The data is built in a temporary folder beside ``root`` and renamed into place; if another process finished
    first, its copy is kept and ours is discarded."""
    root = Path(root).expanduser()
    if is_complete(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but is not a complete demo data set (no {MANIFEST}); remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate_demo(tmp, **kwargs)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``CACHE/VERSION`` with CACHE = ``cache_dir``, else ``$FOCALBENCH_CACHE``, else ``~/.cache/focalbench``."""
    return (cache_root() if cache_dir is None else Path(cache_dir).expanduser()) / VERSION


def demo_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo data's root (:func:`default_root`), generated there (a few seconds) on first use."""
    return ensure_demo(default_root(cache_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the focalbench demo data (shapes) for all tasks.")
    parser.add_argument("--root", help=f"write here (default: $FOCALBENCH_CACHE/{VERSION} or the user cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = Path(args.root) if args.root else default_root()
    existed = is_complete(root)
    root = ensure_demo(root, seed=args.seed)
    manifest = json.loads((root / MANIFEST).read_text())
    took = "already there" if existed else f"ready in {time.perf_counter() - start:.1f} s"
    print(f"demo data ({manifest['version']}, seed {manifest['seed']}) at {root}: {took}")
    for task, counts in manifest["counts"].items():
        print(f"  {task:<15} " + ", ".join(f"{split} {n}" for split, n in counts.items()) + f"  -> {root / task}")


if __name__ == "__main__":
    main()
