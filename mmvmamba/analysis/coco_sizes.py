"""A model of COCO's image sizes and of the padded batch shapes that keep-ratio resizing gives Mask R-CNN.

The size model is that of ../shared/spec/anchors.md (the workload the official implementation was timed on): images
of a few typical aspect ratios, each resized keeping its ratio to fit 1333x800, batches padded to the larger height
and width and then up to multiples of 32, as mmdet's ``Resize(keep_ratio=True)`` and ``DetDataPreprocessor`` do.
``tools/benchmark_backbone.py`` times the backbone over these shapes, ``tools/analysis/train_compare.py`` draws its
images from the same model.
"""
import random
from collections.abc import Iterator

# (probability, width, height): an int is fixed, a (low, high) pair is drawn uniformly (inclusive, integers).
IMAGE_SIZE_MODEL = (
    (0.40, 640, 480),
    (0.15, 640, (424, 428)),
    (0.07, 640, (359, 361)),
    (0.10, 640, (330, 512)),
    (0.10, 480, 640),
    (0.10, (360, 500), 640),
    (0.08, 'square', (400, 640)),
)
SCALE = (1333, 800)      # (long side, short side) that a resized image fits in
SIZE_DIVISOR = 32
BATCH_SIZE = 2


def draw_image_size(rng: random.Random) -> tuple[int, int]:
    """One ``(width, height)`` from :data:`IMAGE_SIZE_MODEL`."""
    u = rng.random()
    for probability, width, height in IMAGE_SIZE_MODEL:
        u -= probability
        if u < 0:
            break
    height = height if isinstance(height, int) else rng.randint(*height)
    if width == 'square':
        return height, height
    return (width if isinstance(width, int) else rng.randint(*width)), height


def keep_ratio_size(width: int, height: int, scale: tuple[int, int] = SCALE) -> tuple[int, int]:
    """``(width, height)`` after resizing to fit ``scale`` (long, short) with the aspect ratio kept, as mmcv rounds."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def padded_batch_shape(sizes: list[tuple[int, int]], divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """``(H, W)`` of a batch of resized ``(width, height)`` images padded to the largest, then to ``divisor``."""
    height = max(h for _, h in sizes)
    width = max(w for w, _ in sizes)
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def batch_shapes(seed: int = 0, batch_size: int = BATCH_SIZE) -> Iterator[tuple[int, int]]:
    """Endless stream of padded ``(H, W)`` batch shapes; the images of a batch are drawn in turn."""
    rng = random.Random(seed)
    while True:
        yield padded_batch_shape([keep_ratio_size(*draw_image_size(rng)) for _ in range(batch_size)])


def distinct_batch_shapes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """The first ``count`` distinct shapes of :func:`batch_shapes`, in order of first appearance."""
    seen: dict[tuple[int, int], None] = {}
    for shape in batch_shapes(seed):
        seen.setdefault(shape)
        if len(seen) == count:
            return list(seen)
    raise AssertionError('unreachable: the stream is endless')
