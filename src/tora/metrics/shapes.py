"""Named-shape accuracy for the synthetic world: is the object at a track point the shape
the caption names? The object is cut out by its colour, then matched against the world's
own shapes (:func:`tora.data.synthetic.shape_sdf`) at its area, over rotations."""

from __future__ import annotations

import functools
import re

import numpy as np

from tora.data.synthetic import SHAPES, shape_sdf
from tora.metrics.trajectory import color_mask, largest_blob

ANGLES = np.deg2rad(np.arange(0.0, 360.0, 7.5))


@functools.cache  # the same for every classifier an evaluation builds
def unit_areas(resolution: int = 201) -> dict[str, float]:
    """Each shape's area at circumradius 1, from its signed distance on a grid."""
    y, x = np.meshgrid(np.linspace(-1, 1, resolution), np.linspace(-1, 1, resolution))
    return {name: float((shape_sdf(name, x, y) <= 0).mean() * 4) for name in SHAPES}


class ShapeClassifier:
    """The shape of the blob of ``color`` nearest a point, by best IoU with each shape of
    the same area at any of 48 rotations.

    Args:
        max_color_distance: RGB distance within which a pixel is the object's (as
            :class:`tora.metrics.MaskCentroidTracker`).
        window: half-size in pixels of the square searched around the point.
        min_area: fewer object pixels than this is no object (None).
    """

    def __init__(self, max_color_distance: float = 60.0, window: int = 14, min_area: int = 6):
        self.max_color_distance = max_color_distance
        self.window = window
        self.min_area = min_area
        self.areas = unit_areas()

    def blob(self, frame: np.ndarray, color: np.ndarray, x: float, y: float) -> np.ndarray | None:
        """The largest 8-connected blob of ``color`` in the window around (x, y), or None."""
        height, width = frame.shape[:2]
        w = self.window
        top, left = max(round(y) - w, 0), max(round(x) - w, 0)
        patch = frame[top : min(round(y) + w + 1, height), left : min(round(x) + w + 1, width)]
        largest = largest_blob(color_mask(patch, color, self.max_color_distance))
        return largest if largest.sum() >= self.min_area else None

    def scores(self, mask: np.ndarray) -> dict[str, float]:
        """Best IoU of ``mask`` with each shape of its area, centred on its centroid."""
        rows, cols = np.nonzero(mask)
        cy, cx = rows.mean(), cols.mean()
        y, x = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(np.float64)
        cos, sin = np.cos(ANGLES)[:, None, None], np.sin(ANGLES)[:, None, None]
        u = (x - cx) * cos + (y - cy) * sin  # [A, H, W]: the shape's own frame
        v = -(x - cx) * sin + (y - cy) * cos
        out = {}
        for name, unit in self.areas.items():
            radius = np.sqrt(mask.sum() / unit)
            template = shape_sdf(name, u / radius, v / radius) <= 0
            union = (template | mask).sum(axis=(1, 2))
            out[name] = float(((template & mask).sum(axis=(1, 2)) / np.maximum(union, 1)).max())
        return out

    def __call__(self, frame: np.ndarray, color: np.ndarray, x: float, y: float) -> str | None:
        """The named shape at (x, y) in ``frame`` ``[H, W, 3]`` uint8, or None (no object)."""
        mask = self.blob(frame, np.asarray(color, dtype=np.float32), x, y)
        if mask is None:
            return None
        scores = self.scores(mask)
        return max(scores, key=scores.__getitem__)


def named_shape(caption: str) -> str | None:
    """The first of the world's shape names in ``caption``."""
    found = [(m.start(), name) for name in SHAPES if (m := re.search(rf"\b{name}\b", caption))]
    return min(found)[1] if found else None


def shape_accuracy(
    clips: list[dict], videos: list[np.ndarray], frames: int = 6, classifier=None
) -> dict[str, float | int]:
    """Share of ``frames`` evenly spaced frames of the one-object ``clips`` where the
    object at the track point is the shape the caption names. Its colour is read from the
    real first frame at the track's start; a frame with no such object counts as a miss."""
    classifier = classifier or ShapeClassifier()
    hits = total = 0
    for clip, video in zip(clips, videos, strict=True):
        name = named_shape(clip["caption"])
        if len(clip["tracks"]) != 1 or name is None:
            continue
        track = clip["tracks"][0].numpy()
        start = track[0].round().astype(int)
        color = clip["video"][0][start[1], start[0]]
        for f in np.linspace(0, len(video) - 1, frames).round().astype(int):
            hits += classifier(video[f], color, *track[f]) == name
            total += 1
    return {"accuracy": hits / total if total else float("nan"), "frames": total}
