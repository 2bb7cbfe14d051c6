"""The one shard schema: how a training clip is stored in a WebDataset tar.

Every producer (the synthetic generator, real-video preparation) writes samples
with :func:`encode_sample` through :class:`ShardWriter`; the DataModule reads them
back with :func:`decode_sample`. A sample ``clip-000123`` is five tar members:

- ``clip-000123.mp4``: the video, RGB, ``T`` frames (H.264 with libx264 at
  CRF 17 / yuv420p when the bundled FFmpeg has it, else MPEG-4 part 2 at a high
  bit rate). Width and height must be even (yuv420p).
- ``clip-000123.flow.npy``: float16 ``[T-1, H, W, 2]`` forward flow in pixels
  of the video (``flow[t]`` at pixel p of frame t points to p in frame t+1).
- ``clip-000123.tracks.json``: ``{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}``,
  ``N`` tracks of ``T`` points in video pixels, every point inside the canvas
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the area ``tora.sample`` accepts).
- ``clip-000123.txt``: the caption, utf-8.
- ``clip-000123.meta.json``: ``{"fps", "width", "height", "num_frames", "source",
  "scores", ...}``; extra fields are kept as they are.

Shards are plain (uncompressed) tar files, so ``tar tf`` / ``tar xf`` read them.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import webdataset as wds
from av.video.reformatter import VideoReformatter

from tora.motion.tracks import canvas_violation

SAMPLE_FILES = ("mp4", "flow.npy", "tracks.json", "txt", "meta.json")
"""Tar member suffixes of one sample, in the order the schema lists them."""

X264_CRF = 17
MPEG4_BITS_PER_PIXEL = 4.0
"""MPEG-4 fallback bit rate, in bits per pixel per frame (visually lossless at small sizes)."""


class ShardFormatError(ValueError):
    """A sample that does not follow the shard schema; the message names the sample and field."""


class TracksOutsideCanvasError(ShardFormatError):
    """A track point outside the video's pixel area (more than half a pixel past an edge)."""


@dataclass
class ClipSample:
    """One decoded sample of the shard schema."""

    key: str
    frames: np.ndarray
    """uint8 ``[T, H, W, 3]`` RGB."""
    flow: np.ndarray
    """float32 ``[T-1, H, W, 2]`` forward flow in pixels."""
    tracks: np.ndarray
    """float32 ``[N, T, 2]`` (x, y) in video pixels."""
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])


def video_codec() -> str:
    """The encoder this FFmpeg build offers: libx264 if present, else mpeg4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_video(frames: np.ndarray, fps: float, codec: str | None = None) -> bytes:
    """uint8 ``[T, H, W, 3]`` RGB frames -> mp4 bytes (``codec`` defaults to :func:`video_codec`)."""
    _check_frames(frames, "frames")
    _, height, width, _ = frames.shape
    codec = codec or video_codec()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(X264_CRF)}
        else:
            stream.bit_rate = int(width * height * fps * MPEG4_BITS_PER_PIXEL)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_video(data: bytes) -> np.ndarray:
    """mp4 bytes -> uint8 ``[T, H, W, 3]`` RGB frames."""
    # One reformatter for all frames: PyAV otherwise sets up a new colour
    # converter per frame, which doubles the decoding time of small clips.
    reformatter = VideoReformatter()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [
            reformatter.reformat(frame, format="rgb24").to_ndarray()
            for frame in container.decode(stream)
        ]
    if not frames:
        raise ShardFormatError("mp4: no decodable video frames")
    return np.stack(frames)


def encode_sample(
    key: str,
    frames: np.ndarray,
    flow: np.ndarray,
    tracks: np.ndarray,
    caption: str,
    meta: dict[str, Any],
) -> dict[str, bytes | str]:
    """Validate one clip and serialise it to the tar members of the schema.

    ``frames`` uint8 ``[T, H, W, 3]``; ``flow`` ``[T-1, H, W, 2]`` (stored as
    float16); ``tracks`` ``[N, T, 2]`` (``N`` may be 0); ``meta`` must name
    ``fps`` and ``source``; ``width``, ``height`` and ``num_frames`` are filled
    in from ``frames`` (and must agree with them if given).
    """
    if not isinstance(key, str) or not key or "." in key or key.startswith("_"):
        raise ShardFormatError(
            f"__key__: non-empty string without '.' and not starting with '_' expected, got {key!r}"
        )
    frames = np.asarray(frames)
    flow = np.asarray(flow)
    tracks = np.asarray(tracks, dtype=np.float32)
    where = f"sample {key}"
    _check_frames(frames, f"{where} frames")
    num_frames, height, width, _ = frames.shape
    _check_flow(flow, num_frames, height, width, f"{where} flow")
    _check_tracks(tracks, num_frames, width, height, f"{where} tracks")
    if not isinstance(caption, str):
        raise ShardFormatError(f"{where} caption: str expected, got {type(caption).__name__}")
    meta = _complete_meta(meta, num_frames, height, width, f"{where} meta")

    flow_bytes = io.BytesIO()
    np.save(flow_bytes, flow.astype(np.float16))
    tracks_document = {"canvas": [width, height], "tracks": tracks.astype(np.float64).tolist()}
    return {
        "__key__": key,
        "mp4": encode_video(frames, meta["fps"]),
        "flow.npy": flow_bytes.getvalue(),
        "tracks.json": json.dumps(tracks_document).encode("utf-8"),
        "txt": caption.encode("utf-8"),
        "meta.json": json.dumps(meta).encode("utf-8"),
    }


def decode_sample(raw: dict[str, Any]) -> ClipSample:
    """The tar members of one sample (a WebDataset sample dict) -> :class:`ClipSample`.

    Raises :class:`ShardFormatError` naming the sample, its shard and the field
    for anything that does not follow the schema.
    """
    key = raw.get("__key__", "?")
    where = f"sample {key}" + (f" in {raw['__url__']}" if "__url__" in raw else "")
    missing = [name for name in SAMPLE_FILES if name not in raw]
    if missing:
        raise ShardFormatError(
            f"{where}: missing {missing}; expected files {list(SAMPLE_FILES)}, "
            f"got {sorted(k for k in raw if not k.startswith('__'))}"
        )
    try:
        frames = decode_video(raw["mp4"])
    except (av.FFmpegError, ShardFormatError) as error:
        raise ShardFormatError(f"{where} mp4: undecodable video ({error})") from error
    num_frames, height, width, _ = frames.shape

    try:
        flow = np.load(io.BytesIO(raw["flow.npy"]), allow_pickle=False)
    except ValueError as error:
        raise ShardFormatError(f"{where} flow.npy: unreadable .npy ({error})") from error
    if flow.dtype != np.float16:
        raise ShardFormatError(f"{where} flow.npy: float16 expected, got {flow.dtype}")
    _check_flow(flow, num_frames, height, width, f"{where} flow.npy")

    document = _load_json(raw["tracks.json"], f"{where} tracks.json")
    if not isinstance(document, dict) or document.get("canvas") != [width, height]:
        canvas = document.get("canvas") if isinstance(document, dict) else document
        raise ShardFormatError(
            f"{where} tracks.json: 'canvas' [W, H] = {[width, height]} (the video) expected, "
            f"got {canvas!r}"
        )
    try:
        tracks = np.asarray(document.get("tracks"), dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ShardFormatError(
            f"{where} tracks.json: 'tracks' as N lists of T [x, y] points expected ({error})"
        ) from error
    if tracks.size == 0:
        tracks = np.zeros((0, num_frames, 2), np.float32)
    _check_tracks(tracks, num_frames, width, height, f"{where} tracks.json")

    try:
        caption = bytes(raw["txt"]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ShardFormatError(f"{where} txt: utf-8 text expected ({error})") from error
    meta = _load_json(raw["meta.json"], f"{where} meta.json")
    _check_meta(meta, num_frames, height, width, f"{where} meta.json")
    return ClipSample(
        key=key,
        frames=frames,
        flow=flow.astype(np.float32),
        tracks=tracks,
        caption=caption,
        meta=meta,
    )


class ShardWriter:
    """Write encoded samples to ``{directory}/{prefix}-%06d.tar`` shards of at most
    ``maxcount`` samples (and about ``maxsize`` bytes) each.

    A thin wrapper over ``webdataset.ShardWriter`` that checks every sample has
    the schema's members and remembers the shards it wrote::

        with ShardWriter("data/synthetic", "train", maxcount=64) as writer:
            writer.write(encode_sample(...))
        shards = writer.shards
    """

    def __init__(self, directory: str, prefix: str, maxcount: int = 1000, maxsize: float = 3e9):
        if maxcount < 1:
            raise ValueError(f"ShardWriter maxcount: positive integer expected, got {maxcount}")
        os.makedirs(directory, exist_ok=True)
        self.pattern = os.path.join(directory, f"{prefix}-%06d.tar")
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.shards: list[str] = []
        self.num_samples = 0
        self._writer: wds.ShardWriter | None = None

    def write(self, sample: dict[str, bytes | str]) -> None:
        missing = [name for name in ("__key__", *SAMPLE_FILES) if name not in sample]
        if missing:
            raise ShardFormatError(
                f"ShardWriter sample {sample.get('__key__', '?')!s}: missing {missing}; "
                "build samples with encode_sample"
            )
        if self._writer is None:
            # Opened on the first sample so that an unused writer leaves no empty shard.
            self._writer = wds.ShardWriter(
                self.pattern, maxcount=self.maxcount, maxsize=self.maxsize, verbose=0, encoder=False
            )
        self._writer.write(sample)
        self.num_samples += 1
        if not self.shards or self.shards[-1] != self._writer.fname:
            self.shards.append(self._writer.fname)

    def close(self) -> list[str]:
        """Finish the last shard; returns the paths of all shards written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_frames(frames: np.ndarray, where: str) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not frames.size:
        raise ShardFormatError(
            f"{where}: uint8 [T, H, W, 3] expected, got {frames.dtype} {list(frames.shape)}"
        )
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ShardFormatError(
            f"{where}: even height and width expected (yuv420p), got {height}x{width}"
        )


def _check_flow(flow: np.ndarray, num_frames: int, height: int, width: int, where: str) -> None:
    expected = (num_frames - 1, height, width, 2)
    if flow.shape != expected:
        raise ShardFormatError(
            f"{where}: shape [T-1, H, W, 2] = {list(expected)} matching the video expected, "
            f"got {list(flow.shape)}"
        )
    if not np.issubdtype(flow.dtype, np.floating) or not np.isfinite(flow).all():
        raise ShardFormatError(f"{where}: finite floating-point values expected ({flow.dtype})")


def _check_tracks(tracks: np.ndarray, num_frames: int, width: int, height: int, where: str) -> None:
    if tracks.ndim != 3 or tracks.shape[1:] != (num_frames, 2):
        raise ShardFormatError(
            f"{where}: shape [N, T, 2] with T = {num_frames} (the video) expected, "
            f"got {list(tracks.shape)}"
        )
    if not np.isfinite(tracks).all():
        raise ShardFormatError(f"{where}: finite (x, y) points expected")
    problem = canvas_violation(tracks, (width, height))
    if problem is not None:
        raise TracksOutsideCanvasError(f"{where}: {problem}")


def _complete_meta(
    meta: dict[str, Any], num_frames: int, height: int, width: int, where: str
) -> dict[str, Any]:
    """``meta`` plus the size fields taken from the video, then checked."""
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}: dict expected, got {type(meta).__name__}")
    meta = {"width": width, "height": height, "num_frames": num_frames, "scores": {}, **meta}
    _check_meta(meta, num_frames, height, width, where)
    return meta


def _check_meta(meta: Any, num_frames: int, height: int, width: int, where: str) -> None:
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}: JSON object expected, got {type(meta).__name__}")
    fps = meta.get("fps")
    if (
        not isinstance(fps, int | float)
        or isinstance(fps, bool)
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise ShardFormatError(f"{where} 'fps': positive number expected, got {fps!r}")
    if not isinstance(meta.get("source"), str):
        raise ShardFormatError(
            f"{where} 'source': str naming the producer (e.g. 'synthetic') expected, "
            f"got {meta.get('source')!r}"
        )
    for name, value in (("width", width), ("height", height), ("num_frames", num_frames)):
        if meta.get(name) != value:
            raise ShardFormatError(
                f"{where} '{name}': {value} (the video) expected, got {meta.get(name)!r}"
            )
    if not isinstance(meta.get("scores", {}), dict):
        raise ShardFormatError(f"{where} 'scores': object expected, got {meta['scores']!r}")


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShardFormatError(f"{where}: invalid JSON ({error})") from error
