"""Real-video preparation: a folder of videos -> shards of the one shard schema.

One concept per module: ``video_io`` (finding and decoding videos into scenes of
resampled, resized frames), ``scenes`` (the scene-cut detector and clip
positions), ``flow`` (optical flow estimators), ``scores`` (motion, camera and
quality scores and the filters on them), ``captions`` (captioners), ``video``
(one video -> staged shards and manifest lines), ``pool`` (worker processes),
``manifest`` (``manifest.jsonl``), ``summary`` (``summary.json`` and its table),
``run`` (the resumable run over a folder), ``config`` (typed settings).
"""

from tora.data.prepare.captions import Captioner, SidecarCaptioner, build_captioner
from tora.data.prepare.config import PrepareConfig, as_prepare_config
from tora.data.prepare.flow import (
    DISFlowEstimator,
    FlowEstimator,
    RAFTFlowEstimator,
    build_flow_estimator,
)
from tora.data.prepare.run import prepare
from tora.data.prepare.scenes import ContentDetector, Scene, clip_starts
from tora.data.prepare.scores import (
    CAMERA_CLASSES,
    MotionScores,
    QualityScorer,
    SharpnessScorer,
    classify_camera,
    score_motion,
)
from tora.data.prepare.summary import RunSummary, summary_table
from tora.data.prepare.video_io import VideoReadError, choose_bucket, find_videos, read_scenes

__all__ = [
    "CAMERA_CLASSES",
    "Captioner",
    "ContentDetector",
    "DISFlowEstimator",
    "FlowEstimator",
    "MotionScores",
    "PrepareConfig",
    "QualityScorer",
    "RAFTFlowEstimator",
    "RunSummary",
    "Scene",
    "SharpnessScorer",
    "SidecarCaptioner",
    "VideoReadError",
    "as_prepare_config",
    "build_captioner",
    "build_flow_estimator",
    "choose_bucket",
    "classify_camera",
    "clip_starts",
    "find_videos",
    "prepare",
    "read_scenes",
    "score_motion",
    "summary_table",
]
