"""Named-shape accuracy on the synthetic world: the world's own shapes are told apart,
a blob is not a star, and the accuracy counts one-object clips only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tora.data.synthetic import COLORS, SHAPES, shape_sdf
from tora.metrics.shapes import ShapeClassifier, named_shape, shape_accuracy


def drawn(shape: str, radius: float, angle: float, size: int = 64, at=(30.0, 33.0)) -> np.ndarray:
    """A frame with ``shape`` in red on grey, as the world draws it (its signed distance)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (x - at[0]) * cos + (y - at[1]) * sin, -(x - at[0]) * sin + (y - at[1]) * cos
    frame = np.full((size, size, 3), 128, dtype=np.uint8)
    frame[shape_sdf(shape, u / radius, v / radius) <= 0] = COLORS["red"]
    return frame


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_of_the_world_is_recognised_at_its_smallest_size(shape):
    classifier = ShapeClassifier()
    rng = np.random.default_rng(0)
    for angle in rng.uniform(0, 2 * np.pi, 3):
        assert classifier(drawn(shape, 8.0, angle), COLORS["red"], 30.0, 33.0) == shape


def test_a_blurred_star_is_no_longer_a_star_and_a_missing_object_is_none():
    classifier = ShapeClassifier()
    star = drawn("star", 10.0, 0.3)
    assert classifier(star, COLORS["red"], 30.0, 33.0) == "star"
    blob = cv2.GaussianBlur(star, (0, 0), 3.0)
    assert classifier(blob, COLORS["red"], 30.0, 33.0) != "star"
    assert classifier(star, COLORS["blue"], 30.0, 33.0) is None


def test_named_shape_reads_the_first_shape_word():
    assert named_shape("a red star moves right and a blue circle bounces") == "star"
    assert named_shape("a green square zig-zags from the left") == "square"
    assert named_shape("nothing here") is None


def test_shape_accuracy_counts_one_object_clips_and_misses():
    track = torch.tensor([[[30.0, 33.0]] * 4])  # [1, T, 2], still
    frames = np.stack([drawn("triangle", 9.0, 0.1 * t) for t in range(4)])
    clip = {"caption": "a red triangle bounces", "tracks": track, "video": frames}
    two = {**clip, "tracks": torch.cat([track, track + 1])}  # two objects: not counted
    assert shape_accuracy([clip, two], [frames, frames], frames=4) == {
        "accuracy": 1.0,
        "frames": 4,
    }
    empty = np.full_like(frames, 128)
    assert shape_accuracy([clip], [empty], frames=4)["accuracy"] == 0.0
