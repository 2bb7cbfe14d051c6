"""Videos in a pool of spawned worker processes, each building its tools once."""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import torch

from tora.data.prepare.config import PrepareConfig
from tora.data.prepare.video import Tools, VideoJob, VideoResult, build_tools, prepare_video
from tora.utils.device import available_cpus

# Worker processes: the tools are built once per process by the pool initializer.
_worker: tuple[PrepareConfig, Tools, Path] | None = None


def _init_worker(config: PrepareConfig, out: Path, threads: int) -> None:
    global _worker
    # Ctrl-C reaches the whole process group: workers end quietly, the main process reports.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    _worker = (config, build_tools(config), out)


def _prepare_in_worker(job: VideoJob) -> VideoResult:
    if _worker is None:
        raise RuntimeError("_prepare_in_worker runs in a pool process set up by _init_worker")
    config, tools, out = _worker
    return prepare_video(job, config, tools, out)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread, and so in the worker processes it starts (the mask
    survives fork and exec) until ``_init_worker``: a Ctrl-C while a worker imports
    ends it quietly, and reaches this process when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def pool_result(future: Any, job: VideoJob) -> VideoResult:
    """The future's result, or a failed result (reason ``worker_died``) if its process died."""
    try:
        return future.result()
    except BrokenProcessPool:
        line = {"kind": "video", "video": job.relative, "split": job.split, "status": "failed",
                "reason": "worker_died", "error": "the worker process died (this video or "
                "another one in flight crashed it); rerun to retry"}  # fmt: skip
        return VideoResult(job, "failed", [line])


def run_in_pool(jobs: list[VideoJob], config: PrepareConfig, out: Path) -> Iterator[VideoResult]:
    """Results in completion order, at most two videos per worker in flight; a pool
    whose worker died fails the videos in flight and is replaced."""
    threads = max(1, available_cpus() // config.num_workers)
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
            try:
                while (queue or in_flight) and not broken:
                    while queue and len(in_flight) < 2 * config.num_workers:
                        job = queue.popleft()
                        with _sigint_blocked():  # submit() starts the worker processes
                            in_flight[pool.submit(_prepare_in_worker, job)] = job
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        result = pool_result(future, in_flight.pop(future))
                        broken = broken or result.records[-1].get("reason") == "worker_died"
                        yield result
            except (KeyboardInterrupt, GeneratorExit):  # interrupted: start no other video
                pool.shutdown(cancel_futures=True)
                raise
            # After a worker died the other videos in flight fail (or finished just before).
            for future, job in in_flight.items():
                yield pool_result(future, job)
