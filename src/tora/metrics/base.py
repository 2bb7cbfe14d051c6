"""What every metric shares: the video layouts it accepts and the "unavailable" result.

Two video layouts are accepted wherever a metric takes videos:

- uint8 frames ``[T, H, W, 3]`` (or a batch ``[B, T, H, W, 3]``), numpy or torch,
  as decoded from a file or a shard;
- float ``[3, T, H, W]`` (or ``[B, 3, T, H, W]``) in ``[-1, 1]``, as a VAE
  decodes them; values outside ``[-1, 1]`` are clipped.

A metric whose feature model is not configured is a :class:`MetricUnavailable`,
which reports why instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tora.utils.video import VideoLike, describe, is_float, is_uint8


def as_video_batch(videos: VideoLike) -> torch.Tensor:
    """One video or a batch -> float32 ``[B, 3, T, H, W]`` in ``[-1, 1]`` (same device).

    Accepts uint8 ``[T, H, W, 3]`` / ``[B, T, H, W, 3]`` or float ``[3, T, H, W]`` /
    ``[B, 3, T, H, W]`` in ``[-1, 1]``.
    """
    if isinstance(videos, np.ndarray | torch.Tensor):
        tensor = torch.as_tensor(videos)
        if is_uint8(videos) and tensor.ndim in (4, 5) and tensor.shape[-1] == 3:
            batch = tensor.reshape(-1, *tensor.shape[-4:]).permute(0, 4, 1, 2, 3)
            return batch.float() / 127.5 - 1
        if is_float(videos) and tensor.ndim in (4, 5) and tensor.shape[-4] == 3:
            return tensor.reshape(-1, *tensor.shape[-4:]).float().clamp(-1, 1)
    raise ValueError(
        "videos: uint8 [T, H, W, 3] / [B, T, H, W, 3] or float [3, T, H, W] / [B, 3, T, H, W] "
        f"in [-1, 1] expected, got {describe(videos)}"
    )


@dataclass(frozen=True)
class MetricUnavailable:
    """Stands in for a metric whose feature model is not configured.

    Calling it returns itself, so an evaluation loop can call every metric the
    same way and log ``as_dict()`` - never a made-up number.
    """

    name: str
    reason: str
    available = False

    def __call__(self, *args: Any, **kwargs: Any) -> MetricUnavailable:
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"available": False, "reason": self.reason}
