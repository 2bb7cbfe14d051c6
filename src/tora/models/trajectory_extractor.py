"""Trajectory Extractor (TE): motion latents -> one motion feature per fused DiT block.

Tora (arXiv 2407.21705, Sec. 3.2): the motion latents are patchified to the
DiT's token grid, then a chain of light convolutions makes one feature map per
block that hosts a Motion-guidance Fuser, f_i = Conv_i(f_{i-1}) + f_{i-1}.
The alibaba/Tora port uses PixelUnshuffle, ``conv_in`` 3x3 to 128 channels and
per level a few residual blocks (BatchNorm -> ReLU -> conv3x3) with no
downsampling. We keep its layout but use GroupNorm -> SiLU, which does not
depend on the batch size (frames are folded into the batch here).
"""

import math

import torch
from einops import rearrange
from torch import nn


class ResidualConvBlock(nn.Module):
    """x + conv3x3(SiLU(GroupNorm(x))), channels and resolution unchanged.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        if channels % num_groups != 0:
            raise ValueError(
                f"ResidualConvBlock: channels={channels} must be divisible by num_groups={num_groups}"
            )
        self.norm = nn.GroupNorm(num_groups, channels)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.act(self.norm(x)))


class TrajectoryExtractor(nn.Module):
    """Motion latents -> ``num_features`` motion feature maps on the DiT token grid.

    Args:
        in_channels: channels of the motion latents (4 for the OpenSora v1.2 VAE).
        patch_size: the DiT patch size ``(pt, ph, pw)``, (1, 2, 2) for STDiT3;
            the latents are unshuffled by it so that one feature pixel is one token.
        feature_channels: channels of every motion feature (128 in the port).
        num_features: how many features to return, one per DiT block hosting a fuser.
        blocks_per_level: residual blocks between two consecutive features.
        num_groups: GroupNorm groups in the residual blocks.

    Shapes:
        ``[B, Cm, T, h, w] -> list of num_features x [B, feature_channels, T/pt, h/ph, w/pw]``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        feature_channels: int = 128,
        num_features: int = 28,
        blocks_per_level: int = 2,
        num_groups: int = 32,
    ):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.num_features = num_features
        self.conv_in = nn.Conv2d(
            in_channels * math.prod(self.patch_size), feature_channels, kernel_size=3, padding=1
        )
        self.levels = nn.ModuleList(
            nn.Sequential(
                *(ResidualConvBlock(feature_channels, num_groups) for _ in range(blocks_per_level))
            )
            for _ in range(num_features)
        )

    def forward(self, motion_latents: torch.Tensor) -> list[torch.Tensor]:
        """``[B, Cm, T, h, w]`` -> ``num_features`` x ``[B, Cf, T_tok, H_tok, W_tok]``."""
        pt, ph, pw = self.patch_size
        _, _, t, h, w = motion_latents.shape
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"TrajectoryExtractor: motion latents of shape {tuple(motion_latents.shape)} "
                f"(T, h, w) = {(t, h, w)} must be divisible by the patch size {self.patch_size}"
            )
        batch = motion_latents.shape[0]
        x = rearrange(
            motion_latents, "b c (t r) (h p) (w q) -> (b t) (c r p q) h w", r=pt, p=ph, q=pw
        )
        x = self.conv_in(x)
        features = []
        for level in self.levels:
            x = level(x)
            features.append(rearrange(x, "(b t) c h w -> b c t h w", b=batch))
        return features
