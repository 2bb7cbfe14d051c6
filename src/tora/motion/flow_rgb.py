"""Displacement maps -> "flow-RGB" images, the input of the motion VAE.

The Middlebury colour wheel (Baker et al., "A Database and Evaluation
Methodology for Optical Flow", ICCV 2007): hue is the direction, saturation the
length of a displacement, zero is white. Same wheel and interpolation as
``torchvision.utils.flow_to_image``, but batched over any leading dims, with a
choice of normalisation, continuous output (no uint8 rounding) and values in
[-1, 1].

Why not call torchvision: it always divides by the largest norm in whatever
tensor it is handed. The Tora port hands it 2-frame chunks in training and the
whole clip at inference, so the same motion gets different colours in the two.
Here ``motion_maps_to_rgb`` is the one function both use, with one fixed scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from tora.motion.maps import gaussian_smooth, tracks_to_displacement_map

MIDDLEBURY_SEGMENTS = (
    (15, 0, 1, +1),  # red -> yellow
    (6, 1, 0, -1),  # yellow -> green
    (4, 1, 2, +1),  # green -> cyan
    (11, 2, 1, -1),  # cyan -> blue
    (13, 2, 0, +1),  # blue -> magenta
    (6, 0, 2, -1),  # magenta -> red
)
"""(length, channel held at 255, channel ramped, ramp direction) per wheel segment."""


def middlebury_colorwheel() -> torch.Tensor:
    """The 55-colour Middlebury wheel ``[55, 3]``, RGB in [0, 255]."""
    segments = []
    for length, full_channel, ramp_channel, direction in MIDDLEBURY_SEGMENTS:
        segment = torch.zeros(length, 3)
        segment[:, full_channel] = 255
        ramp = torch.floor(255 * torch.arange(length) / length)
        segment[:, ramp_channel] = ramp if direction > 0 else 255 - ramp
        segments.append(segment)
    return torch.cat(segments)


def flow_to_rgb(maps: torch.Tensor, max_displacement: float | None) -> torch.Tensor:
    """Colour displacements ``maps [..., H, W, 2]`` (pixels) -> ``[..., 3, H, W]`` in [-1, 1].

    ``max_displacement``: a length in pixels that maps to the fully saturated
    wheel colour; longer displacements are clamped to it (direction kept).
    ``None`` divides by the largest norm per clip instead, as torchvision does:
    over the last three dims of the norm (T, H, W) for inputs of 4 or more dims,
    over (H, W) for a single ``[H, W, 2]`` map. Zero displacement is exactly
    white (+1).
    """
    if maps.ndim < 3 or maps.shape[-1] != 2:
        raise ValueError(f"flow_to_rgb: maps [..., H, W, 2] expected, got {list(maps.shape)}")
    flow = maps.float()
    norm = torch.linalg.vector_norm(flow, dim=-1)
    if max_displacement is None:
        clip_dims = (-3, -2, -1) if maps.ndim >= 4 else (-2, -1)
        scale = norm.amax(dim=clip_dims, keepdim=True) + torch.finfo(flow.dtype).eps
    elif max_displacement > 0:
        scale = torch.tensor(float(max_displacement), device=flow.device)
    else:
        raise ValueError(
            f"flow_to_rgb: max_displacement > 0 or None expected, got {max_displacement}"
        )
    radius = (norm / scale).clamp(max=1)
    wheel = middlebury_colorwheel().to(flow.device) / 255
    num_colors = wheel.shape[0]
    angle = torch.atan2(-flow[..., 1], -flow[..., 0]) / torch.pi
    position = (angle + 1) / 2 * (num_colors - 1)
    lower = position.floor().long()
    upper = (lower + 1) % num_colors
    fraction = (position - lower)[..., None]
    color = (1 - fraction) * wheel[lower] + fraction * wheel[upper]
    color = 1 - radius[..., None] * (1 - color)
    rgb = rearrange(2 * color - 1, "... h w c -> ... c h w")
    return rgb.to(maps.dtype) if maps.is_floating_point() else rgb


@dataclass
class MotionRGBConfig:
    """Smoothing and colour scale of the motion condition, in pixels at a reference size.

    ``reference_size`` is a short side in pixels (480 for the Tora port's
    480 x 720 clips); kernel size, sigma and ``max_displacement_ref`` scale
    linearly from it to the clip's short side, so a trajectory drawn on a
    256-px canvas looks the same at 64 px (tiny world) and at 480 px.
    Defaults: kernel 99 and sigma 10 from the Tora port; ``max_displacement_ref``
    40 px per frame at 480 px, about the 90th percentile of the per-frame step
    of the port's example trajectories resampled to 49 frames at 480 x 720
    (medians 15-25 px), so typical motion spans most of the wheel's saturation
    range and only the fastest strokes clamp. ``None`` switches to per-clip
    normalisation (``flow_to_rgb``).
    """

    kernel_size_ref: int = 99
    sigma_ref: float = 10.0
    max_displacement_ref: float | None = 40.0
    reference_size: int = 480

    def scaled_for(self, short_side: int) -> tuple[int, float, float | None]:
        """(odd kernel size, sigma, max displacement) for a clip whose short side is ``short_side``."""
        scale = short_side / self.reference_size
        kernel_size = max(1, round(self.kernel_size_ref * scale))
        kernel_size += 1 - kernel_size % 2
        max_displacement = (
            None if self.max_displacement_ref is None else self.max_displacement_ref * scale
        )
        return kernel_size, self.sigma_ref * scale, max_displacement


def motion_maps_to_rgb(
    maps: torch.Tensor, config: MotionRGBConfig, smooth: bool = True
) -> torch.Tensor:
    """Displacement maps ``[B, T, H, W, 2]`` -> motion condition ``[B, 3, T, H, W]`` in [-1, 1].

    The ONE conversion used by motion-VAE training, stage 1, stage 2, sampling
    and evaluation. ``smooth`` applies ``gaussian_smooth`` (peak weight 1) with
    the config's kernel scaled to the clip; sparse track maps need it, dense
    flow does not (a peak-1 kernel would multiply dense flow by the kernel's
    sum, ~2 pi sigma^2). Normalisation: a FIXED maximum displacement
    (``config.max_displacement_ref`` scaled to the clip's short side), not the
    per-chunk or per-clip maximum, so one motion gets one colour in every clip,
    chunk, batch, training and inference, and the speed a trajectory asks for
    is kept (per-clip scaling would saturate slow and fast tracks alike).
    """
    if maps.ndim != 5 or maps.shape[-1] != 2:
        raise ValueError(
            f"motion_maps_to_rgb: maps [B, T, H, W, 2] expected, got {list(maps.shape)}"
        )
    height, width = maps.shape[2:4]
    kernel_size, sigma, max_displacement = config.scaled_for(min(height, width))
    if smooth:
        maps = gaussian_smooth(maps, kernel_size, sigma)
    return rearrange(flow_to_rgb(maps, max_displacement), "b t c h w -> b c t h w")


def tracks_to_motion_rgb(
    tracks: torch.Tensor,
    track_mask: torch.Tensor | None,
    height: int,
    width: int,
    rgb: MotionRGBConfig,
) -> torch.Tensor:
    """Sparse tracks ``[B, N, T, 2]`` -> smoothed flow-RGB ``[B, 3, T, H, W]``: the one path
    from tracks to the motion condition, in training and at inference."""
    maps = tracks_to_displacement_map(tracks, height, width, track_mask=track_mask)
    return motion_maps_to_rgb(maps, rgb, smooth=True)
