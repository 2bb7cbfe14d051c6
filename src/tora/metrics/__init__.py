"""Evaluation metrics: TrajError, FVD and CLIPSIM.

The feature models (I3D, CLIP, CoTracker) are read from local paths; a metric
whose model is not configured is a ``MetricUnavailable`` that says why.
"""

from tora.metrics.base import MetricUnavailable, as_video_batch
from tora.metrics.clipsim import CLIPSimilarity, build_clipsim
from tora.metrics.fvd import (
    FeatureStatistics,
    FrechetVideoDistance,
    I3DFeatureExtractor,
    build_fvd,
    frechet_distance,
    fvd,
)
from tora.metrics.trajectory import (
    CoTrackerTracker,
    LucasKanadeTracker,
    MaskCentroidTracker,
    Tracker,
    TrajError,
    TrajErrorResult,
    trajectory_error,
)

__all__ = [
    "CLIPSimilarity",
    "CoTrackerTracker",
    "FeatureStatistics",
    "FrechetVideoDistance",
    "I3DFeatureExtractor",
    "LucasKanadeTracker",
    "MaskCentroidTracker",
    "MetricUnavailable",
    "Tracker",
    "TrajError",
    "TrajErrorResult",
    "as_video_batch",
    "build_clipsim",
    "build_fvd",
    "frechet_distance",
    "fvd",
    "trajectory_error",
]
