"""Motion compression: flow-RGB videos -> motion latents on the video latent grid.

Tora (arXiv 2407.21705, Table 5) compares three ways to bring the flow-RGB
motion video ``[B, 3, T, H, W]`` (T = 4k+1) down to the video VAE's latent grid
``[k+1, H/8, W/8]``: frame sampling (FVD 581, TrajError 27.61), average pooling
(558, 20.97) and a 3D motion VAE (513, 14.25). The VAE variant serves both the
dedicated motion VAE and the reused video VAE; only the checkpoint differs.

The two pooling encoders have no parameters. Their 3 colour channels are
mapped to ``out_channels`` by cyclic repetition (channel i = colour i mod 3):
the Trajectory Extractor starts with a learned convolution, so a learned 1x1
projection here would add nothing it cannot learn itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import reduce
from torch import nn

if TYPE_CHECKING:
    from tora.models.video_vae import VideoVAE


class MotionEncoder(nn.Module):
    """Interface: ``encode(motion_rgb [B, 3, T, H, W] in [-1, 1]) -> latents [B, C, k+1, H/8, W/8]``."""

    def encode(self, motion_rgb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class VAEMotionEncoder(MotionEncoder):
    """A frozen video VAE: ``encode`` returns its normalised latents, without gradients.

    Used for both the dedicated motion VAE and the reused video VAE.
    """

    def __init__(self, vae: VideoVAE):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VAEMotionEncoder:
        """Keep the frozen VAE in eval mode whatever the parent module does."""
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode(self, motion_rgb: torch.Tensor) -> torch.Tensor:
        return self.vae.encode_latents(motion_rgb)


class PoolingMotionEncoder(MotionEncoder):
    """Shared part of the parameter-free encoders: temporal reduction, spatial mean pool, channels.

    Subclasses define ``reduce_time([B, 3, 4k+1, H, W]) -> [B, 3, k+1, H, W]``.

    Args:
        out_channels: latent channels C to produce (the video VAE's, 4).
        spatial_factor: spatial compression of the video VAE (8).
        temporal_factor: temporal compression of the video VAE (4).
    """

    def __init__(self, out_channels: int = 4, spatial_factor: int = 8, temporal_factor: int = 4):
        super().__init__()
        self.out_channels = out_channels
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor

    def reduce_time(self, motion_rgb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, motion_rgb: torch.Tensor) -> torch.Tensor:
        _, channels, frames, height, width = motion_rgb.shape
        if (
            channels != 3
            or (frames - 1) % self.temporal_factor
            or height % self.spatial_factor
            or width % self.spatial_factor
        ):
            raise ValueError(
                f"{type(self).__name__}: motion RGB of shape {tuple(motion_rgb.shape)}; expected "
                f"[B, 3, T, H, W] with T = {self.temporal_factor}k+1 and H, W divisible by {self.spatial_factor}"
            )
        pooled = reduce(
            self.reduce_time(motion_rgb),
            "b c t (h p) (w q) -> b c t h w",
            "mean",
            p=self.spatial_factor,
            q=self.spatial_factor,
        )
        channel_of_output = torch.arange(self.out_channels, device=pooled.device) % 3
        return pooled[:, channel_of_output]


class AvgPoolMotionEncoder(PoolingMotionEncoder):
    """Causal temporal mean: frame 0 alone, then the mean of each group of 4 frames (1-4, 5-8, ...)."""

    def reduce_time(self, motion_rgb: torch.Tensor) -> torch.Tensor:
        groups = reduce(
            motion_rgb[:, :, 1:], "b c (t n) h w -> b c t h w", "mean", n=self.temporal_factor
        )
        return torch.cat([motion_rgb[:, :, :1], groups], dim=2)


class FrameSamplingMotionEncoder(PoolingMotionEncoder):
    """Keep frames 0, 4, 8, ... (the last frame of each causal group of 4)."""

    def reduce_time(self, motion_rgb: torch.Tensor) -> torch.Tensor:
        return motion_rgb[:, :, :: self.temporal_factor]


VAE_KINDS = ("motion_vae", "video_vae")
POOLING_ENCODERS = {"avg_pool": AvgPoolMotionEncoder, "frame_sampling": FrameSamplingMotionEncoder}


def build_motion_encoder(
    kind: str,
    out_channels: int = 4,
    vae: VideoVAE | None = None,
    spatial_factor: int = 8,
    temporal_factor: int = 4,
) -> MotionEncoder:
    """Construct a motion encoder by name.

    ``motion_vae`` and ``video_vae`` wrap the ``vae`` passed in (the name says
    which checkpoint it holds); ``avg_pool`` and ``frame_sampling`` use
    ``out_channels``, ``spatial_factor`` and ``temporal_factor``.
    """
    if kind in VAE_KINDS:
        if vae is None:
            raise ValueError(
                f"build_motion_encoder: kind {kind!r} needs a CausalVAE3D passed as vae="
            )
        return VAEMotionEncoder(vae)
    if kind not in POOLING_ENCODERS:
        raise ValueError(
            f"unknown motion encoder kind {kind!r}; valid options: "
            f"{', '.join(VAE_KINDS + tuple(POOLING_ENCODERS))}"
        )
    return POOLING_ENCODERS[kind](out_channels, spatial_factor, temporal_factor)
