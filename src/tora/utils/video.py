"""Video arrays in the two layouts the project passes around: uint8 frames ``[T, H, W, 3]``
and float ``[3, T, H, W]`` in [-1, 1] (as a VAE decodes them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

VideoLike = np.ndarray | torch.Tensor


def describe(video: Any) -> str:
    if isinstance(video, np.ndarray | torch.Tensor):
        return f"{type(video).__name__} {list(video.shape)} {video.dtype}"
    return type(video).__name__


def is_uint8(video: VideoLike) -> bool:
    return video.dtype in (np.uint8, torch.uint8)


def is_float(video: VideoLike) -> bool:
    if isinstance(video, torch.Tensor):
        return video.is_floating_point()
    return bool(np.issubdtype(video.dtype, np.floating))


def as_uint8_frames(video: VideoLike) -> np.ndarray:
    """One video -> uint8 frames ``[T, H, W, 3]`` (numpy, contiguous).

    Accepts uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]`` / ``[1, 3, T, H, W]``
    in ``[-1, 1]`` (mapped by ``round((x + 1) * 127.5)``).
    """
    if isinstance(video, np.ndarray | torch.Tensor):
        if is_uint8(video) and video.ndim == 4 and video.shape[-1] == 3:
            return np.ascontiguousarray(torch.as_tensor(video).cpu().numpy())
        if is_float(video) and video.ndim in (4, 5) and video.shape[-4] == 3:
            if video.ndim == 5 and video.shape[0] != 1:
                raise ValueError(
                    f"video: one video expected, got a batch of {video.shape[0]} ({describe(video)})"
                )
            frames = torch.as_tensor(video).detach().float().cpu().reshape(video.shape[-4:])
            frames = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return np.ascontiguousarray(frames.permute(1, 2, 3, 0).numpy())
    raise ValueError(
        "video: uint8 [T, H, W, 3] or float [3, T, H, W] / [1, 3, T, H, W] in [-1, 1] expected, "
        f"got {describe(video)}"
    )
