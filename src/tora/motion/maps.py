"""Displacement maps: tracks or dense flow -> ``[..., T, H, W, 2]``, and their smoothing.

Tora (arXiv 2407.21705, trajectory extractor input): for frame t >= 1 the displacement
``p_t - p_{t-1}`` of every track is written at pixel ``p_{t-1}``; frame 0 is
zero; all tracks of a clip share one map, which is then Gaussian-smoothed per
frame so that a sparse point becomes a blob the motion VAE can see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack


def tracks_to_displacement_map(
    tracks: torch.Tensor,
    height: int,
    width: int,
    track_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rasterise tracks ``[..., N, T, 2]`` (x, y pixels) into a map ``[..., T, H, W, 2]``.

    ``map[..., t, y, x] = p_t - p_{t-1}`` where ``(x, y)`` is ``p_{t-1}`` rounded to
    the nearest pixel and clamped into the frame; frame 0 is zero. Where several
    tracks start a step on the same pixel their displacements are SUMMED
    (scatter-add), so coincident tracks moving together read as stronger motion;
    the Tora port overwrites instead, keeping the last track's.
    ``track_mask [..., N]`` (bool, True = real track) drops padding tracks.
    """
    if tracks.ndim < 3 or tracks.shape[-1] != 2:
        raise ValueError(
            f"tracks_to_displacement_map: tracks [..., N, T, 2] expected, got {list(tracks.shape)}"
        )
    packed_tracks, packed_shape = pack([tracks], "* n t xy")
    batch, _, num_frames, _ = packed_tracks.shape
    starts = packed_tracks[:, :, :-1]
    displacement = packed_tracks[:, :, 1:] - starts
    if track_mask is not None:
        if track_mask.shape != tracks.shape[:-2]:
            raise ValueError(
                f"tracks_to_displacement_map: track_mask of shape {list(tracks.shape[:-2])} "
                f"expected for tracks {list(tracks.shape)}, got {list(track_mask.shape)}"
            )
        keep = rearrange(track_mask.to(torch.bool), "... n -> (...) n 1 1")
        displacement = torch.where(keep, displacement, torch.zeros_like(displacement))
    columns = starts[..., 0].round().long().clamp(0, width - 1)
    rows = starts[..., 1].round().long().clamp(0, height - 1)
    batch_index = torch.arange(batch, device=tracks.device)[:, None, None]
    frame_index = torch.arange(1, num_frames, device=tracks.device)[None, None, :]
    maps = tracks.new_zeros(batch, num_frames, height, width, 2)
    maps.index_put_(
        (
            batch_index.expand_as(rows),
            frame_index.expand_as(rows),
            rows,
            columns,
        ),
        displacement,
        accumulate=True,
    )
    [maps] = unpack(maps, packed_shape, "* t h w xy")
    return maps


def flow_to_displacement_map(flow: torch.Tensor) -> torch.Tensor:
    """Dense forward flow ``[..., T-1, H, W, 2]`` -> map ``[..., T, H, W, 2]``.

    Prepends the zero frame 0, so ``map[t]`` is the motion from t-1 to t written
    at the pixel of frame t-1, as for tracks.
    """
    if flow.ndim < 4 or flow.shape[-1] != 2:
        raise ValueError(
            f"flow_to_displacement_map: flow [..., T-1, H, W, 2] expected, got {list(flow.shape)}"
        )
    return torch.cat([torch.zeros_like(flow[..., :1, :, :, :]), flow], dim=-4)


def _gaussian_kernel_1d(
    kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``exp(-x^2 / (2 sigma^2))`` for ``x`` in ``-(k//2) .. k//2``: ``[k]``, centre exactly 1."""
    offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel.to(dtype=dtype, device=device)


def gaussian_smooth(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Smooth every frame and channel of ``maps [..., H, W, C]`` with a Gaussian.

    The kernel is normalised so its PEAK weight is 1 (the Tora port's
    ``blur_kernel / blur_kernel[centre]``; MotionCtrl divides by the sum
    instead): an isolated displacement keeps its value at its own pixel and
    fades around it. Zero padding; an even ``kernel_size`` is raised to the next
    odd one. The 2D kernel is separable, so it runs as two depthwise conv2d
    passes (``k x 1`` then ``1 x k``, O(k) instead of O(k^2) per pixel), each one
    call over all leading dims; the result equals the 2D zero-padded convolution.
    """
    if kernel_size < 1 or sigma <= 0:
        raise ValueError(
            f"gaussian_smooth: kernel_size >= 1 and sigma > 0 expected, "
            f"got kernel_size={kernel_size}, sigma={sigma}"
        )
    if maps.ndim < 3:
        raise ValueError(f"gaussian_smooth: maps [..., H, W, C] expected, got {list(maps.shape)}")
    kernel_size = kernel_size + 1 - kernel_size % 2
    channels = maps.shape[-1]
    kernel = _gaussian_kernel_1d(kernel_size, sigma, maps.dtype, maps.device)
    vertical = kernel.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1)
    horizontal = kernel.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size)
    images, packed_shape = pack([maps], "* h w c")
    images = rearrange(images, "b h w c -> b c h w")
    images = F.conv2d(images, vertical, padding=(kernel_size // 2, 0), groups=channels)
    images = F.conv2d(images, horizontal, padding=(0, kernel_size // 2), groups=channels)
    [smoothed] = unpack(rearrange(images, "b c h w -> b h w c"), packed_shape, "* h w c")
    return smoothed
