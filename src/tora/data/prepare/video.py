"""One video -> staged shards and manifest lines (the work of one task).

Per video:

1. decode, detect scene cuts, resample to the target fps and resize
   (:func:`~tora.data.prepare.video_io.read_scenes`);
2. drop scenes shorter than ``scenes.min_seconds`` or than one clip;
3. cut clips of ``T`` frames every ``clips.stride`` frames; per clip: quality
   score (optional), optical flow, motion and camera scores, filters
   (:mod:`~tora.data.prepare.scores`), then for kept clips tracks sampled from
   the flow with :func:`tora.motion.sample_tracks_from_flow` (the trainer's
   sampler), the caption, and a sample of the shard schema.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tora.data.prepare.captions import Captioner, build_captioner
from tora.data.prepare.config import PrepareConfig
from tora.data.prepare.flow import FlowEstimator, build_flow_estimator
from tora.data.prepare.scenes import ContentDetector, Scene, clip_starts
from tora.data.prepare.scores import (
    QualityScorer,
    build_quality_scorer,
    check_camera_config,
    motion_rejection,
    quality_rejection,
    score_motion,
)
from tora.data.prepare.timing import StageTimer
from tora.data.prepare.video_io import read_scenes
from tora.data.schema import ShardWriter, encode_sample
from tora.motion import sample_tracks_from_flow

STAGING = ".staging"


@dataclass
class VideoJob:
    path: str
    relative: str
    video_id: str
    split: str
    size: int
    mtime_ns: int


@dataclass
class VideoResult:
    job: VideoJob
    status: str
    """``done`` or ``failed``."""
    records: list[dict[str, Any]]
    """Manifest lines, the video's own line last."""
    staged: list[str] = field(default_factory=list)
    """Complete shards in ``out/.staging/<video_id>/``, for the main process to move
    into ``out`` when it records the video."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Tools:
    """What a worker process builds once and uses for every video."""

    flow: FlowEstimator
    quality: QualityScorer | None
    captioner: Captioner


def build_tools(config: PrepareConfig) -> Tools:
    check_camera_config(config.camera)
    flow = config.flow
    return Tools(
        flow=build_flow_estimator(
            flow.method,
            flow.dis_preset,
            flow.raft_model,
            flow.raft_weights,
            flow.raft_iterations,
            flow.device,
            flow.batch_size,
        ),
        quality=build_quality_scorer(config.quality.scorer),
        captioner=build_captioner(
            config.captions.sidecar, config.captions.default, config.captions.captioner
        ),
    )


def settings_fingerprint(config: PrepareConfig) -> str:
    settings = json.dumps(config.output_settings(), sort_keys=True)
    return hashlib.sha1(settings.encode("utf-8")).hexdigest()[:12]


def clip_seed(seed: int, key: str) -> int:
    """Track-sampling seed of one clip: fixed by the run seed and the clip key."""
    return int.from_bytes(hashlib.sha1(f"{seed}/{key}".encode()).digest()[:8], "little")


def prepare_video(job: VideoJob, config: PrepareConfig, tools: Tools, out: Path) -> VideoResult:
    """Prepare one video into shards staged in ``out/.staging/<video_id>/``; never
    raises for a bad video (it is ``failed``, with nothing staged). ``out`` itself
    is left to the main process (:func:`tora.data.prepare.run.record_result`)."""
    start = time.perf_counter()
    timer = StageTimer()
    staging = out / STAGING / job.video_id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    video_line: dict[str, Any] = {"kind": "video", "video": job.relative, "split": job.split}
    try:
        records, staged, stats = _prepare_clips(job, config, tools, staging, timer)
        status = "done"
        video_line.update(
            status="done",
            size=job.size,
            mtime_ns=job.mtime_ns,
            settings=settings_fingerprint(config),
            shards=[Path(shard).name for shard in staged],
            **stats,
        )
    # A batch run over thousands of files must survive any one of them; the error
    # is recorded in the manifest and the summary.
    except Exception as error:
        records, staged, status = [], [], "failed"
        video_line.update(status="failed", reason="error", error=f"{type(error).__name__}: {error}")
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    video_line["seconds"] = round(seconds, 3)
    return VideoResult(job, status, [*records, video_line], staged, dict(timer.seconds), seconds)


def _prepare_clips(
    job: VideoJob, config: PrepareConfig, tools: Tools, staging: Path, timer: StageTimer
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Manifest lines, staged shard paths and video statistics of one video."""
    clips, scenes_config = config.clips, config.scenes
    detector = ContentDetector(scenes_config.threshold, scenes_config.min_scene_frames)
    records: list[dict[str, Any]] = []
    writer: ShardWriter | None = None
    num_scenes = kept = 0
    first_start = last_end = 0.0
    scenes = read_scenes(
        job.path,
        resolution=clips.resolution,
        buckets=clips.buckets,
        fps=clips.fps,
        detector=detector,
        detect_width=scenes_config.detect_width,
        max_seconds=scenes_config.max_seconds,
        threads=config.decode_threads,
        timer=timer,
    )
    for scene in scenes:
        if num_scenes == 0:
            first_start = scene.start
        num_scenes += 1
        last_end = scene.end
        span = {"start": round(scene.start, 4), "end": round(scene.end, 4)}
        if scene.duration < scenes_config.min_seconds or len(scene.frames) < clips.num_frames:
            records.append(
                {"kind": "scene", "video": job.relative, "scene": scene.index, **span,
                 "status": "rejected", "reason": "scene_too_short"}
            )  # fmt: skip
            continue
        for clip_index, first in enumerate(
            clip_starts(len(scene.frames), clips.num_frames, clips.stride)
        ):
            record, sample = _prepare_clip(job, config, tools, scene, clip_index, first, timer)
            records.append(record)
            if sample is not None:
                if writer is None:
                    height, width = scene.frames.shape[1:3]
                    prefix = f"{job.split}-{height}x{width}-{job.video_id}"
                    writer = ShardWriter(str(staging), prefix, maxcount=config.shard_maxcount)
                with timer("write"):
                    writer.write(sample)
                kept += 1
    shards = writer.close() if writer is not None else []
    stats = {"duration": round(last_end - first_start, 4), "scenes": num_scenes, "clips_kept": kept}
    return records, shards, stats


def _prepare_clip(
    job: VideoJob,
    config: PrepareConfig,
    tools: Tools,
    scene: Scene,
    clip_index: int,
    first: int,
    timer: StageTimer,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The manifest line of one clip candidate and, if it is kept, its encoded sample."""
    clips = config.clips
    frames = scene.frames[first : first + clips.num_frames]
    key = f"{job.video_id}-s{scene.index:04d}-c{clip_index:03d}"
    start = float(scene.times[first])
    end = float(scene.times[first + clips.num_frames - 1]) + 1.0 / clips.fps
    record: dict[str, Any] = {
        "kind": "clip",
        "video": job.relative,
        "key": key,
        "scene": scene.index,
        "clip": clip_index,
        "start": round(start, 4),
        "end": round(end, 4),
    }
    scores: dict[str, Any] = {}
    if tools.quality is not None:
        with timer("quality"):
            scores["quality"] = tools.quality.score(frames)
    reason = quality_rejection(scores.get("quality"), config.quality)
    flow = motion = None
    if reason is None:
        with timer("flow"):
            flow = tools.flow.estimate(frames)
        with timer("scores"):
            motion = score_motion(flow, config.reference_short_side, config.camera.static_ref)
        scores.update(motion.as_dict())
        reason = motion_rejection(motion, config.motion, config.camera)
    record.update(status="rejected" if reason else "kept", reason=reason, scores=_rounded(scores))
    if reason is not None:
        return record, None
    assert flow is not None and motion is not None  # computed whenever reason is None

    height, width = frames.shape[1:3]
    with timer("tracks"):
        stride = max(
            1, round(config.tracks.stride_ref * min(height, width) / config.reference_short_side)
        )
        generator = torch.Generator().manual_seed(clip_seed(config.seed, key))
        tracks = sample_tracks_from_flow(
            flow, config.tracks.max_tracks, stride, generator, config.tracks.min_tracks
        )
    with timer("caption"):
        caption = tools.captioner.caption(Path(job.path), frames)
    meta = {
        "fps": float(clips.fps),
        "source": job.relative,
        "start": record["start"],
        "end": record["end"],
        "scene": scene.index,
        "clip": clip_index,
        "camera": motion.camera,
        "scores": record["scores"],
    }
    with timer("encode"):
        sample = encode_sample(key, frames, flow, tracks.numpy(), caption, meta)
    return record, sample


def _rounded(scores: dict[str, Any]) -> dict[str, Any]:
    return {
        name: round(value, 4) if isinstance(value, float) else value
        for name, value in scores.items()
    }
