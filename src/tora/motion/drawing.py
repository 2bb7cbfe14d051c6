"""Trajectories drawn by clicking on a canvas (the demo page, or a script).

A ``Sketch`` holds up to ``max_tracks`` tracks of clicked key points on a ``W x H``
canvas with the video's aspect ratio (``canvas_size``) and turns them into tracks
``[N, T, 2]`` of a video of any size and length: canvas -> video pixels by
``rescale_tracks`` (pixel-centre aligned, any aspect ratio), then ``resample_tracks``
to the frame count. Key points are reached at evenly spaced times (linear in between,
as the Tora demo's ``process_points``), so clicking one spot twice holds still.

As JSON a sketch is the tracks file format with tracks of any lengths:
``{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from tora.motion.presets import PRESET_POINTS, preset_track
from tora.motion.tracks import (
    TrackFormatError,
    outside_canvas,
    parse_canvas,
    parse_point,
    resample_tracks,
    rescale_tracks,
)

DEFAULT_MAX_TRACKS = 8

Point = tuple[float, float]


def canvas_size(video_size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(W, H) of a canvas with the aspect ratio of a ``video_size`` (W, H) video and
    ``long_side`` pixels along its longer side."""
    width, height = video_size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class Sketch:
    """Tracks of key points in canvas pixels; the last track is the one being drawn."""

    canvas: tuple[int, int]
    tracks: list[list[Point]] = field(default_factory=list)
    max_tracks: int = DEFAULT_MAX_TRACKS

    def check_point(self, x: float, y: float) -> None:
        width, height = self.canvas
        if outside_canvas(np.array([x, y]), self.canvas):
            raise ValueError(f"point ({x:g}, {y:g}) is outside the {width}x{height} canvas")

    def add_point(self, x: float, y: float) -> None:
        """Extend the current track (the first click starts one)."""
        self.check_point(x, y)
        if not self.tracks:
            self.tracks.append([])
        self.tracks[-1].append((float(x), float(y)))

    def new_track(self) -> None:
        """Start a new track; the next clicks extend it."""
        if self.tracks and not self.tracks[-1]:
            return
        if len(self.tracks) >= self.max_tracks:
            raise ValueError(
                f"at most {self.max_tracks} trajectories: remove one or clear to start another"
            )
        self.tracks.append([])

    def add_preset(self, name: str, num_points: int = PRESET_POINTS) -> None:
        """Add the preset path ``name`` as a track. A current track of one point is its
        start (the path moves there) and is replaced; an empty one is filled."""
        current = self.tracks[-1] if self.tracks else []
        start = current[0] if len(current) == 1 else None
        if len(current) > 1:
            self.new_track()
        points = preset_track(name, self.canvas, num_points, start=start)
        path = [(round(float(x), 2), round(float(y), 2)) for x, y in points]
        if self.tracks:
            self.tracks[-1] = path
        else:
            self.tracks.append(path)

    def undo(self) -> None:
        """Remove the last point (a track left empty goes with it)."""
        if self.tracks and self.tracks[-1]:
            self.tracks[-1].pop()
        if self.tracks and not self.tracks[-1]:
            self.tracks.pop()

    def remove_track(self) -> None:
        if self.tracks:
            self.tracks.pop()

    def clear(self) -> None:
        self.tracks.clear()

    @property
    def drawn(self) -> list[list[Point]]:
        """The tracks with at least one point."""
        return [track for track in self.tracks if track]

    def to_tracks(self, video_size: tuple[int, int], num_frames: int) -> torch.Tensor:
        """Tracks ``[N, num_frames, 2]`` in pixels of a ``video_size`` (W, H) video
        (``N = 0``: nothing drawn). Every drawn track needs 2 points or more. Points in
        the outer half pixel of the video go onto its outermost pixel centres (the
        pipeline's frame is ``[0, W - 1] x [0, H - 1]``)."""
        drawn = self.drawn
        if len(drawn) > self.max_tracks:
            raise ValueError(f"at most {self.max_tracks} trajectories, got {len(drawn)}")
        for index, track in enumerate(drawn, start=1):
            if len(track) < 2:
                raise ValueError(
                    f"trajectory {index} has 1 point: a trajectory needs at least 2 points"
                )
        if not drawn:
            return torch.zeros(0, num_frames, 2)
        upper = torch.tensor([video_size[0] - 1, video_size[1] - 1], dtype=torch.float32)
        tracks = [
            resample_tracks(
                rescale_tracks(torch.tensor([track], dtype=torch.float32), self.canvas, video_size),
                num_frames,
            )
            for track in drawn
        ]
        return torch.cat(tracks).clamp(min=0).minimum(upper)

    def rescaled(self, canvas: tuple[int, int]) -> Sketch:
        """The same sketch on another canvas (e.g. video pixels -> the page's canvas)."""
        tracks = [
            [
                (round(x, 2), round(y, 2))
                for x, y in rescale_tracks(
                    torch.tensor(track, dtype=torch.float64), self.canvas, canvas
                )
                .reshape(-1, 2)
                .tolist()
            ]
            for track in self.tracks
        ]
        return Sketch(canvas, tracks, self.max_tracks)

    def to_json(self) -> str:
        return json.dumps({"canvas": list(self.canvas), "tracks": self.tracks})

    @classmethod
    def from_json(
        cls, text: str, max_tracks: int = DEFAULT_MAX_TRACKS, source: str = "trajectories"
    ) -> Sketch:
        """Parse ``{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}``; errors name
        ``source``, the track and the point."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise TrackFormatError(
                f"{source} line {error.lineno}: invalid JSON ({error.msg})"
            ) from error
        if not isinstance(document, dict) or not {"canvas", "tracks"} <= document.keys():
            raise TrackFormatError(
                f'{source}: {{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}} expected'
            )
        sketch = cls(parse_canvas(document["canvas"], source), max_tracks=max_tracks)
        raw_tracks = document["tracks"]
        if not isinstance(raw_tracks, list):
            raise TrackFormatError(f"{source}: 'tracks' list expected, got {raw_tracks!r:.80}")
        if len(raw_tracks) > max_tracks:
            raise TrackFormatError(
                f"{source}: at most {max_tracks} trajectories, got {len(raw_tracks)}"
            )
        for index, raw_track in enumerate(raw_tracks, start=1):
            if not isinstance(raw_track, list):
                raise TrackFormatError(
                    f"{source} trajectory {index}: list of [x, y] points expected, "
                    f"got {raw_track!r:.80}"
                )
            track = [
                parse_point(point, f"{source} trajectory {index} point {number}")
                for number, point in enumerate(raw_track, start=1)
            ]
            for number, (x, y) in enumerate(track, start=1):
                try:
                    sketch.check_point(x, y)
                except ValueError as error:
                    raise TrackFormatError(
                        f"{source} trajectory {index} point {number}: {error}"
                    ) from None
            sketch.tracks.append(track)
        return sketch
