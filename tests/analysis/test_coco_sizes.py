"""The COCO size model reproduces the batch shapes that ../shared/spec/anchors.md lists for it (seed 0)."""
import itertools

from mmvmamba.analysis.coco_sizes import batch_shapes, distinct_batch_shapes, keep_ratio_size, padded_batch_shape

# anchors.md, "COCO keep-ratio batch shapes": the first 40 distinct (H, W) of random.Random(0)
ANCHOR_SHAPES = [
    (1120, 1088), (800, 1216), (800, 1344), (1088, 1088), (800, 800), (1184, 800), (1344, 1344), (800, 1088),
    (1280, 800), (1056, 1024), (1088, 1216), (1120, 1344), (768, 1344), (1216, 1088), (1088, 1120), (1344, 1056),
    (800, 1152), (800, 1248), (1280, 1344), (1088, 800), (1152, 800), (1312, 1216), (1344, 800), (1120, 800),
    (1344, 1088), (1216, 1344), (1312, 1056), (1056, 1152), (1280, 1216), (1184, 1216), (1056, 1216), (1056, 1248),
    (1088, 1344), (800, 1280), (1312, 800), (1344, 1216), (1280, 1088), (1216, 1216), (800, 1184), (1088, 1280),
]


def test_first_distinct_shapes_are_those_of_the_anchors():
    assert distinct_batch_shapes(40, seed=0) == ANCHOR_SHAPES


def test_resize_and_padding_follow_mmdet():
    assert keep_ratio_size(640, 480) == (1067, 800)      # short side to 800
    assert keep_ratio_size(360, 640) == (750, 1333)      # long side to 1333
    assert padded_batch_shape([(1067, 800), (800, 1067)]) == (1088, 1088)


def test_stream_is_seeded_and_padded_to_32():
    first = list(itertools.islice(batch_shapes(3), 200))
    assert first == list(itertools.islice(batch_shapes(3), 200))
    assert all(h % 32 == 0 and w % 32 == 0 and 768 <= min(h, w) and max(h, w) <= 1344 for h, w in first)
