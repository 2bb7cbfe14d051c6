"""Trajectory files: reading, writing, rescaling and resampling point tracks.

A track is a list of (x, y) pixel positions, one per frame; ``N`` tracks of ``T``
frames are a float tensor ``[N, T, 2]``. Pixel centres sit at integer coordinates
(see the conventions in the project contracts), so a canvas ``W x H`` covers
``x`` in ``[-0.5, W - 0.5]`` and ``y`` in ``[-0.5, H - 0.5]``.

Three formats are read:

- JSON ``{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}`` (the shard schema's
  ``tracks.json``), all tracks of equal length;
- official Tora point files: one ``x,y`` pair per line, one file per track, on
  a fixed 256 x 256 canvas (alibaba/Tora ``traj_utils.py``);
- ``.npy`` arrays ``[N, T, 2]`` in pixels of a canvas the caller names (by
  default the video itself).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

TORA_CANVAS = (256, 256)
"""(W, H) of the official Tora point files."""

PathLike = str | Path


class TrackFormatError(ValueError):
    """A trajectory file that cannot be read; the message names the file and place."""


def parse_point(value: object, where: str) -> tuple[float, float]:
    """One ``[x, y]`` JSON point -> floats, or an error naming ``where``."""
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise TrackFormatError(f"{where}: finite [x, y] expected, got {value!r}")
    return float(value[0]), float(value[1])


def parse_canvas(value: object, where: str) -> tuple[int, int]:
    """A JSON ``canvas`` ``[W, H]`` -> ints, or an error naming ``where``."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise TrackFormatError(
            f"{where}: 'canvas' [W, H] of positive integers expected, got {value!r}"
        )
    return value[0], value[1]


def read_tracks_json(path: PathLike) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read ``{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}``.

    Returns ``(tracks [N, T, 2] float32, canvas (W, H))``. Every track must have
    the same number of points ``T``; an empty track list gives ``[0, 0, 2]``.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TrackFormatError(
            f"trajectory file {path} line {error.lineno}: invalid JSON ({error.msg})"
        ) from error
    if not isinstance(document, dict) or not {"canvas", "tracks"} <= document.keys():
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise TrackFormatError(
            f"trajectory file {path}: object with keys 'canvas' and 'tracks' expected, got {found}"
        )
    canvas = parse_canvas(document["canvas"], f"trajectory file {path}")
    raw_tracks = document["tracks"]
    if not isinstance(raw_tracks, list):
        raise TrackFormatError(
            f"trajectory file {path}: 'tracks' list of tracks expected, got {raw_tracks!r}"
        )
    tracks = []
    for track_index, raw_track in enumerate(raw_tracks):
        if not isinstance(raw_track, list) or not raw_track:
            raise TrackFormatError(
                f"trajectory file {path} track {track_index}: non-empty list of [x, y] "
                f"points expected, got {raw_track!r}"
            )
        if len(raw_track) != len(raw_tracks[0]):
            raise TrackFormatError(
                f"trajectory file {path} track {track_index}: {len(raw_track)} points, but "
                f"track 0 has {len(raw_tracks[0])}; all tracks in one file must have the "
                "same length"
            )
        tracks.append(
            [
                parse_point(point, f"trajectory file {path} track {track_index} frame {frame}")
                for frame, point in enumerate(raw_track)
            ]
        )
    length = len(tracks[0]) if tracks else 0
    array = np.asarray(tracks, dtype=np.float32).reshape(len(tracks), length, 2)
    return torch.from_numpy(array), canvas


def read_tora_point_file(path: PathLike) -> torch.Tensor:
    """Read one official Tora point file: one ``x,y`` pair per line, 256 x 256 canvas.

    Blank lines are skipped (line numbers in errors still count them).
    Returns one track ``[1, T, 2]`` float32 in canvas pixels (``TORA_CANVAS``).
    """
    points = []
    for line_number, line in enumerate(
        Path(path).read_text(encoding="utf-8").splitlines(), start=1
    ):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        try:
            x, y = (float(field) for field in fields)
        except ValueError:
            raise TrackFormatError(
                f"trajectory file {path} line {line_number}: 'x,y' expected, got {text!r}"
            ) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise TrackFormatError(
                f"trajectory file {path} line {line_number}: finite 'x,y' expected, got {text!r}"
            )
        points.append((x, y))
    if not points:
        raise TrackFormatError(f"trajectory file {path}: empty, at least one 'x,y' line expected")
    return torch.tensor([points], dtype=torch.float32)


def read_tracks_npy(path: PathLike) -> torch.Tensor:
    """Read a ``.npy`` array of tracks ``[N, T, 2]`` (pixels) as float32."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise TrackFormatError(
            f"trajectory file {path}: numeric .npy array expected ({error})"
        ) from error
    if array.ndim != 3 or array.shape[-1] != 2 or array.shape[1] == 0:
        raise TrackFormatError(
            f"trajectory file {path}: array of shape [N, T, 2] expected, got {list(array.shape)}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise TrackFormatError(
            f"trajectory file {path}: numeric array expected, got dtype {array.dtype}"
        )
    tracks = torch.from_numpy(array.astype(np.float32))
    if not torch.isfinite(tracks).all():
        bad = torch.nonzero(~torch.isfinite(tracks))[0].tolist()
        raise TrackFormatError(
            f"trajectory file {path} track {bad[0]} frame {bad[1]}: finite coordinates "
            f"expected, got {tracks[bad[0], bad[1]].tolist()}"
        )
    return tracks


def write_tracks_json(path: PathLike, tracks: torch.Tensor, canvas: tuple[int, int]) -> None:
    """Write tracks ``[N, T, 2]`` (pixels of ``canvas`` = (W, H)) as the JSON format."""
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"write_tracks_json: tracks [N, T, 2] expected, got {list(tracks.shape)}")
    document = {
        "canvas": [int(canvas[0]), int(canvas[1])],
        "tracks": torch.as_tensor(tracks).detach().cpu().double().tolist(),
    }
    Path(path).write_text(json.dumps(document), encoding="utf-8")


def write_tora_point_file(path: PathLike, track: torch.Tensor, size: tuple[int, int]) -> None:
    """Write one track ``[T, 2]`` (pixels of a ``size`` (W, H) video) as an official Tora
    point file: one ``x,y`` line per frame on the 256 x 256 canvas, rounded to integers
    (the release parses them with ``int``) and kept inside the canvas."""
    if track.ndim != 2 or track.shape[-1] != 2:
        raise ValueError(f"write_tora_point_file: track [T, 2] expected, got {list(track.shape)}")
    points = rescale_tracks(track.detach().cpu().double(), size, TORA_CANVAS).round()
    points = points.clamp(min=0).minimum(torch.tensor(TORA_CANVAS, dtype=points.dtype) - 1)
    lines = [f"{int(x)},{int(y)}" for x, y in points.tolist()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def outside_canvas(points: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """Which points ``[..., 2]`` lie outside the canvas (W, H) pixel area
    ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (NaN counts as outside); a boolean array ``[...]``."""
    upper = np.array([canvas[0] - 0.5, canvas[1] - 0.5])
    return np.asarray(~((points >= -0.5) & (points <= upper)).all(axis=-1))


def canvas_violation(tracks: np.ndarray, canvas: tuple[int, int]) -> str | None:
    """The first point of ``tracks [N, T, 2]`` outside the canvas (:func:`outside_canvas`),
    as ``track i frame t: point (x, y) outside ...``; None when every point is inside."""
    width, height = canvas
    outside = outside_canvas(tracks, canvas)
    if not outside.any():
        return None
    track, frame = np.argwhere(outside)[0].tolist()
    x, y = tracks[track, frame].tolist()
    return (
        f"track {track} frame {frame}: point ({x:g}, {y:g}) outside the {width}x{height} "
        f"canvas (x in [-0.5, {width - 0.5:g}], y in [-0.5, {height - 0.5:g}] expected)"
    )


def check_tracks_in_canvas(tracks: torch.Tensor, canvas: tuple[int, int], source: str) -> None:
    """Raise ``TrackFormatError`` naming ``source``, track, frame and value for the
    first point of ``tracks [N, T, 2]`` outside the canvas (:func:`canvas_violation`)."""
    problem = canvas_violation(tracks.numpy(), canvas)
    if problem is not None:
        raise TrackFormatError(f"trajectory file {source} {problem}")


def rescale_tracks(
    tracks: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
) -> torch.Tensor:
    """Map tracks ``[..., 2]`` from a ``from_size`` (W, H) canvas to a ``to_size`` one.

    Pixel-centre aligned, ``x' = (x + 0.5) * W'/W - 0.5``, so the canvas area maps
    onto the video area exactly. (The Tora port uses ``int(x * W'/W)``, which
    shifts points by up to half a source pixel and truncates.)
    """
    scale = torch.tensor(
        [to_size[0] / from_size[0], to_size[1] / from_size[1]],
        dtype=tracks.dtype,
        device=tracks.device,
    )
    return (tracks + 0.5) * scale - 0.5


def resample_tracks(tracks: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resample tracks ``[..., T, 2]`` to ``[..., num_frames, 2]``.

    Upsampling interpolates linearly at ``linspace(0, T - 1, num_frames)``;
    downsampling picks the points at those positions rounded to the nearest
    index. Both keep the first and last point exactly (for
    ``num_frames >= 2``), and e.g. 25 -> 49 frames keeps every original point at
    the even frames.
    """
    if num_frames < 1:
        raise ValueError(f"resample_tracks: num_frames >= 1 expected, got {num_frames}")
    length = tracks.shape[-2]
    if tracks.numel() == 0:
        return tracks.new_zeros(*tracks.shape[:-2], num_frames, 2)
    if length == num_frames:
        return tracks.clone()
    positions = torch.linspace(0, length - 1, num_frames, dtype=torch.float64)
    if num_frames < length:
        return tracks[..., positions.round().long().to(tracks.device), :]
    lower = positions.floor().long().clamp(max=max(length - 2, 0))
    upper = (lower + 1).clamp(max=length - 1)
    weight = (positions - lower).to(tracks.dtype).to(tracks.device)[:, None]
    lower, upper = lower.to(tracks.device), upper.to(tracks.device)
    return tracks[..., lower, :] * (1 - weight) + tracks[..., upper, :] * weight


def load_tracks(
    paths: PathLike | Sequence[PathLike],
    width: int,
    height: int,
    num_frames: int,
    canvas: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Read trajectory files and bring them to a ``width x height``, ``num_frames`` video.

    ``paths``: one path or a list. By suffix: ``.json`` (canvas from the file),
    ``.npy`` (canvas ``canvas`` (W, H), default the video size), anything else
    an official Tora point file (one track, 256 x 256 canvas). Each file is
    checked against its canvas, rescaled (``rescale_tracks``) and resampled
    (``resample_tracks``) on its own, so files may differ in length.
    Returns ``[N, num_frames, 2]`` float32, the tracks of all files in order.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ValueError("load_tracks: at least one trajectory file expected, got none")
    loaded = []
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            tracks, file_canvas = read_tracks_json(path)
        elif suffix == ".npy":
            tracks, file_canvas = read_tracks_npy(path), canvas or (width, height)
        else:
            tracks, file_canvas = read_tora_point_file(path), TORA_CANVAS
        check_tracks_in_canvas(tracks, file_canvas, str(path))
        tracks = rescale_tracks(tracks, file_canvas, (width, height))
        loaded.append(resample_tracks(tracks, num_frames))
    return torch.cat(loaded, dim=0)
