"""Per-clip scores (motion, camera motion, optional quality) and the filters on them.

Pixel scores are in pixels per output frame (at the target fps) at a short side
of ``reference_short_side`` pixels (default 480), so a threshold means the same
at any clip resolution; at a 256-pixel short side, ``3.0`` is 1.6 pixels per
frame of the clip.

- ``motion``: mean optical-flow magnitude over all pixels and frame pairs. The
  paper keeps clips with a flow score above 3; we read that as 3 pixels per
  frame at 480p (``motion.min_score_ref``).
- Camera: a similarity motion ``flow(p) = zoom * p + rotation * perp(p) + pan``
  (``p`` from the image centre) fitted per frame pair by least squares to a grid
  of flow samples (32 per short side), with outliers (moving objects) dropped
  over three rounds, then the median over pairs. ``camera_pan`` is the content's translation, ``camera_zoom`` the
  relative scale change per frame (> 0: the content grows), ``camera_rotation``
  radians per frame, and ``object_motion`` the mean flow the camera model leaves
  over at the samples (what moves on its own).
- The camera class names the CAMERA's motion, the opposite of the content's:
  content flowing right is ``pan_left``, content flowing down is ``pan_up``
  (a tilt), growing content is ``zoom_in``. ``static`` when neither the pan
  nor the zoom's displacement at the frame's edge (``|zoom| * short side / 2``)
  reaches ``camera.static_ref``; otherwise the larger of the two names the class
  (rotation is stored, not classified).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import hydra
import numpy as np

from tora.data.prepare.config import CameraConfig, MotionConfig, QualityConfig

CAMERA_CLASSES = ("static", "pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out")
CAMERA_FIT_SAMPLES = 32
"""Flow samples per short side the camera model is fitted to (and ``object_motion`` averaged over)."""
CAMERA_FIT_ROUNDS = 3
INLIER_FACTOR = 2.5
"""A sample is an inlier while its residual is within this many times the median residual..."""
INLIER_FLOOR = 0.5
"""... or within this many pixels."""


@dataclass
class MotionScores:
    motion: float
    object_motion: float
    camera_pan: list[float]
    camera_zoom: float
    camera_rotation: float
    camera: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fit_similarity(points: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust least-squares ``[zoom, rotation, pan_x, pan_y]`` of ``flow [N, 2]`` at
    centred ``points [N, 2]`` (``u = z x - r y + px``, ``v = r x + z y + py``), and
    every sample's residual ``[N]`` under it."""
    x, y = points[:, 0], points[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate(
        [np.stack([x, -y, ones, zeros], axis=1), np.stack([y, x, zeros, ones], axis=1)]
    )
    target = np.concatenate([flow[:, 0], flow[:, 1]])
    inliers = np.ones(len(points), dtype=bool)
    for _ in range(CAMERA_FIT_ROUNDS):
        rows = np.concatenate([inliers, inliers])
        params = np.linalg.lstsq(design[rows], target[rows], rcond=None)[0]
        residual = np.hypot(*(flow - _similarity_flow(params, points)).T)
        inliers = residual <= max(INLIER_FACTOR * np.median(residual), INLIER_FLOOR)
        if inliers.sum() < 4:
            break
    return params, residual


def _similarity_flow(params: np.ndarray, points: np.ndarray) -> np.ndarray:
    zoom, rotation, pan_x, pan_y = params
    x, y = points[..., 0], points[..., 1]
    return np.stack([zoom * x - rotation * y + pan_x, rotation * x + zoom * y + pan_y], axis=-1)


def score_motion(flow: np.ndarray, reference_short_side: int, static_ref: float) -> MotionScores:
    """Scores of a clip's forward flow ``[T-1, H, W, 2]`` (pixels of the clip)."""
    _, height, width, _ = flow.shape
    to_reference = reference_short_side / min(height, width)
    step = max(1, min(height, width) // CAMERA_FIT_SAMPLES)
    ys, xs = np.mgrid[step // 2 : height : step, step // 2 : width : step]
    points = np.stack([xs - (width - 1) / 2, ys - (height - 1) / 2], axis=-1).reshape(-1, 2)
    samples = flow[:, step // 2 :: step, step // 2 :: step].reshape(len(flow), -1, 2)
    fits = [_fit_similarity(points, pair.astype(np.float64)) for pair in samples]
    zoom, rotation, pan_x, pan_y = np.median([params for params, _ in fits], axis=0)
    scores = MotionScores(
        motion=float(np.hypot(flow[..., 0], flow[..., 1]).mean() * to_reference),
        object_motion=float(np.mean([residual.mean() for _, residual in fits]) * to_reference),
        camera_pan=[round(float(pan_x * to_reference), 4), round(float(pan_y * to_reference), 4)],
        camera_zoom=float(zoom),
        camera_rotation=float(rotation),
        camera="static",
    )
    scores.camera = classify_camera(scores, reference_short_side, static_ref)
    return scores


def classify_camera(scores: MotionScores, reference_short_side: int, static_ref: float) -> str:
    """One of :data:`CAMERA_CLASSES` from the fitted pan and zoom (see the module docstring)."""
    pan_x, pan_y = scores.camera_pan
    pan = float(np.hypot(pan_x, pan_y))
    zoom_edge = abs(scores.camera_zoom) * reference_short_side / 2
    if max(pan, zoom_edge) < static_ref:
        return "static"
    if zoom_edge > pan:
        return "zoom_in" if scores.camera_zoom > 0 else "zoom_out"
    if abs(pan_x) >= abs(pan_y):
        return "pan_left" if pan_x > 0 else "pan_right"
    return "pan_up" if pan_y > 0 else "pan_down"


class QualityScorer(ABC):
    """A per-clip quality or aesthetic score (higher is better)."""

    @abstractmethod
    def score(self, frames: np.ndarray) -> float:
        """uint8 ``[T, H, W, 3]`` RGB -> score."""


class SharpnessScorer(QualityScorer):
    """Mean over frames of the variance of the Laplacian of the grey image (blur
    detection); depends on the clip resolution, so set ``quality.min_score`` per resolution."""

    def score(self, frames: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    cv2.Laplacian(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
                    for frame in frames
                ]
            )
        )


def build_quality_scorer(scorer: Any) -> QualityScorer | None:
    """``quality.scorer``: null, ``sharpness``, or a ``{_target_: ...}`` config of a QualityScorer."""
    if scorer is None or scorer == "none":
        return None
    if scorer == "sharpness":
        return SharpnessScorer()
    if isinstance(scorer, dict) and "_target_" in scorer:
        built = hydra.utils.instantiate(scorer)
        if not isinstance(built, QualityScorer):
            raise TypeError(
                f"quality.scorer: a QualityScorer expected, {scorer['_target_']} made "
                f"{type(built).__name__}"
            )
        return built
    raise ValueError(
        f"quality.scorer: null, 'sharpness' or a {{_target_: ...}} config expected, got {scorer!r}"
    )


def quality_rejection(quality: float | None, config: QualityConfig) -> str | None:
    """``low_quality`` if the quality score is below ``quality.min_score``."""
    if quality is not None and config.min_score is not None and quality < config.min_score:
        return "low_quality"
    return None


def motion_rejection(
    scores: MotionScores, motion: MotionConfig, camera: CameraConfig
) -> str | None:
    """Why a clip is rejected on its motion scores, or None to keep it. Checked in order:
    ``low_motion``, ``high_motion``, ``camera_<class>`` (classes in ``camera.reject``),
    ``camera_pan_too_fast``, ``camera_zoom_too_fast``."""
    if motion.min_score_ref is not None and scores.motion < motion.min_score_ref:
        return "low_motion"
    if motion.max_score_ref is not None and scores.motion > motion.max_score_ref:
        return "high_motion"
    if scores.camera in camera.reject:
        return f"camera_{scores.camera}"
    if (
        camera.max_pan_ref is not None
        and float(np.hypot(scores.camera_pan[0], scores.camera_pan[1])) > camera.max_pan_ref
    ):
        return "camera_pan_too_fast"
    if camera.max_zoom is not None and abs(scores.camera_zoom) > camera.max_zoom:
        return "camera_zoom_too_fast"
    return None


def check_camera_config(camera: CameraConfig) -> None:
    unknown = [name for name in camera.reject if name not in CAMERA_CLASSES]
    if unknown:
        raise ValueError(
            f"camera.reject: classes from {list(CAMERA_CLASSES)} expected, got {unknown}"
        )
