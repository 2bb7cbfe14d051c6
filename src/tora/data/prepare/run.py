"""Folder of videos -> training shards: the preparation run, parallel and resumable.

Each video is one task (:mod:`~tora.data.prepare.video`), run in the main
process or in ``num_workers`` spawned processes (:mod:`~tora.data.prepare.pool`).

**Output** (``out``): the video's samples go to its own shards,
``{split}-{H}x{W}-{video_id}-{n:06d}.tar`` (``video_id``: the first 12 hex digits
of the SHA-1 of the video's path relative to ``src``; keys
``{video_id}-s{scene:04d}-c{clip:03d}``), written in ``out/.staging/`` and moved
into ``out`` by the main process right after it writes the video's manifest lines
(a Ctrl-C waits for both), so ``out`` never holds a shard that no ``done`` line
lists, even after a crash. ``manifest.jsonl`` gets one line per
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

**Interrupting** (Ctrl-C): the videos recorded so far stay done; videos in flight
are dropped with their staged output; a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tora.data.prepare.config import PrepareConfig
from tora.data.prepare.manifest import MANIFEST, Manifest
from tora.data.prepare.pool import run_in_pool
from tora.data.prepare.summary import SUMMARY, RunSummary
from tora.data.prepare.video import (
    STAGING,
    VideoJob,
    VideoResult,
    build_tools,
    prepare_video,
    settings_fingerprint,
)
from tora.data.prepare.video_io import find_videos

log = logging.getLogger(__name__)


def video_id(relative: str) -> str:
    """First 12 hex digits of the SHA-1 of the path relative to ``src`` (posix form)."""
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()[:12]


def video_split(identifier: str, val_fraction: float) -> str:
    """``val`` for a fixed ``val_fraction`` of videos (by their id), else ``train``."""
    return "val" if int(identifier[:8], 16) / 16**8 < val_fraction else "train"


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


def remove_shards(out: Path, job: VideoJob) -> None:
    """The video's shards from an earlier run: it is redone, and until its new ``done``
    line ``out`` must not hold samples the manifest does not list as done."""
    for stale in out.glob(f"*-{job.video_id}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        stale.unlink()


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """A SIGINT during the block raises ``KeyboardInterrupt`` after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def record_result(result: VideoResult, manifest: Manifest, out: Path) -> None:
    """Append the video's manifest lines, then move its staged shards into ``out``.

    Lines first: a crash between the two leaves a ``done`` line whose shards are
    missing, which the next run redoes, never shards without a line.
    """
    with sigint_deferred():
        manifest.append(result.records)
        for shard in result.staged:
            os.replace(shard, out / Path(shard).name)
    if result.staged:
        shutil.rmtree(Path(result.staged[0]).parent, ignore_errors=True)


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
    for job in jobs:
        remove_shards(out, job)
    results: Iterator[VideoResult]
    if config.num_workers == 0:
        results = (prepare_video(job, config, tools, out) for job in jobs)
    else:
        results = run_in_pool(jobs, config, out)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[kept]} clips kept, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        disable=not config.progress,
    )
    try:
        with progress:
            task = progress.add_task("videos", total=len(jobs), kept=0, failed=0)
            for result in results:
                record_result(result, manifest, out)
                summary.add(result)
                if result.status == "failed":
                    log.warning("failed: %s: %s", result.job.relative, result.records[-1]["error"])
                progress.update(
                    task, advance=1, kept=summary.clips_kept, failed=summary.videos_failed
                )
    finally:
        shutil.rmtree(out / STAGING, ignore_errors=True)
    summary.finish(time.perf_counter() - start, manifest)
    (out / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary
