"""Sparse training tracks drawn from dense optical flow (Tora stage 2).

As in the Tora port: candidate points on a grid, chosen with probability
proportional to the flow magnitude, then chained frame to frame through the
flow so each becomes a track.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange


def _grid_candidates(
    height: int, width: int, stride: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Grid points ``[M, 2]`` (x, y, integer pixels) with spacing ``stride`` and a
    random offset in ``[0, stride)`` per axis (capped by the frame so M >= 1)."""
    offset_x = int(torch.randint(min(stride, width), (1,), generator=generator))
    offset_y = int(torch.randint(min(stride, height), (1,), generator=generator))
    xs = torch.arange(offset_x, width, stride)
    ys = torch.arange(offset_y, height, stride)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


def sample_tracks_from_flow(
    flow: torch.Tensor | np.ndarray,
    max_tracks: int,
    stride: int,
    generator: torch.Generator | None = None,
    min_tracks: int = 1,
) -> torch.Tensor:
    """Draw tracks ``[N, T, 2]`` (x, y pixels) from forward flow ``[T-1, H, W, 2]``.

    1. Candidates: a grid with spacing ``stride`` and a random offset.
    2. ``N`` drawn uniformly in ``[min_tracks, max_tracks]``, capped by the
       number of candidates with non-zero weight.
    3. ``N`` candidates chosen without replacement, with probability
       proportional to the flow magnitude at the candidate in the FIRST
       frame's flow (where the track starts; a point still at rest then gets no
       track even if it moves later); uniform when that flow is all zero.
    4. Chained: ``p_{t+1} = p_t + flow[t](p_t)`` with bilinear sampling
       (``grid_sample``, ``align_corners=True`` so pixel centres sit at integer
       coordinates), clamped into the frame.

    All randomness comes from ``generator`` (CPU), so a seeded generator gives
    the same tracks. The result is float32 on ``flow``'s device.
    """
    flow = torch.as_tensor(flow).float()
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(
            f"sample_tracks_from_flow: flow [T-1, H, W, 2] expected, got {list(flow.shape)}"
        )
    if not 1 <= min_tracks <= max_tracks or stride < 1:
        raise ValueError(
            "sample_tracks_from_flow: 1 <= min_tracks <= max_tracks and stride >= 1 expected, "
            f"got min_tracks={min_tracks}, max_tracks={max_tracks}, stride={stride}"
        )
    num_steps, height, width, _ = flow.shape
    candidates = _grid_candidates(height, width, stride, generator)
    if num_steps > 0:
        magnitude = torch.linalg.vector_norm(flow[0], dim=-1).cpu()
        weights = magnitude[candidates[:, 1], candidates[:, 0]].double()
    else:
        weights = torch.zeros(len(candidates), dtype=torch.float64)
    if not (weights > 0).any():
        weights = torch.ones_like(weights)
    available = int((weights > 0).sum())
    count = int(torch.randint(min_tracks, max_tracks + 1, (1,), generator=generator))
    chosen = torch.multinomial(weights, min(count, available), generator=generator)

    position = candidates[chosen].float().to(flow.device)
    upper = torch.tensor([width - 1, height - 1], dtype=torch.float32, device=flow.device)
    frame_size = upper.clamp(min=1)
    images = rearrange(flow, "t h w xy -> t xy h w")
    positions = [position]
    for step in range(num_steps):
        grid = rearrange(2 * position / frame_size - 1, "n xy -> 1 1 n xy")
        sampled = F.grid_sample(images[step : step + 1], grid, mode="bilinear", align_corners=True)
        displacement = rearrange(sampled, "1 xy 1 n -> n xy")
        position = torch.minimum(torch.clamp(position + displacement, min=0), upper)
        positions.append(position)
    return torch.stack(positions, dim=1)
