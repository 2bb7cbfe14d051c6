"""Scene cuts, as PySceneDetect's ``ContentDetector`` finds them, and the clips of a scene.

PySceneDetect is not a dependency: it requires ``opencv-python``, which cannot
share an environment with the ``opencv-python-headless`` this project pins.
:class:`ContentDetector` computes the same frame score as PySceneDetect 0.6/0.7's
``ContentDetector`` with its default weights: each frame is converted to HSV
(OpenCV 8-bit: H in [0, 180), S and V in [0, 255]) and the score is the mean of
the three channels' mean absolute differences to the previous frame (edges off).
A frame whose score reaches ``threshold`` (default 27) starts a new scene if at
least ``min_scene_frames`` frames have passed since the last cut (its
``min_scene_len``, default 15, with the ``SUPPRESS`` flash filter: a cut is
final the moment it is seen, so scenes can be streamed). Frames are downscaled
first, as PySceneDetect's ``SceneManager`` does (to about 256 pixels wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class ContentDetector:
    """Stateful per-frame cut detector; feed frames in order with :meth:`push`."""

    def __init__(self, threshold: float = 27.0, min_scene_frames: int = 15):
        if threshold <= 0 or min_scene_frames < 1:
            raise ValueError(
                "scenes.threshold > 0 and scenes.min_scene_frames >= 1 expected, "
                f"got {threshold}, {min_scene_frames}"
            )
        self.threshold = threshold
        self.min_scene_frames = min_scene_frames
        self._previous: np.ndarray | None = None
        self._frames_since_cut = 0

    @staticmethod
    def score(previous_hsv: np.ndarray, hsv: np.ndarray) -> float:
        """Mean over H, S, V of the mean absolute difference (PySceneDetect's ``content_val``)."""
        hue, saturation, value, _ = cv2.mean(cv2.absdiff(hsv, previous_hsv))
        return (hue + saturation + value) / 3

    def push(self, bgr: np.ndarray) -> bool:
        """Next frame, uint8 ``[H, W, 3]`` BGR (downscaled); True if it starts a new scene."""
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        previous, self._previous = self._previous, hsv
        if previous is None or previous.shape != hsv.shape:
            self._frames_since_cut += 1
            return False
        cut = (
            self._frames_since_cut >= self.min_scene_frames
            and self.score(previous, hsv) >= self.threshold
        )
        self._frames_since_cut = 0 if cut else self._frames_since_cut + 1
        return cut


@dataclass
class Scene:
    """A shot of a video, resampled to the target fps and resized to its clip size."""

    index: int
    """Position in the video (pieces of a long scene count separately)."""
    first_frame: int
    """Index of the scene's first decoded source frame."""
    start: float
    end: float
    """Time span ``[start, end)`` in seconds of the source stream."""
    frames: np.ndarray
    """uint8 ``[N, H, W, 3]`` RGB at the target fps (the source frame shown at each time)."""
    times: np.ndarray
    """float64 ``[N]``: the time (seconds) each of ``frames`` stands for."""

    @property
    def duration(self) -> float:
        return self.end - self.start


def clip_starts(num_available: int, num_frames: int, stride: int) -> list[int]:
    """First frames of the clips of ``num_frames`` cut every ``stride`` frames from a scene."""
    return list(range(0, num_available - num_frames + 1, stride))
