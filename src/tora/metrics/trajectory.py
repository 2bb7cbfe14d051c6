"""TrajError: how far the motion in a generated video is from the requested tracks.

Tora (arXiv 2407.21705) reports TrajError as the mean L1 distance in pixels
between each requested track and the track recovered from the generated
video. "L1" is read here as the mean over points of the per-point **Euclidean**
distance ``||p_requested - p_recovered||_2``, the reading of the trajectory
evaluations of Tora's peers (a shift of (3, 4) px is an error of 5, not 7).

Tracks are ``[N, T, 2]`` (x, y) pixels of the evaluated video, x right, y down,
pixel centres at integer coordinates; requested tracks drawn on another
canvas must be mapped onto the video first (``tora.motion.rescale_tracks``).

Recovering the tracks is a :class:`Tracker`'s job:

- :class:`LucasKanadeTracker` (default): OpenCV pyramidal Lucas-Kanade, frame to
  frame from each track's first point;
- :class:`CoTrackerTracker`: a TorchScript CoTracker loaded from a local file;
- :class:`MaskCentroidTracker`: exact for the synthetic world, the centroid of
  the pixels of each object's colour (the paper measures at object-mask
  centres).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from tora.metrics.base import VideoLike
from tora.utils.video import as_uint8_frames


class Tracker:
    """Interface: ``track(video uint8 [T, H, W, 3], query_points [N, 2] at frame 0)
    -> tracks [N, T, 2]`` float64 (x, y) pixels; NaN where a tracker cannot place
    a point at all.

    Subclasses implement ``track_with_status``, which also says per point
    ``[N, T]`` whether the tracker found it (``False``: lost, occluded or absent).
    """

    def track_with_status(
        self, video: np.ndarray, query_points: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def track(self, video: np.ndarray, query_points: np.ndarray) -> np.ndarray:
        return self.track_with_status(video, query_points)[0]


def _check_tracker_inputs(video: np.ndarray, query_points: np.ndarray) -> np.ndarray:
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(
            f"video: uint8 [T, H, W, 3] expected, got {list(video.shape)} {video.dtype}"
        )
    query_points = np.asarray(query_points, dtype=np.float64)
    if query_points.ndim != 2 or query_points.shape[-1] != 2:
        raise ValueError(f"query_points: [N, 2] (x, y) expected, got {list(query_points.shape)}")
    return query_points


class LucasKanadeTracker(Tracker):
    """OpenCV pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``), frame to frame.

    Tracks on the RGB frames, not grey: the synthetic world's saturated objects
    can have the grey level of their background. A point is lost when OpenCV
    reports failure (e.g. a textureless window) or it leaves the frame; it
    then keeps its last position, flagged, for the rest of the clip (errors
    accumulate; lost points still count in TrajError).

    Args:
        window_size: side of the square search window at each pyramid level, pixels.
        max_level: pyramid levels above the full-resolution one.
    """

    def __init__(self, window_size: int = 21, max_level: int = 3):
        if window_size < 3 or max_level < 0:
            raise ValueError(
                "LucasKanadeTracker: window_size >= 3 and max_level >= 0 expected, "
                f"got window_size={window_size}, max_level={max_level}"
            )
        self.window_size = window_size
        self.max_level = max_level

    def track_with_status(
        self, video: np.ndarray, query_points: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        query_points = _check_tracker_inputs(video, query_points)
        num_frames, height, width = video.shape[:3]
        tracks = np.empty((len(query_points), num_frames, 2))
        found = np.zeros((len(query_points), num_frames), dtype=bool)
        tracks[:, 0], found[:, 0] = query_points, True
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
        for t in range(1, num_frames):
            previous = tracks[:, t - 1].astype(np.float32).reshape(-1, 1, 2)
            moved, status, _ = cv2.calcOpticalFlowPyrLK(  # type: ignore[call-overload]  # stubs lack nextPts=None
                video[t - 1],
                video[t],
                previous,
                None,
                winSize=(self.window_size, self.window_size),
                maxLevel=self.max_level,
                criteria=criteria,
            )
            moved = moved.reshape(-1, 2).astype(np.float64)
            inside = (
                (moved[:, 0] >= -0.5)
                & (moved[:, 0] <= width - 0.5)
                & (moved[:, 1] >= -0.5)
                & (moved[:, 1] <= height - 0.5)
            )
            found[:, t] = found[:, t - 1] & (status.reshape(-1) == 1) & inside
            tracks[:, t] = np.where(found[:, t, None], moved, tracks[:, t - 1])
        return tracks, found


class CoTrackerTracker(Tracker):
    """CoTracker as TorchScript from a local file (no torch.hub, no download).

    The scripted model is called as ``model(video [1, T, 3, H, W] float 0-255,
    queries [1, N, 3] (t, x, y)) -> (tracks [1, T, N, 2], visibility [1, T, N])``,
    the ``CoTrackerPredictor`` convention; every query is at frame 0. A float
    visibility counts as visible above ``visibility_threshold``.

    Args:
        path: the TorchScript file (``torch.jit.save`` of a traced/scripted CoTracker).
        device: where the model runs.
        visibility_threshold: for float visibilities.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        visibility_threshold: float = 0.5,
    ):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"CoTrackerTracker: no TorchScript file at {path}; expected a CoTracker saved "
                "with torch.jit.save taking (video [1, T, 3, H, W] 0-255, queries [1, N, 3])"
            )
        self.device = torch.device(device)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.visibility_threshold = visibility_threshold

    @torch.no_grad()
    def track_with_status(
        self, video: np.ndarray, query_points: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        query_points = _check_tracker_inputs(video, query_points)
        frames = torch.from_numpy(video).to(self.device).permute(0, 3, 1, 2).float()
        queries = torch.zeros(len(query_points), 3)
        queries[:, 1:] = torch.from_numpy(query_points)
        tracks, visibility = self.model(frames[None], queries[None].to(self.device))
        expected = (1, len(video), len(query_points))
        if tuple(tracks.shape) != (*expected, 2) or tuple(visibility.shape) != expected:
            raise ValueError(
                f"CoTrackerTracker: the model returned tracks {list(tracks.shape)} and visibility "
                f"{list(visibility.shape)}; [1, T, N, 2] and [1, T, N] expected with "
                f"T={len(video)}, N={len(query_points)}"
            )
        if visibility.dtype != torch.bool:
            visibility = visibility > self.visibility_threshold
        return (
            tracks[0].transpose(0, 1).double().cpu().numpy(),
            visibility[0].transpose(0, 1).cpu().numpy(),
        )


class MaskCentroidTracker(Tracker):
    """Exact tracks for the synthetic world: per frame, the centroid of the pixels
    within ``max_color_distance`` (Euclidean, RGB 0-255) of an object's colour.

    Objects are identified by colour, so ``query_points`` only fixes N (one per
    colour, in order). An object with no such pixel in a frame is absent there:
    NaN, not found. The synthetic objects' shading changes their colour by up
    to 15% across the shape; the default distance keeps the whole shape of the
    saturated colours while excluding the muted backgrounds.

    With ``largest_component`` (default) only the largest 8-connected blob of the
    colour counts: a generated video's stray specks of the object's colour
    elsewhere in the frame would otherwise pull the centroid off the object.

    Args:
        colors: ``[N, 3]`` RGB 0-255, one per tracked object.
        max_color_distance: RGB distance within which a pixel belongs to an object.
        largest_component: keep only the largest connected blob per frame.
    """

    def __init__(
        self,
        colors: Sequence[Sequence[float]] | np.ndarray,
        max_color_distance: float = 60.0,
        largest_component: bool = True,
    ):
        self.colors = np.asarray(colors, dtype=np.float32)
        if self.colors.ndim != 2 or self.colors.shape[-1] != 3:
            raise ValueError(f"colors: [N, 3] RGB expected, got {list(self.colors.shape)}")
        self.max_color_distance = max_color_distance
        self.largest_component = largest_component

    @classmethod
    def for_synthetic_clip(
        cls, meta: Mapping[str, Any], max_color_distance: float = 60.0
    ) -> MaskCentroidTracker:
        """The tracker for a ``tora.data.synthetic`` clip, from its ``meta["objects"]`` colours."""
        from tora.data.synthetic import COLORS

        colors = [COLORS[obj["color"]] for obj in meta["objects"]]
        return cls(colors, max_color_distance)

    def track_with_status(
        self, video: np.ndarray, query_points: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        query_points = _check_tracker_inputs(video, query_points)
        if len(query_points) != len(self.colors):
            raise ValueError(
                f"query_points: one per colour expected ({len(self.colors)}), got {len(query_points)}"
            )
        num_frames, height, width = video.shape[:3]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        frames = video.astype(np.float32)
        tracks = np.full((len(self.colors), num_frames, 2), np.nan)
        for index, color in enumerate(self.colors):
            inside = color_mask(frames, color, self.max_color_distance)
            if self.largest_component:
                inside = np.stack([largest_blob(mask) for mask in inside])
            counts = inside.sum(axis=(1, 2))
            present = counts > 0
            tracks[index, present, 0] = (inside * xs).sum(axis=(1, 2))[present] / counts[present]
            tracks[index, present, 1] = (inside * ys).sum(axis=(1, 2))[present] / counts[present]
        return tracks, np.isfinite(tracks[..., 0])


def color_mask(frames: np.ndarray, color: np.ndarray, max_distance: float) -> np.ndarray:
    """Pixels of ``[..., 3]`` RGB ``frames`` within ``max_distance`` (Euclidean, 0-255) of
    ``color``: a synthetic object's pixels."""
    return np.linalg.norm(np.asarray(frames, dtype=np.float32) - color, axis=-1) <= max_distance


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool ``[H, W]`` mask (all False if empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


@dataclass
class TrajErrorResult:
    """TrajError of one video, in pixels at ``reference_size``.

    Attributes:
        mean: mean distance over every counted point (tracks x frames).
        per_track: ``[N]`` mean over each track's counted frames.
        per_frame: ``[T]`` mean over the tracks counted in each frame; frame 0 is
            included (a point tracker starts at the requested point, so its
            frame-0 error is 0).
        coverage: counted points / points that should count (the recovered point
            was missing for the rest); read ``mean`` together with it.
        reference_size: (W, H) the distances are expressed at.
    """

    mean: float
    per_track: np.ndarray
    per_frame: np.ndarray
    coverage: float
    reference_size: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "per_track": self.per_track.tolist(),
            "per_frame": self.per_frame.tolist(),
            "coverage": self.coverage,
            "reference_size": list(self.reference_size),
        }


def _masked_mean(values: np.ndarray, counted: np.ndarray, axis: int | None = None) -> Any:
    total = np.where(counted, values, 0.0).sum(axis=axis)
    count = counted.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def trajectory_error(
    requested: np.ndarray | torch.Tensor,
    recovered: np.ndarray | torch.Tensor,
    video_size: tuple[int, int],
    reference_size: tuple[int, int] | None = None,
    valid: np.ndarray | torch.Tensor | None = None,
) -> TrajErrorResult:
    """Mean per-point Euclidean distance between requested and recovered tracks.

    Args:
        requested: ``[N, T, 2]`` (x, y) pixels of the ``video_size`` video.
        recovered: ``[N, T, 2]`` the same, NaN where a tracker found nothing.
        video_size: (W, H) of the evaluated video.
        reference_size: (W, H) the distances are reported at: x offsets scale by
            ``W_ref / W``, y offsets by ``H_ref / H`` (so numbers from different
            resolutions compare). ``None``: the video size, no rescaling.
        valid: ``[N, T]`` bool, the points that should count (default all).

    A point counts when it is valid, its requested position is finite and its
    recovered position is finite; ``coverage`` says what share counted.
    """
    requested = np.asarray(torch.as_tensor(requested).cpu(), dtype=np.float64)
    recovered = np.asarray(torch.as_tensor(recovered).cpu(), dtype=np.float64)
    if requested.ndim != 3 or requested.shape[-1] != 2 or recovered.shape != requested.shape:
        raise ValueError(
            "trajectory_error: requested and recovered tracks [N, T, 2] of one shape expected, "
            f"got {list(requested.shape)} and {list(recovered.shape)}"
        )
    should_count = np.isfinite(requested).all(axis=-1)
    if valid is not None:
        valid = np.asarray(torch.as_tensor(valid).cpu(), dtype=bool)
        if valid.shape != requested.shape[:2]:
            raise ValueError(
                f"trajectory_error: valid [N, T] = {list(requested.shape[:2])} expected, "
                f"got {list(valid.shape)}"
            )
        should_count &= valid
    counted = should_count & np.isfinite(recovered).all(axis=-1)

    width, height = reference_size or video_size
    reference = (int(width), int(height))
    scale = np.array(reference, dtype=np.float64) / np.array(video_size, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        distance = np.linalg.norm((recovered - requested) * scale, axis=-1)  # [N, T]
    return TrajErrorResult(
        mean=float(_masked_mean(distance, counted)),
        per_track=_masked_mean(distance, counted, axis=1),
        per_frame=_masked_mean(distance, counted, axis=0),
        coverage=float(counted.sum() / max(should_count.sum(), 1)),
        reference_size=reference,
    )


class TrajError:
    """TrajError of generated videos: recover each requested track with ``tracker``,
    starting from its frame-0 point, and compare (:func:`trajectory_error`).

    Args:
        tracker: how tracks are recovered (default :class:`LucasKanadeTracker`).
        reference_size: (W, H) to report distances at; ``None``: each video's size.
    """

    available = True

    def __init__(
        self, tracker: Tracker | None = None, reference_size: tuple[int, int] | None = None
    ):
        self.tracker = tracker or LucasKanadeTracker()
        self.reference_size = reference_size

    def __call__(self, video: VideoLike, requested: np.ndarray | torch.Tensor) -> TrajErrorResult:
        """``video``: uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]`` in [-1, 1];
        ``requested``: ``[N, T, 2]`` pixels of that video."""
        frames = as_uint8_frames(video)
        requested = np.asarray(torch.as_tensor(requested).cpu(), dtype=np.float64)
        if requested.ndim != 3 or requested.shape[1:] != (len(frames), 2):
            raise ValueError(
                f"requested: tracks [N, T={len(frames)}, 2] expected for a {len(frames)}-frame "
                f"video, got {list(requested.shape)}"
            )
        recovered = self.tracker.track(frames, requested[:, 0])
        height, width = frames.shape[1:3]
        return trajectory_error(requested, recovered, (width, height), self.reference_size)
