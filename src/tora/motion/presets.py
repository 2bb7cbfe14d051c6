"""Preset paths (ours): line, arc, circle, spiral, zigzag, wave, pause-then-go.

Each preset maps times ``t [P]`` in [0, 1] to canvas pixels ``[P, 2]`` (x, y) of a
``W x H`` canvas (pixel centres at integers, so the area is ``[-0.5, W - 0.5]``).
Paths that cross the frame span its width; round ones are round on any aspect ratio
(radii from the short side). Positions are sampled at evenly spaced times, so a
preset carries its own timing (pause-then-go holds still, then moves).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PRESET_POINTS = 49
"""Points per preset path (the Tora release's frame count; resampled to any length)."""

LEFT, RIGHT = 0.15, 0.85
"""Where paths that cross the frame start and end, as fractions of the width."""


def _pixels(x_fraction: np.ndarray, y_fraction: np.ndarray, width: int, height: int):
    """Fractions of the canvas -> pixel coordinates ``[P, 2]``."""
    return np.stack([x_fraction * width - 0.5, y_fraction * height - 0.5], axis=-1)


def _across(t: np.ndarray) -> np.ndarray:
    return LEFT + (RIGHT - LEFT) * t


def _around_centre(radius: np.ndarray, angle: np.ndarray, width: int, height: int):
    """Polar -> pixels around the canvas centre; ``radius`` in short sides, angle 0 at
    the left, increasing clockwise on screen."""
    short = min(width, height)
    x = width / 2 - 0.5 - radius * short * np.cos(angle)
    y = height / 2 - 0.5 - radius * short * np.sin(angle)
    return np.stack([x, y], axis=-1)


def line(t: np.ndarray, width: int, height: int) -> np.ndarray:
    return _pixels(_across(t), np.full_like(t, 0.5), width, height)


def arc(t: np.ndarray, width: int, height: int) -> np.ndarray:
    return _pixels(_across(t), 0.7 - 0.4 * np.sin(np.pi * t), width, height)


def circle(t: np.ndarray, width: int, height: int) -> np.ndarray:
    return _around_centre(np.full_like(t, 0.3), 2 * np.pi * t, width, height)


def spiral(t: np.ndarray, width: int, height: int) -> np.ndarray:
    """Outwards, one and a half turns."""
    return _around_centre(0.05 + 0.3 * t, 3 * np.pi * t, width, height)


def zigzag(t: np.ndarray, width: int, height: int) -> np.ndarray:
    """Two teeth: a triangle wave that starts on the centre line."""
    triangle = 1 - 4 * np.abs((2 * t + 0.25) % 1 - 0.5)
    return _pixels(_across(t), 0.5 - 0.2 * triangle, width, height)


def wave(t: np.ndarray, width: int, height: int) -> np.ndarray:
    """Two periods of a sine."""
    return _pixels(_across(t), 0.5 - 0.2 * np.sin(4 * np.pi * t), width, height)


def pause_then_go(t: np.ndarray, width: int, height: int) -> np.ndarray:
    """Still for the first 40% of the clip, then across at constant speed."""
    moving = np.clip((t - 0.4) / 0.6, 0.0, 1.0)
    return _pixels(_across(moving), np.full_like(t, 0.5), width, height)


PRESETS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "line": line,
    "arc": arc,
    "circle": circle,
    "spiral": spiral,
    "zigzag": zigzag,
    "wave": wave,
    "pause-then-go": pause_then_go,
}


def preset_track(
    name: str,
    canvas: tuple[int, int],
    num_points: int = PRESET_POINTS,
    start: tuple[float, float] | None = None,
) -> np.ndarray:
    """The preset ``name`` on a ``canvas`` (W, H): ``[num_points, 2]`` pixels.

    ``start``: move the path so it starts there, then back inside the canvas where it
    sticks out (the shape is kept; the start moves by as little as needed).
    """
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: one of {', '.join(PRESETS)} expected")
    if num_points < 2:
        raise ValueError(f"preset {name!r}: num_points >= 2 expected, got {num_points}")
    width, height = canvas
    points = PRESETS[name](np.linspace(0.0, 1.0, num_points), width, height)
    if start is not None:
        points = points - points[0] + np.asarray(start, dtype=np.float64)
        upper = np.array([width - 1, height - 1], dtype=np.float64)
        points += np.maximum(0.0, -points.min(axis=0)) - np.maximum(0.0, points.max(axis=0) - upper)
    return points
