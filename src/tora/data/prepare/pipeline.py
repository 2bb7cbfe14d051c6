"""Folder of videos -> training shards: the preparation run, parallel and resumable.

Per video (one task; videos run in ``num_workers`` spawned processes):

1. decode, detect scene cuts, resample to the target fps and resize
   (:func:`~tora.data.prepare.video_io.read_scenes`);
2. drop scenes shorter than ``scenes.min_seconds`` or than one clip;
3. cut clips of ``T`` frames every ``clips.stride`` frames; per clip: quality
   score (optional), optical flow, motion and camera scores, filters
   (:mod:`~tora.data.prepare.scores`), then for kept clips tracks sampled from
   the flow with :func:`tora.motion.sample_tracks_from_flow` (the trainer's
   sampler), the caption, and a sample of the shard schema.

**Output** (``out``): the video's samples go to its own shards,
``{split}-{H}x{W}-{video_id}-{n:06d}.tar`` (``video_id``: the first 12 hex digits
of the SHA-1 of the video's path relative to ``src``; keys
``{video_id}-s{scene:04d}-c{clip:03d}``), written in ``out/.staging/`` and moved
into ``out`` when the video is complete. ``manifest.jsonl`` gets one line per
rejected scene, per clip candidate (kept or rejected, with its reason and
scores) and, last, one per video (``done``, ``failed`` with the error, or
``skipped`` as already done). ``summary.json`` describes the latest run.

**Resuming**: a video whose latest manifest line is ``done`` for the same file
(size and modification time) and whose shards are all there is skipped, so a
rerun adds nothing. Anything else is (re)done from scratch: its old shards are
replaced, never added to, since shard names depend only on the video and the
settings. Failed videos are retried on every run. A video done under other
output settings is kept and counted in the summary (``settings_changed``):
delete its line or use a new ``out`` to redo it.

**Failures**: any error inside a video (unreadable, truncated, no video stream,
a decoding error) fails that video only: it is reported in the manifest and
summary with the error, and its staged output is discarded. A worker process
that dies fails the videos it was running; the pool is restarted for the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from tora.data.prepare.video_io import find_videos, read_scenes
from tora.data.schema import ShardWriter, encode_sample
from tora.motion import sample_tracks_from_flow

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
STAGING = ".staging"
STAGES = (
    "decode",
    "scenes",
    "resize",
    "quality",
    "flow",
    "scores",
    "tracks",
    "caption",
    "encode",
    "write",
)
"""Timed stages, in pipeline order (``summary.json`` ``stage_seconds``)."""


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


def video_id(relative: str) -> str:
    """First 12 hex digits of the SHA-1 of the path relative to ``src`` (posix form)."""
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()[:12]


def video_split(identifier: str, val_fraction: float) -> str:
    """``val`` for a fixed ``val_fraction`` of videos (by their id), else ``train``."""
    return "val" if int(identifier[:8], 16) / 16**8 < val_fraction else "train"


def settings_fingerprint(config: PrepareConfig) -> str:
    settings = json.dumps(config.output_settings(), sort_keys=True)
    return hashlib.sha1(settings.encode("utf-8")).hexdigest()[:12]


def clip_seed(seed: int, key: str) -> int:
    """Track-sampling seed of one clip: fixed by the run seed and the clip key."""
    return int.from_bytes(hashlib.sha1(f"{seed}/{key}".encode()).digest()[:8], "little")


# ---------------------------------------------------------------------------
# One video (runs in a worker process).


def prepare_video(job: VideoJob, config: PrepareConfig, tools: Tools, out: Path) -> VideoResult:
    """Prepare one video into ``out``; never raises for a bad video (it is ``failed``)."""
    start = time.perf_counter()
    timer = StageTimer()
    # The video's shards from an earlier run go first, so that whatever happens
    # next, ``out`` never holds samples the manifest does not list as done.
    for stale in out.glob(f"*-{job.video_id}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        stale.unlink()
    staging = out / STAGING / job.video_id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    video_line: dict[str, Any] = {"kind": "video", "video": job.relative, "split": job.split}
    try:
        records, shards, stats = _prepare_clips(job, config, tools, staging, timer)
        for shard in shards:
            os.replace(shard, out / Path(shard).name)
        status = "done"
        video_line.update(
            status="done",
            size=job.size,
            mtime_ns=job.mtime_ns,
            settings=settings_fingerprint(config),
            shards=[Path(shard).name for shard in shards],
            **stats,
        )
    # A batch run over thousands of files must survive any one of them; the error
    # is recorded in the manifest and the summary.
    except Exception as error:
        records, status = [], "failed"
        video_line.update(status="failed", reason="error", error=f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    video_line["seconds"] = round(seconds, 3)
    return VideoResult(job, status, [*records, video_line], dict(timer.seconds), seconds)


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


# Worker processes: the tools are built once per process by the pool initializer.
_worker: tuple[PrepareConfig, Tools, Path] | None = None


def _init_worker(config: PrepareConfig, out: Path, threads: int) -> None:
    global _worker
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    _worker = (config, build_tools(config), out)


def _prepare_in_worker(job: VideoJob) -> VideoResult:
    config, tools, out = _worker
    return prepare_video(job, config, tools, out)


def _pool_result(future: Any, job: VideoJob) -> VideoResult:
    """The future's result, or a failed result (reason ``worker_died``) if its process died."""
    try:
        return future.result()
    except BrokenProcessPool:
        line = {"kind": "video", "video": job.relative, "split": job.split, "status": "failed",
                "reason": "worker_died", "error": "the worker process died (this video or "
                "another one in flight crashed it); rerun to retry"}  # fmt: skip
        return VideoResult(job, "failed", [line])


def _run_in_pool(jobs: list[VideoJob], config: PrepareConfig, out: Path) -> Iterator[VideoResult]:
    """Results in completion order, at most two videos per worker in flight; a pool
    whose worker died fails the videos in flight and is replaced."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // config.num_workers)
    queue = deque(jobs)
    while queue:
        with ProcessPoolExecutor(
            config.num_workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(config, out, threads),
        ) as pool:
            in_flight: dict[Any, VideoJob] = {}
            broken = False
            while (queue or in_flight) and not broken:
                while queue and len(in_flight) < 2 * config.num_workers:
                    job = queue.popleft()
                    in_flight[pool.submit(_prepare_in_worker, job)] = job
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = _pool_result(future, in_flight.pop(future))
                    broken = broken or result.records[-1].get("reason") == "worker_died"
                    yield result
            # After a worker died the other videos in flight fail (or finished just before).
            for future, job in in_flight.items():
                yield _pool_result(future, job)


# ---------------------------------------------------------------------------
# The run.


class Manifest:
    """``manifest.jsonl``: appended one line per record, flushed per video."""

    def __init__(self, path: Path):
        self.path = path
        self.latest: dict[str, dict[str, Any]] = {}
        """The latest ``done``/``failed`` line of each video."""
        self.bad_lines = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.bad_lines += 1  # a line cut short by a crash
                    continue
                if record.get("kind") == "video" and record.get("status") in ("done", "failed"):
                    self.latest[record["video"]] = record

    def append(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
        for record in records:
            if record.get("kind") == "video" and record.get("status") in ("done", "failed"):
                self.latest[record["video"]] = record

    def is_done(self, job: VideoJob, out: Path) -> bool:
        record = self.latest.get(job.relative)
        return (
            record is not None
            and record["status"] == "done"
            and (record.get("size"), record.get("mtime_ns")) == (job.size, job.mtime_ns)
            and all((out / shard).is_file() for shard in record.get("shards", []))
        )


@dataclass
class RunSummary:
    src: str
    out: str
    videos_found: int = 0
    videos_done: int = 0
    videos_skipped_done: int = 0
    videos_failed: int = 0
    settings_changed: int = 0
    scenes: int = 0
    scenes_too_short: int = 0
    clip_candidates: int = 0
    clips_kept: int = 0
    clips_rejected: dict[str, int] = field(default_factory=dict)
    video_hours: float = 0.0
    shards_written: int = 0
    wall_seconds: float = 0.0
    clips_per_second: float = 0.0
    candidates_per_second: float = 0.0
    video_seconds_per_second: float = 0.0
    worker_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    out_totals: dict[str, int] = field(default_factory=dict)
    """Over every run into ``out``: videos done, clips kept, shards."""

    def add(self, result: VideoResult) -> None:
        video_line = result.records[-1]
        if result.status == "failed":
            self.videos_failed += 1
            self.failed.append({"video": result.job.relative, "error": video_line["error"]})
        else:
            self.videos_done += 1
            self.scenes += video_line["scenes"]
            self.video_hours += video_line["duration"] / 3600
            self.shards_written += len(video_line["shards"])
        rejected = Counter(self.clips_rejected)
        for record in result.records:
            if record["kind"] == "scene":
                self.scenes_too_short += 1
            elif record["kind"] == "clip":
                self.clip_candidates += 1
                if record["status"] == "kept":
                    self.clips_kept += 1
                else:
                    rejected[record["reason"]] += 1
        self.clips_rejected = dict(sorted(rejected.items()))
        self.worker_seconds += result.seconds
        for stage, seconds in result.stage_seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def finish(self, wall_seconds: float, manifest: Manifest) -> None:
        self.wall_seconds = round(wall_seconds, 3)
        per_second = 1.0 / max(wall_seconds, 1e-9)
        self.clips_per_second = round(self.clips_kept * per_second, 3)
        self.candidates_per_second = round(self.clip_candidates * per_second, 3)
        self.video_seconds_per_second = round(self.video_hours * 3600 * per_second, 3)
        self.video_hours = round(self.video_hours, 5)
        self.worker_seconds = round(self.worker_seconds, 3)
        self.stage_seconds = {
            stage: round(self.stage_seconds[stage], 3)
            for stage in STAGES
            if stage in self.stage_seconds
        }
        done = [record for record in manifest.latest.values() if record["status"] == "done"]
        self.out_totals = {
            "videos_done": len(done),
            "clips_kept": sum(record["clips_kept"] for record in done),
            "shards": sum(len(record["shards"]) for record in done),
        }


def plan_jobs(
    config: PrepareConfig, manifest: Manifest, summary: RunSummary
) -> tuple[list[VideoJob], list[dict[str, Any]]]:
    """The videos to prepare, and the manifest lines of those skipped as done."""
    src, out = Path(config.src), Path(config.out)
    fingerprint = settings_fingerprint(config)
    jobs, skipped = [], []
    for relative in find_videos(src, config.extensions):
        path = src / relative
        stat = path.stat()
        identifier = video_id(relative.as_posix())
        job = VideoJob(
            path=str(path),
            relative=relative.as_posix(),
            video_id=identifier,
            split=video_split(identifier, config.val_fraction),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
        )
        summary.videos_found += 1
        if manifest.is_done(job, out):
            summary.videos_skipped_done += 1
            if manifest.latest[job.relative].get("settings") != fingerprint:
                summary.settings_changed += 1
            skipped.append(
                {"kind": "video", "video": job.relative, "status": "skipped", "reason": "done"}
            )
        else:
            jobs.append(job)
    return jobs, skipped


def prepare(config: PrepareConfig, console: Console | None = None) -> RunSummary:
    """Prepare every video under ``config.src`` into ``config.out``; returns the run's
    summary (also written to ``out/summary.json``)."""
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out / MANIFEST)
    if manifest.bad_lines:
        log.warning("%s: ignored %d unreadable lines", manifest.path, manifest.bad_lines)
    summary = RunSummary(src=str(config.src), out=str(out))
    jobs, skipped = plan_jobs(config, manifest, summary)
    manifest.append(skipped)
    if summary.settings_changed:
        log.warning(
            "%d videos done earlier under other output settings are kept as they are; "
            "use a new out folder to redo them",
            summary.settings_changed,
        )

    # Built here even for worker processes: a bad setting (e.g. a missing RAFT
    # weights file) stops the run before any video is touched.
    tools = build_tools(config)
    if config.num_workers == 0:
        results = (prepare_video(job, config, tools, out) for job in jobs)
    else:
        results = _run_in_pool(jobs, config, out)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[kept]} clips kept, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        disable=not config.progress,
    )
    with progress:
        task = progress.add_task("videos", total=len(jobs), kept=0, failed=0)
        for result in results:
            manifest.append(result.records)
            summary.add(result)
            if result.status == "failed":
                log.warning("failed: %s: %s", result.job.relative, result.records[-1]["error"])
            progress.update(task, advance=1, kept=summary.clips_kept, failed=summary.videos_failed)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    summary.finish(time.perf_counter() - start, manifest)
    (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def summary_table(summary: RunSummary) -> Table:
    """The run summary as a rich table."""
    table = Table(title=f"{summary.src} -> {summary.out}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = [
        ("videos found", summary.videos_found),
        ("videos prepared", summary.videos_done),
        ("videos skipped (done before)", summary.videos_skipped_done),
        ("videos failed", summary.videos_failed),
        ("hours of video", f"{summary.video_hours:.4f}"),
        ("scenes", summary.scenes),
        ("scenes too short", summary.scenes_too_short),
        ("clip candidates", summary.clip_candidates),
        ("clips kept", summary.clips_kept),
        *((f"rejected: {reason}", count) for reason, count in summary.clips_rejected.items()),
        ("shards written", summary.shards_written),
        ("wall seconds", f"{summary.wall_seconds:.1f}"),
        ("clips kept / s", f"{summary.clips_per_second:.2f}"),
        ("clip candidates / s", f"{summary.candidates_per_second:.2f}"),
        *(
            (f"seconds in {stage} (all workers)", f"{seconds:.2f}")
            for stage, seconds in summary.stage_seconds.items()
        ),
        ("in out, all runs: videos / clips / shards",
         " / ".join(str(v) for v in summary.out_totals.values())),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, str(value))
    for failure in summary.failed[:10]:
        table.add_row(f"failed: {failure['video']}", failure["error"][:80], style="red")
    return table
