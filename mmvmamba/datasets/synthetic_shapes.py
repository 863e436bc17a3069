"""A small, deterministic dataset of coloured shapes for the demo and the end-to-end tests (no download).

Each image shows 1 to ``max_shapes`` non-overlapping squares, circles and triangles (randomly sized, rotated and
coloured, one hue range per class) on a noisy gradient background. The same images carry

* instance annotations in COCO format (``annotations/instances_{split}.json``, polygons, category ids 1..3), for
  mmdet's ``CocoDataset`` with ``metainfo=dict(classes=CLASSES)``;
* semantic label maps in the ADE20K layout (``annotations/{split}/*.png``, 0 = unlabelled, 1 = background,
  2.. = the shape classes), for mmseg's ``BaseSegDataset`` with ``reduce_zero_label=True`` and
  ``metainfo=dict(classes=SEG_CLASSES)``.

Layout under ``root``::

    images/training/000000.png ...        images/validation/...
    annotations/training/000000.png ...   annotations/validation/...
    annotations/instances_training.json   annotations/instances_validation.json
    shapes.json                           # the generation settings; a matching file means "already generated"

The content depends only on the settings (numpy's seeded generator and OpenCV's rasteriser, PNG files).
"""
import json
import math
from pathlib import Path

import cv2
import numpy as np

CLASSES = ('square', 'circle', 'triangle')
SEG_CLASSES = ('background', ) + CLASSES
PALETTE = [(220, 60, 60), (60, 200, 80), (70, 110, 230)]
SEG_PALETTE = [(40, 40, 40)] + PALETTE
SPLITS = ('training', 'validation')
# Hue (OpenCV's 0..180 scale) around which each class is coloured: red-ish squares, green-ish circles, blue-ish
# triangles, so that a small model learns the demo in a few hundred iterations.
CLASS_HUES = (0, 60, 115)
FORMAT_VERSION = 1
CIRCLE_VERTICES = 32
SUBPIXEL_BITS = 4


def generate_shapes_dataset(root: str | Path,
                            num_train: int = 96,
                            num_val: int = 24,
                            image_size: int = 128,
                            max_shapes: int = 3,
                            seed: int = 0) -> Path:
    """Write the dataset under ``root`` unless the same settings were generated there already.

    Args:
        root: Output folder (created).
        num_train: Training images. Default: 96.
        num_val: Validation images. Default: 24.
        image_size: Height and width of the square images. Default: 128.
        max_shapes: Most shapes per image (at least 1). Default: 3.
        seed: Seed of the generator. Default: 0.

    Returns:
        ``root`` as a Path.

    Raises:
        FileExistsError: ``root`` holds a shapes dataset generated with other settings, or other files.
    """
    root = Path(root)
    settings = dict(format_version=FORMAT_VERSION, num_train=num_train, num_val=num_val, image_size=image_size,
                    max_shapes=max_shapes, seed=seed, classes=list(CLASSES))
    marker = root / 'shapes.json'
    if marker.is_file():
        if json.loads(marker.read_text()) == settings:
            return root
        raise FileExistsError(f'{root} holds a shapes dataset generated with other settings ({marker}); '
                              'delete the folder or choose another data root')
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f'{root} exists and is not a generated shapes dataset; choose an empty folder')
    if image_size < 32 or max_shapes < 1 or num_train < 1 or num_val < 1:
        raise ValueError(f'need image_size >= 32 and at least one image and shape per image, got {settings}')

    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        rng = np.random.default_rng([seed, split_index])
        image_dir = root / 'images' / split
        label_dir = root / 'annotations' / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        coco = dict(images=[], annotations=[],
                    categories=[dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)])
        for image_id in range(count):
            file_name = f'{image_id:06d}.png'
            image, label_map, instances = _draw_image(rng, image_size, max_shapes)
            _write_png(image_dir / file_name, image)
            _write_png(label_dir / file_name, label_map)
            coco['images'].append(dict(id=image_id, file_name=file_name, width=image_size, height=image_size))
            for class_index, polygon, mask in instances:
                ys, xs = np.nonzero(mask)
                x0, y0 = float(xs.min()), float(ys.min())
                coco['annotations'].append(
                    dict(id=len(coco['annotations']) + 1, image_id=image_id, category_id=class_index + 1,
                         bbox=[x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0], area=float(mask.sum()),
                         segmentation=[[round(float(v), 2) for v in polygon.reshape(-1)]], iscrowd=0))
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(coco))
    marker.write_text(json.dumps(settings))
    return root


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')


def _draw_image(rng: np.random.Generator, size: int, max_shapes: int):
    """One BGR image, its label map and a list of (class index, polygon [V, 2] in x/y, mask) per instance."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(30, 110, size=3)
    slope = rng.uniform(-40, 40, size=(2, 3))
    image = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 6, size=(size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    label_map = np.ones((size, size), np.uint8)  # 1 = background in the ADE20K layout (0 is "unlabelled")

    instances = []
    placed = []  # (cx, cy, radius) of the shapes so far
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        class_index = int(rng.integers(len(CLASSES)))
        for _attempt in range(50):
            radius = rng.uniform(0.1, 0.2) * size
            cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
            if all(math.hypot(cx - px, cy - py) > radius + pr + 2 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        polygon = _polygon(CLASSES[class_index], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        points = np.round(polygon * (1 << SUBPIXEL_BITS)).astype(np.int32)[None]
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, points, 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        hue = (CLASS_HUES[class_index] + rng.integers(-8, 9)) % 180
        hsv = np.array([[[hue, rng.integers(150, 256), rng.integers(150, 256)]]], np.uint8)
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        shade = colour + rng.normal(0, 4, size=(size, size, 3))
        image[mask > 0] = np.clip(shade[mask > 0], 0, 255).astype(np.uint8)
        label_map[mask > 0] = class_index + 2
        instances.append((class_index, polygon, mask))
    # The first shape always fits, so every image has an object (CocoDataset would drop one without).
    return image, label_map, instances


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices [V, 2] (x, y) of a shape inscribed in the circle (cx, cy, radius), rotated by ``angle``."""
    vertices = {'square': 4, 'triangle': 3, 'circle': CIRCLE_VERTICES}[shape]
    theta = angle + 2 * math.pi * np.arange(vertices) / vertices
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
