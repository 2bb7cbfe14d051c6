"""One generation of the demo page, without the page: a prompt, the drawn trajectories
(a ``Sketch`` as JSON) and an optional first frame -> the video, the video with the
tracks drawn, its TrajError, and the tracks as JSON and as official Tora point files,
all written to one folder per generation."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tora.inference import GenerationConfig, GenerationRequest, ToraPipeline
from tora.metrics import Tracker, TrajError
from tora.motion import (
    Sketch,
    draw_tracks,
    rescale_tracks,
    write_tora_point_file,
    write_tracks_json,
)
from tora.sample import read_image, save_video, slug

log = logging.getLogger(__name__)

PREVIEW_SHORT_SIDE = 256
"""Videos shown on the page are enlarged (nearest neighbour) to at least this short side."""


@dataclass
class DemoResult:
    """What one generation wrote, and its TrajError (None without tracks)."""

    folder: Path
    video: Path
    tracks_video: Path
    files: list[Path]
    trajerror: float | None
    coverage: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)


def enlarge(video: np.ndarray, short_side: int = PREVIEW_SHORT_SIDE) -> tuple[np.ndarray, int]:
    """uint8 ``[T, H, W, 3]`` repeated by an integer factor to reach ``short_side``."""
    factor = max(1, math.ceil(short_side / min(video.shape[1:3])))
    return video.repeat(factor, axis=1).repeat(factor, axis=2), factor


class DemoGenerator:
    """Generates with ``pipeline`` at ``resolution`` (H, W) into ``out_dir``, TrajError by
    ``tracker``; ``settings`` (the generation config) with the page's steps, scales, seed."""

    def __init__(
        self,
        pipeline: ToraPipeline,
        resolution: tuple[int, int],
        out_dir: str | Path,
        tracker: Tracker,
        max_tracks: int,
        settings: GenerationConfig | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.height, self.width = resolution
        self.out_dir = Path(out_dir)
        self.trajerror = TrajError(tracker)
        self.max_tracks = max_tracks
        self.base_settings = settings or GenerationConfig()
        self.count = 0

    @property
    def video_size(self) -> tuple[int, int]:
        return self.width, self.height

    def settings(
        self, steps: int, cfg_scale: float, strength: float, seed: int
    ) -> GenerationConfig:
        """The page's "strength" is the motion guidance scale; equal to the CFG scale it
        is the joint guidance, which needs no third model branch (the same video)."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps: a whole number >= 1 expected, got {steps}")
        return dataclasses.replace(
            self.base_settings,
            steps=int(steps),
            cfg_scale=float(cfg_scale),
            motion_guidance_scale=None if strength == cfg_scale else float(strength),
            seed=int(seed),
        )

    def generate(
        self,
        prompt: str,
        sketch_json: str,
        image_path: str | None = None,
        num_frames: int = 17,
        steps: int = 30,
        cfg_scale: float = 7.0,
        strength: float = 7.0,
        seed: int = 0,
        negative_prompt: str | None = None,
        step_callback: Callable[[int, int], None] | None = None,
    ) -> DemoResult:
        """Raises ``ValueError`` (or ``FileNotFoundError``) in words a user can act on."""
        if not prompt or not prompt.strip():
            raise ValueError("a prompt is needed: describe the video")
        if int(num_frames) != num_frames:
            raise ValueError(f"number of frames: a whole number expected, got {num_frames}")
        num_frames = int(num_frames)
        sketch = (
            Sketch.from_json(sketch_json, self.max_tracks)
            if sketch_json and sketch_json.strip()
            else Sketch(self.video_size)
        )
        tracks = sketch.to_tracks(self.video_size, num_frames)
        image = read_image(image_path, self.height, self.width) if image_path else None
        settings = self.settings(steps, cfg_scale, strength, seed)
        request = GenerationRequest(
            prompt.strip(), tracks if len(tracks) else None, negative_prompt or None, image
        )
        notes = []
        if not len(tracks):
            notes.append("no trajectory drawn: generated from the prompt alone")
        elif not self.pipeline.uses_motion:
            notes.append("this checkpoint has no motion guidance: the tracks are not used")

        begin = time.perf_counter()
        video = self.pipeline.generate(
            [request],
            num_frames,
            self.height,
            self.width,
            settings,
            progress=False,
            step_callback=step_callback,
        )[0]
        seconds = time.perf_counter() - begin

        self.count += 1
        folder = self.out_dir / slug(prompt, self.count)
        folder.mkdir(parents=True, exist_ok=True)
        preview, factor = enlarge(video)
        result = DemoResult(
            folder=folder,
            video=folder / "video_preview.mp4",
            tracks_video=folder / "tracks_preview.mp4",
            files=[folder / "video.mp4"],
            trajerror=None,
            coverage=None,
            seconds=seconds,
            notes=notes,
        )
        save_video(result.video, preview, settings.fps)
        save_video(result.files[0], video, settings.fps)
        if len(tracks):
            enlarged_size = (self.width * factor, self.height * factor)
            on_preview = rescale_tracks(tracks, self.video_size, enlarged_size)
            save_video(result.tracks_video, draw_tracks(preview, on_preview), settings.fps)
            result.files += self.write_tracks(folder, tracks)
            error = self.trajerror(video, tracks)
            result.trajerror, result.coverage = float(error.mean), float(error.coverage)
        else:
            save_video(result.tracks_video, preview, settings.fps)
        log.info("wrote %s (%.1f s, TrajError %s)", folder, seconds, result.trajerror)
        return result

    def write_tracks(self, folder: Path, tracks: torch.Tensor) -> list[Path]:
        """``tracks.json`` (video pixels) and ``tora_track_<n>.txt`` (256 x 256 canvas),
        both readable by ``tora.sample tracks=[...]``."""
        paths = [folder / "tracks.json"]
        write_tracks_json(paths[0], tracks, self.video_size)
        for number, track in enumerate(tracks, start=1):
            paths.append(folder / f"tora_track_{number}.txt")
            write_tora_point_file(paths[-1], track, self.video_size)
        return paths
