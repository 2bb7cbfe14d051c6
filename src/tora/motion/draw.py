"""Tracks drawn over video frames, for logging and inspecting samples."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np
import torch

SUBPIXEL_BITS = 4
"""cv2 fixed-point fraction bits, so tracks are drawn at sub-pixel positions."""


def track_colors(num_tracks: int) -> list[tuple[int, int, int]]:
    """``num_tracks`` distinct saturated RGB colours (hues spaced by the golden ratio)."""
    colors = []
    for index in range(num_tracks):
        red, green, blue = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.9, 1.0)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def draw_tracks(
    frames: np.ndarray | torch.Tensor,
    tracks: np.ndarray | torch.Tensor,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Draw ``tracks [N, T, 2]`` (x, y pixels) over ``frames`` uint8 ``[T, H, W, 3]``.

    In frame t each track shows its path up to t as an anti-aliased polyline
    and a filled dot at its position at t. ``colors``: one (r, g, b) per track,
    default ``track_colors``. Line width and dot radius grow with the frame
    size. Returns a new uint8 array ``[T, H, W, 3]``; the input is not modified.
    """
    frames = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else frames
    tracks = tracks.detach().cpu().numpy() if isinstance(tracks, torch.Tensor) else tracks
    frames = np.asarray(frames)
    tracks = np.asarray(tracks, dtype=np.float64)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"draw_tracks: frames uint8 [T, H, W, 3] expected, got {frames.dtype} "
            f"{list(frames.shape)}"
        )
    if tracks.ndim != 3 or tracks.shape[1:] != (frames.shape[0], 2):
        raise ValueError(
            f"draw_tracks: tracks [N, {frames.shape[0]}, 2] expected for {frames.shape[0]} "
            f"frames, got {list(tracks.shape)}"
        )
    colors = track_colors(len(tracks)) if colors is None else list(colors)
    if len(colors) != len(tracks):
        raise ValueError(
            f"draw_tracks: one colour per track expected ({len(tracks)}), got {len(colors)}"
        )
    short_side = min(frames.shape[1:3])
    thickness = max(1, round(short_side / 128))
    radius = max(2, round(short_side / 64)) << SUBPIXEL_BITS
    points = np.round(tracks * (1 << SUBPIXEL_BITS)).astype(np.int32)
    drawn = np.ascontiguousarray(frames).copy()
    for frame_index, frame in enumerate(drawn):
        for track_points, track_color in zip(points, colors):
            color = tuple(int(value) for value in track_color)
            path = track_points[: frame_index + 1].reshape(-1, 1, 2)
            cv2.polylines(frame, [path], False, color, thickness, cv2.LINE_AA, shift=SUBPIXEL_BITS)
            cv2.circle(
                frame,
                tuple(int(value) for value in track_points[frame_index]),
                radius,
                color,
                cv2.FILLED,
                cv2.LINE_AA,
                shift=SUBPIXEL_BITS,
            )
    return drawn
