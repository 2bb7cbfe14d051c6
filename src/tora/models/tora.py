"""Tora = an STDiT3 backbone + motion guidance (Trajectory Extractor and
Motion-guidance Fusers), the composition of the paper's Fig. 2."""

from __future__ import annotations

import torch
from torch import nn

from tora.models.fusers import MotionGuidance
from tora.models.stdit3 import STDiT3


class Tora(nn.Module):
    """Backbone with optional motion guidance.

    Without ``motion_guidance`` (or with ``motion_latents=None``) this is exactly
    the base text-to-video model; the fusers are zero-initialised, so at
    initialisation the two agree bit for bit.
    """

    def __init__(self, backbone: STDiT3, motion_guidance: MotionGuidance | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.motion_guidance = motion_guidance

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        motion_latents: torch.Tensor | None = None,
        motion_features: list[torch.Tensor] | None = None,
        **backbone_kwargs,
    ) -> torch.Tensor:
        """x: ``[B, C, T, H, W]`` video latents; motion_latents: ``[B, Cm, T, H, W]``
        on the same latent grid, or ``motion_features`` already extracted from them
        (samplers extract once, not at every step); returns the backbone output
        ``[B, C_out, T, H, W]``."""
        fuse = None
        if self.motion_guidance is not None and motion_latents is not None:
            motion_features = self.motion_guidance.extract(motion_latents)
        if self.motion_guidance is not None and motion_features is not None:
            fuse = self.motion_guidance.make_fuse_callback(motion_features)
        return self.backbone(x, timestep, y, mask=mask, fuse=fuse, **backbone_kwargs)
