"""Finding videos and reading them, streamed, as scenes of resampled, resized frames.

Frames are decoded with PyAV (any container, codec, frame rate and size FFmpeg
reads). Each decoded frame is downscaled for scene detection; frames are
resampled to the target fps by timestamp: the frame at output time ``t`` is the
source frame on screen at ``t`` (the last one with a timestamp <= ``t``), so an
output frame never comes from the other side of a cut. Only source frames that
are picked are resized (swscale, area filter) to cover the clip size and
centre-cropped. A scene is handed on as soon as its cut is seen, so memory holds
one scene (at most ``max_seconds``) of small frames, whatever the video length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from tora.data.buckets import nearest_bucket
from tora.data.prepare.scenes import ContentDetector, Scene
from tora.data.prepare.timing import StageTimer


class VideoReadError(RuntimeError):
    """A video FFmpeg cannot read (the message names the file and the reason)."""


def find_videos(root: str | Path, extensions: Sequence[str]) -> list[Path]:
    """Video files under ``root`` (recursive, extension case-insensitive), sorted, relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"src: folder of videos expected, got {str(root)!r}")
    suffixes = {"." + extension.lower().lstrip(".") for extension in extensions}
    return sorted(
        path.relative_to(root)
        for path in root.rglob("*")
        if path.suffix.lower() in suffixes and path.is_file()
    )


def choose_bucket(
    height: int, width: int, resolution: Sequence[int], buckets: Sequence[Sequence[int]] | None
) -> tuple[int, int]:
    """The clip size ``(H, W)`` of a video: ``resolution``, or the bucket whose aspect
    ratio is closest to the video's (distance of log aspect ratios)."""
    if not buckets:
        return int(resolution[0]), int(resolution[1])
    return nearest_bucket(height, width, buckets)


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """``(H', W')`` of a resize that keeps the aspect ratio and covers ``size``."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


class _FrameSampler:
    """Turns decoded frames into a scene's resized frames at the target fps."""

    def __init__(self, size: tuple[int, int], fps: float, threads: int, timer: StageTimer):
        self.size = size
        self.fps = fps
        self.threads = threads
        self.timer = timer
        self.reformatter = VideoReformatter()
        self.origin: float | None = None
        self.next_index = 0
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []

    def emit(self, frame: av.VideoFrame, shown_from: float, shown_until: float) -> None:
        """``frame`` is on screen in ``[shown_from, shown_until)``: take it for the output
        times in that interval."""
        if self.origin is None:
            self.origin = shown_from
        image = None
        while self.origin + self.next_index / self.fps < shown_until:
            if image is None:
                image = self.resize(frame)
            self.frames.append(image)
            self.times.append(self.origin + self.next_index / self.fps)
            self.next_index += 1

    def resize(self, frame: av.VideoFrame) -> np.ndarray:
        with self.timer("resize"):
            height, width = cover_size(frame.height, frame.width, self.size)
            image = self.reformatter.reformat(
                frame,
                width=width,
                height=height,
                format="rgb24",
                interpolation="AREA",
                threads=self.threads,
            ).to_ndarray()
            top = (height - self.size[0]) // 2
            left = (width - self.size[1]) // 2
            return image[top : top + self.size[0], left : left + self.size[1]]

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        frames = np.stack(self.frames) if self.frames else np.zeros((0, *self.size, 3), np.uint8)
        times = np.asarray(self.times, dtype=np.float64)
        self.frames, self.times = [], []
        return frames, times


def read_scenes(
    path: str | Path,
    *,
    resolution: Sequence[int],
    buckets: Sequence[Sequence[int]] | None,
    fps: float,
    detector: ContentDetector,
    detect_width: int,
    max_seconds: float | None,
    threads: int,
    timer: StageTimer,
) -> Iterator[Scene]:
    """Scenes of ``path`` with frames resampled to ``fps``, resized to ``resolution``
    or to the bucket of the video's aspect ratio (:func:`choose_bucket`).

    Cuts come from ``detector``; a scene longer than ``max_seconds`` is split into
    pieces. Raises :class:`VideoReadError` for a file FFmpeg cannot open or decode
    (scenes already yielded stay valid).
    """
    path = Path(path)
    sampler: _FrameSampler | None = None
    detect_scaler = VideoReformatter()
    scene_index = first_frame = 0
    scene_start: float | None = None
    previous_time: float | None = None
    previous: av.VideoFrame | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = threads
            frame_period = 1.0 / float(stream.average_rate or stream.guessed_rate or fps)
            decoded = container.decode(stream)
            index = 0
            while True:
                with timer("decode"):
                    frame = next(decoded, None)
                if frame is None:
                    break
                time = frame.time
                if time is None or (previous_time is not None and time <= previous_time):
                    time = (previous_time + frame_period) if previous_time is not None else 0.0
                with timer("scenes"):
                    detect_height = max(2, round(frame.height * detect_width / frame.width))
                    small = detect_scaler.reformat(
                        frame,
                        width=min(detect_width, frame.width),
                        height=min(detect_height, frame.height),
                        format="bgr24",
                        interpolation="FAST_BILINEAR",
                        threads=threads,
                    ).to_ndarray()
                    cut = detector.push(small)
                if sampler is None:
                    size = choose_bucket(frame.height, frame.width, resolution, buckets)
                    sampler = _FrameSampler(size, fps, threads, timer)
                if previous is not None:
                    assert previous_time is not None  # set with previous
                    frame_period = time - previous_time
                    sampler.emit(previous, previous_time, time)
                if scene_start is None:
                    scene_start = time
                elif cut or (max_seconds and time - scene_start >= max_seconds):
                    yield Scene(scene_index, first_frame, scene_start, time, *sampler.take())
                    scene_index, first_frame, scene_start = scene_index + 1, index, time
                previous, previous_time = frame, time
                index += 1
    except av.FFmpegError as error:
        raise VideoReadError(f"{path}: unreadable ({error})") from error
    if previous is None:
        raise VideoReadError(f"{path}: no decodable video frames")
    # All set with the first frame.
    assert sampler is not None and previous_time is not None and scene_start is not None
    end = previous_time + frame_period
    sampler.emit(previous, previous_time, end)
    yield Scene(scene_index, first_frame, scene_start, end, *sampler.take())
