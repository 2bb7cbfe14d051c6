"""Typed settings of real-video preparation, one dataclass per group of
``configs/prepare_data.yaml`` (which holds the defaults and their documentation).

Pixel thresholds named ``*_ref`` are in pixels per output frame (at the target
fps) at a short side of ``reference_short_side`` pixels; at a clip with short
side ``s`` they are multiplied by ``s / reference_short_side``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf


@dataclass
class ClipConfig:
    resolution: list[int]
    """``[H, W]`` of every clip when ``buckets`` is null."""
    buckets: list[list[int]] | None
    """``[[H, W], ...]``: each video goes to the bucket closest to its aspect ratio."""
    fps: float
    num_frames: int
    """``T = 4k + 1`` frames per clip."""
    stride: int
    """Frames (at ``fps``) between the starts of consecutive clips of a scene."""


@dataclass
class SceneConfig:
    threshold: float
    """PySceneDetect ContentDetector threshold (mean HSV difference, 0-255 scale)."""
    min_scene_frames: int
    """Source frames that must pass after a cut before the next one (ContentDetector ``min_scene_len``)."""
    detect_width: int
    """Frames are downscaled to about this width for detection (PySceneDetect: 256)."""
    min_seconds: float
    max_seconds: float | None
    """Longer scenes are split into pieces of at most this many seconds."""


@dataclass
class FlowConfig:
    method: str
    """``dis`` (OpenCV DIS) or ``raft`` (torchvision RAFT from ``raft_weights``)."""
    dis_preset: str
    raft_model: str
    raft_weights: str | None
    raft_iterations: int
    device: str
    batch_size: int


@dataclass
class MotionConfig:
    min_score_ref: float | None
    max_score_ref: float | None


@dataclass
class CameraConfig:
    static_ref: float
    max_pan_ref: float | None
    max_zoom: float | None
    reject: list[str]


@dataclass
class QualityConfig:
    scorer: Any
    """null, ``sharpness``, or a ``{_target_: ...}`` config of a :class:`QualityScorer`."""
    min_score: float | None


@dataclass
class TrackConfig:
    max_tracks: int
    min_tracks: int
    stride_ref: float


@dataclass
class CaptionConfig:
    sidecar: bool
    default: str
    captioner: Any
    """null or a ``{_target_: ...}`` config of a :class:`Captioner`."""


@dataclass
class PrepareConfig:
    src: str
    out: str
    extensions: list[str]
    num_workers: int
    seed: int
    val_fraction: float
    shard_maxcount: int
    reference_short_side: int
    decode_threads: int
    progress: bool
    clips: ClipConfig
    scenes: SceneConfig
    flow: FlowConfig
    motion: MotionConfig
    camera: CameraConfig
    quality: QualityConfig
    tracks: TrackConfig
    captions: CaptionConfig

    def __post_init__(self) -> None:
        for name in ("src", "out"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"{name}: a folder expected, got {getattr(self, name)!r}")
        clips = self.clips
        if clips.num_frames < 5 or (clips.num_frames - 1) % 4:
            raise ValueError(
                f"clips.num_frames: 4k+1 frames with k >= 1 expected, got {clips.num_frames}"
            )
        if clips.fps <= 0 or clips.stride < 1:
            raise ValueError(
                f"clips.fps > 0 and clips.stride >= 1 expected, got {clips.fps}, {clips.stride}"
            )
        for name, size in [("clips.resolution", clips.resolution)] + [
            (f"clips.buckets[{i}]", bucket) for i, bucket in enumerate(clips.buckets or [])
        ]:
            if len(size) != 2 or any(v < 2 or v % 2 for v in size):
                raise ValueError(
                    f"{name}: [H, W] of even sizes >= 2 expected (yuv420p video), got {list(size)}"
                )
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction: a number in [0, 1] expected, got {self.val_fraction}")
        if self.num_workers < 0 or self.shard_maxcount < 1:
            raise ValueError(
                "num_workers >= 0 and shard_maxcount >= 1 expected, "
                f"got {self.num_workers}, {self.shard_maxcount}"
            )
        if not 1 <= self.tracks.min_tracks <= self.tracks.max_tracks:
            raise ValueError(
                "1 <= tracks.min_tracks <= tracks.max_tracks expected, "
                f"got {self.tracks.min_tracks}, {self.tracks.max_tracks}"
            )

    def output_settings(self) -> dict[str, Any]:
        """The settings that decide what a video's samples are (not where or how fast
        they are made): a video done under other settings is reported on a rerun."""
        skipped = {"src", "out", "num_workers", "decode_threads", "progress"}
        settings = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.structured(self)))
        return {key: value for key, value in settings.items() if key not in skipped}


def as_prepare_config(cfg: DictConfig | PrepareConfig) -> PrepareConfig:
    """The ``prepare_data`` Hydra config (extra keys such as ``paths`` ignored) -> :class:`PrepareConfig`."""
    if isinstance(cfg, PrepareConfig):
        return cfg
    selected = {f.name: cfg[f.name] for f in fields(PrepareConfig) if f.name in cfg}
    merged = OmegaConf.merge(OmegaConf.structured(PrepareConfig), selected)
    return cast(PrepareConfig, OmegaConf.to_object(merged))
