"""Per-clip transforms on decoded samples: frame windows and resize + centre crop.

Frames, flow and tracks are transformed together so they stay consistent: a
window of ``T`` frames takes the ``T - 1`` flow fields between them and the same
``T`` points of every track; a resize scales flow vectors and track positions
by the per-axis resize factors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tora.data.schema import ClipSample
from tora.motion.tracks import rescale_tracks


def frame_window_start(
    available: int, num_frames: int, generator: np.random.Generator | None = None
) -> int:
    """First frame of a window of ``num_frames`` out of ``available`` frames.

    Uniformly random with a ``generator`` (training), centred without one
    (validation: the same window every time).
    """
    if available < num_frames:
        raise ValueError(f"clip has {available} frames, at least {num_frames} expected")
    if generator is None:
        return (available - num_frames) // 2
    return int(generator.integers(0, available - num_frames + 1))


def take_frame_window(
    clip: ClipSample, start: int, num_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames ``[start, start + num_frames)`` of ``clip`` with their flow and track points.

    Returns ``(frames [T, H, W, 3], flow [T-1, H, W, 2], tracks [N, T, 2])``.
    """
    stop = start + num_frames
    if start < 0 or stop > len(clip.frames):
        raise ValueError(
            f"clip {clip.key}: window [{start}, {stop}) outside its {len(clip.frames)} frames"
        )
    return clip.frames[start:stop], clip.flow[start : stop - 1], clip.tracks[:, start:stop]


def resize_center_crop(
    video: torch.Tensor,
    flow: torch.Tensor,
    tracks: torch.Tensor,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resize so the clip covers ``size`` = (H, W), then crop the centre.

    ``video [T, C, H, W]`` float, ``flow [T-1, H, W, 2]``, ``tracks [N, T, 2]``.
    Resizing is bilinear with antialiasing, all frames in one call. Flow vectors
    are multiplied by the per-axis factors (W'/W, H'/H); track positions map
    pixel-centre aligned, ``x' = (x + 0.5) * W'/W - 0.5``, then shift by the crop
    offset. Points that leave the crop are kept (outside the canvas).
    """
    height, width = video.shape[-2:]
    out_height, out_width = size
    if (height, width) == (out_height, out_width):
        return video, flow, tracks
    scale = max(out_height / height, out_width / width)
    new_height = max(out_height, round(height * scale))
    new_width = max(out_width, round(width * scale))
    top = (new_height - out_height) // 2
    left = (new_width - out_width) // 2
    crop = (slice(top, top + out_height), slice(left, left + out_width))

    def resize(images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(
            images,
            size=(new_height, new_width),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return resized[..., crop[0], crop[1]]

    video = resize(video)
    factors = torch.tensor([new_width / width, new_height / height], dtype=flow.dtype)
    flow = resize(flow.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) * factors
    offset = torch.tensor([left, top], dtype=tracks.dtype)
    tracks = rescale_tracks(tracks, (width, height), (new_width, new_height)) - offset
    return video, flow.contiguous(), tracks
