"""Motion guidance for CogVideoX: a Trajectory Extractor and one fuser per transformer block.

Two extractor layouts:

- ``release``: the alibaba/Tora extractor (``sat/sgm/modules/traj_module.py``,
  ``TrajExtractor(nums_rb=2, cin=16, channels=[128] * layers, sk=True)``): 2 x 2 patchify
  (channel order c, p, q), ``conv_in`` 3 x 3, then per block 2 residual blocks
  BatchNorm -> ReLU -> conv3x3 -> BatchNorm -> ReLU -> conv3x3 (+ input), no downsampling;
- ``ours``: :class:`tora.models.trajectory_extractor.TrajectoryExtractor` (GroupNorm/SiLU).

The release's fuser is :class:`tora.models.fusers.AdaptiveNormFuser` with
``normalize_hidden=True``: ``h + GroupNorm32(h) * gamma + beta`` (its ``MGF``); the other
fuser kinds of :mod:`tora.models.fusers` plug in the same way.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from tora.models.fusers import build_fuser
from tora.models.trajectory_extractor import TrajectoryExtractor

EXTRACTORS = ("release", "ours")


class ReleaseResidualBlock(nn.Module):
    """``x + block2(relu(bn2(block1(relu(bn1(x))))))``; keys ``bn1, block1, bn2, block2``
    as the release's ``ResnetBlock(sk=True)``. Shapes: ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1(self.act(self.bn1(x)))
        return x + self.block2(self.act(self.bn2(h)))


class ReleaseTrajectoryExtractor(nn.Module):
    """The release's extractor: ``[B, Cm, T, h, w] -> num_features x [B, Cf, T, h/p, w/p]``.

    Args:
        in_channels: motion latent channels (16: the CogVideoX VAE's).
        patch_size: the backbone's ``(1, p, p)``.
        feature_channels: 128 in the release.
        num_features: one per transformer block.
        blocks_per_level: residual blocks between two features (2 in the release).
    """

    def __init__(
        self,
        in_channels: int = 16,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        feature_channels: int = 128,
        num_features: int = 42,
        blocks_per_level: int = 2,
    ):
        super().__init__()
        if patch_size[0] != 1:
            raise ValueError(
                f"ReleaseTrajectoryExtractor: patch_size {patch_size}; (1, p, p) expected"
            )
        self.patch = patch_size[1]
        self.blocks_per_level = blocks_per_level
        self.conv_in = nn.Conv2d(in_channels * self.patch**2, feature_channels, 3, padding=1)
        self.body = nn.ModuleList(
            ReleaseResidualBlock(feature_channels) for _ in range(num_features * blocks_per_level)
        )
        for module in self.modules():  # the release's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, motion_latents: torch.Tensor) -> list[torch.Tensor]:
        batch, _, _, height, width = motion_latents.shape
        if height % self.patch or width % self.patch:
            raise ValueError(
                f"ReleaseTrajectoryExtractor: motion latents {tuple(motion_latents.shape)} must have "
                f"h and w divisible by the patch size {self.patch}"
            )
        x = rearrange(
            motion_latents, "b c t (h p) (w q) -> (b t) (c p q) h w", p=self.patch, q=self.patch
        )
        x = self.conv_in(x)
        features = []
        for level in range(len(self.body) // self.blocks_per_level):
            for block in self.body[
                level * self.blocks_per_level : (level + 1) * self.blocks_per_level
            ]:
                x = block(x)
            features.append(rearrange(x, "(b t) c h w -> b c t h w", b=batch))
        return features


class CogVideoXMotionGuidance(nn.Module):
    """Trajectory Extractor + one fuser per CogVideoX block (``fusers[i]`` fuses into block i).

    ``extract(motion_latents [B, Cm, T, h, w])`` gives one feature ``[B, Cf, T, H, W]`` per
    block on the token grid; ``fuse(index, h, feature, T, H, W)`` applies block ``index``'s
    fuser to its video tokens ``h [B, T*H*W, C]``.

    Args:
        hidden_size, depth: the backbone's.
        latent_channels: motion latent channels.
        patch_size: the backbone's ``(1, p, p)``.
        fuser: fuser kind (:func:`tora.models.fusers.build_fuser`).
        extractor: ``release`` or ``ours`` (see the module docstring).
        placement: ``all``: every CogVideoX block hosts a fuser (it has no spatial or
            temporal blocks to choose from).
        feature_channels, blocks_per_level: the extractor's.
        num_groups: GroupNorm groups of ``ours`` extractor.
        fuser_kwargs: extra keyword arguments for every fuser.
    """

    def __init__(
        self,
        hidden_size: int,
        depth: int,
        latent_channels: int = 16,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        fuser: str = "adaptive_norm",
        extractor: str = "release",
        placement: str = "all",
        feature_channels: int = 128,
        blocks_per_level: int = 2,
        num_groups: int = 32,
        fuser_kwargs: dict | None = None,
    ):
        super().__init__()
        if placement != "all":
            raise ValueError(
                f"model.fuser.placement {placement!r}: CogVideoX blocks are joint spatio-temporal "
                "blocks, 'all' expected (one fuser per block, as the release)"
            )
        if extractor not in EXTRACTORS:
            raise ValueError(f"model.fuser.extractor {extractor!r}: one of {EXTRACTORS} expected")
        self.extractor: nn.Module
        if extractor == "release":
            self.extractor = ReleaseTrajectoryExtractor(
                latent_channels, patch_size, feature_channels, depth, blocks_per_level
            )
        else:
            self.extractor = TrajectoryExtractor(
                latent_channels, patch_size, feature_channels, depth, blocks_per_level, num_groups
            )
        self.fusers = nn.ModuleList(
            build_fuser(fuser, hidden_size, feature_channels, **(fuser_kwargs or {}))
            for _ in range(depth)
        )

    def extract(self, motion_latents: torch.Tensor) -> list[torch.Tensor]:
        """Features in the extractor's dtype (latents may come float32 into a bf16 model)."""
        return self.extractor(motion_latents.to(next(self.extractor.parameters()).dtype))

    def fuse(
        self, index: int, h: torch.Tensor, feature: torch.Tensor, T: int, H: int, W: int
    ) -> torch.Tensor:
        return self.fusers[index](h, feature, T, H, W)
