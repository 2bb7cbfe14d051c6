"""The drawing canvas as an image: the first frame (or a neutral background with a
light grid) and the sketch's tracks over it, each in its own colour (the colours
``draw_tracks`` gives the same tracks in the result video)."""

from __future__ import annotations

import cv2
import numpy as np

from tora.motion import Sketch, track_colors
from tora.motion.draw import SUBPIXEL_BITS

BACKGROUND = (238, 240, 244)
GRID = (218, 222, 230)
GRID_CELLS = 8
"""Grid lines per short side, to help place points."""
MARKED_POINTS = 24
"""Tracks with this many key points or fewer (clicked ones) show a dot at each."""


def blank_canvas(canvas: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the background when no first frame is given."""
    width, height = canvas
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    step = min(width, height) / GRID_CELLS
    for x in np.arange(step, width, step):
        image[:, round(x)] = GRID
    for y in np.arange(step, height, step):
        image[round(y), :] = GRID
    return image


def _fixed(point: np.ndarray) -> tuple[int, int]:
    """Pixel coordinates -> cv2's fixed point (``shift=SUBPIXEL_BITS``)."""
    x, y = np.round(point * (1 << SUBPIXEL_BITS)).astype(int)
    return int(x), int(y)


def _fixed_length(pixels: float) -> int:
    return round(pixels * (1 << SUBPIXEL_BITS))


def _arrowhead(image: np.ndarray, points: np.ndarray, color, size: float) -> None:
    """A filled arrowhead at the last point, along the last move of at least 1 px."""
    moves = np.linalg.norm(points - points[-1], axis=1)
    earlier = np.nonzero(moves >= 1.0)[0]
    if len(earlier) == 0:
        return
    direction = points[-1] - points[earlier[-1]]
    direction /= np.linalg.norm(direction)
    normal = np.array([-direction[1], direction[0]])
    tip = points[-1] + direction * size * 0.6
    corners = [tip, tip - direction * size + normal * size * 0.6]
    corners.append(tip - direction * size - normal * size * 0.6)
    polygon = np.array([_fixed(c) for c in corners], dtype=np.int32)
    cv2.fillPoly(image, [polygon], color, cv2.LINE_AA, shift=SUBPIXEL_BITS)


def render_sketch(sketch: Sketch, background: np.ndarray) -> np.ndarray:
    """``background`` uint8 ``[H, W, 3]`` (the canvas size) with the tracks drawn:
    path, key points, a numbered start and an arrowhead at the end."""
    image = np.ascontiguousarray(background).copy()
    drawn = sketch.drawn
    colors = track_colors(len(drawn))
    short = min(image.shape[:2])
    thickness = max(2, round(short / 160))
    radius = max(3.0, short / 60)  # of the start ring's number, in pixels
    for number, (track, color) in enumerate(zip(drawn, colors), start=1):
        points = np.asarray(track, dtype=np.float64)
        fixed = np.array([_fixed(p) for p in points], dtype=np.int32)
        if len(points) >= 2:
            cv2.polylines(
                image,
                [fixed.reshape(-1, 1, 2)],
                False,
                color,
                thickness,
                cv2.LINE_AA,
                SUBPIXEL_BITS,
            )
            _arrowhead(image, points, color, radius * 2.5)
        if len(points) <= MARKED_POINTS:
            dot = _fixed_length(radius / 2)
            for point in fixed[1:]:
                cv2.circle(image, tuple(point), dot, color, -1, cv2.LINE_AA, SUBPIXEL_BITS)
        start, ring = tuple(int(v) for v in fixed[0]), _fixed_length(1.5 * radius)
        cv2.circle(image, start, ring, (255, 255, 255), -1, cv2.LINE_AA, SUBPIXEL_BITS)
        cv2.circle(image, start, ring, color, thickness, cv2.LINE_AA, SUBPIXEL_BITS)
        scale = radius / 9
        (text_w, text_h), _ = cv2.getTextSize(str(number), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        origin = (round(points[0, 0] - text_w / 2), round(points[0, 1] + text_h / 2))
        cv2.putText(
            image, str(number), origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA
        )
    return image
