"""OpenSora v1.2's video VAE (hpcai-tech/OpenSora-VAE-v1.2), loadable from its released file.

Source: hpcaitech/Open-Sora v1.2.0, ``opensora/models/vae/vae.py``
(``VideoAutoencoderPipeline``, ``OpenSoraVAE_V1_2``) and ``vae_temporal.py``
(``VAE_Temporal_SD``). Two stages, then a per-channel normalisation:

1. **spatial**: the SD-XL ``AutoencoderKL`` (diffusers) on every frame, latents
   times 0.18215: ``[B, 3, T, H, W] -> [B, 4, T, H/8, W/8]``;
2. **temporal**: a MAGVIT-v2-style 3D VAE on those latents, 4x in time:
   convs padded with zeros at the front of time, GroupNorm residual blocks,
   strided convs down and depth-to-space up in time, no spatial resampling;
3. ``(z - shift) / scale`` with per-channel ``shift`` and ``scale``.

Clips go through the temporal VAE in micro-chunks of ``micro_frame_size`` (17)
frames, each encoded and decoded on its own and zero-padded at its front to a
multiple of 4 frames: ``T`` frames give ``5 * (T // 17) + ceil((T % 17) / 4)``
latent frames (17 -> 5, 51 -> 15, 102 -> 30). Its GroupNorm statistics span the
whole chunk, so a latent frame depends on every frame of its own chunk and on
no other: the VAE is causal from chunk to chunk, not within one.

Module and attribute names are those of OpenSora's classes, so that the state
dict is the released file's: ``spatial_vae.module.*`` (diffusers' key names),
``temporal_vae.*``, ``scale`` and ``shift`` ``[1, 4, 1, 1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tora.models.layers.conv import Conv3d
from tora.models.vae import DiagonalGaussian, check_latent_statistics_shape

# OpenSora multiplies the SD-XL latents by SD 1.x's factor, not SD-XL's 0.13025.
SPATIAL_SCALING = 0.18215


class FrontPaddedConv3d(nn.Module):
    """``nn.Conv3d`` (as ``conv``) after zero-padding time at the front only and
    space on both sides: output frame ``i`` sees input frames ``<= i * stride``.

    Time is padded by ``kernel_t - stride_t`` frames, so a time-strided conv
    maps ``2n`` frames to ``n``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        time_stride: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.padding = (kernel_size // 2,) * 4 + (kernel_size - time_stride, 0)
        self.conv = Conv3d(
            in_channels, out_channels, kernel_size, stride=(time_stride, 1, 1), bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class TemporalResBlock(nn.Module):
    """(GroupNorm, SiLU, 3x3x3 conv) twice, plus a 1x1x1 conv skip (``conv3``)
    when the channels change; convs without bias (MAGVIT-v2)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = FrontPaddedConv3d(in_channels, out_channels, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.conv2 = FrontPaddedConv3d(out_channels, out_channels, 3, bias=False)
        self.conv3 = (
            FrontPaddedConv3d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv3 is None else self.conv3(x))


def res_blocks(in_channels: int, out_channels: int, count: int, num_groups: int) -> nn.Sequential:
    """``count`` residual blocks, the first one changing ``in_channels`` to ``out_channels``."""
    return nn.Sequential(
        *(
            TemporalResBlock(in_channels if i == 0 else out_channels, out_channels, num_groups)
            for i in range(count)
        )
    )


class TemporalEncoder(nn.Module):
    """``[B, C, T, h, w] -> [B, out_channels, T / 2^k, h, w]`` (k: levels that halve time).

    ``conv_in``; per level ``i`` its residual blocks (``block_res_blocks[i]``), then,
    except after the last level, a time-strided conv (``conv_blocks[i]``) where
    ``temporal_downsample[i]``, else nothing; ``res_blocks``; GroupNorm, SiLU, 1x1x1 ``conv2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: int,
        num_res_blocks: int,
        channel_multipliers: Sequence[int],
        temporal_downsample: Sequence[bool],
        num_groups: int,
    ):
        super().__init__()
        widths = [filters * m for m in channel_multipliers]
        self.conv_in = FrontPaddedConv3d(in_channels, filters, 3, bias=False)
        self.block_res_blocks = nn.ModuleList(
            res_blocks(([filters] + widths)[i], width, num_res_blocks, num_groups)
            for i, width in enumerate(widths)
        )
        self.conv_blocks = nn.ModuleList(
            FrontPaddedConv3d(width, width, 3, time_stride=2) if halve else nn.Identity()
            for width, halve in zip(widths[:-1], temporal_downsample, strict=True)
        )
        self.res_blocks = res_blocks(widths[-1], widths[-1], num_res_blocks, num_groups)
        self.norm1 = nn.GroupNorm(num_groups, widths[-1])
        self.conv2 = FrontPaddedConv3d(widths[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level, blocks in enumerate(self.block_res_blocks):
            x = blocks(x)
            if level < len(self.conv_blocks):
                x = self.conv_blocks[level](x)
        return self.conv2(F.silu(self.norm1(self.res_blocks(x))))


class TemporalDecoder(nn.Module):
    """``[B, latent, t, h, w] -> [B, out_channels, t * 2^k, h, w]``, the encoder mirrored.

    ``conv1``; ``res_blocks``; for each level ``i`` from the last: its residual
    blocks, then (``i > 0``, where ``temporal_downsample[i - 1]``) a conv to twice
    the channels and depth-to-space in time (``conv_blocks[i - 1]``);
    GroupNorm, SiLU, ``conv_out``.
    """

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        filters: int,
        num_res_blocks: int,
        channel_multipliers: Sequence[int],
        temporal_downsample: Sequence[bool],
        num_groups: int,
    ):
        super().__init__()
        widths = [filters * m for m in channel_multipliers]
        self.time_factors = [2 if halve else 1 for halve in temporal_downsample]
        self.conv1 = FrontPaddedConv3d(latent_channels, widths[-1], 3)
        self.res_blocks = res_blocks(widths[-1], widths[-1], num_res_blocks, num_groups)
        self.block_res_blocks = nn.ModuleList(
            res_blocks((widths + [widths[-1]])[i + 1], width, num_res_blocks, num_groups)
            for i, width in enumerate(widths)
        )
        self.conv_blocks = nn.ModuleList(
            FrontPaddedConv3d(width, width * factor, 3) if factor > 1 else nn.Identity()
            for width, factor in zip(widths[1:], self.time_factors, strict=True)
        )
        self.norm1 = nn.GroupNorm(num_groups, widths[0])
        self.conv_out = FrontPaddedConv3d(widths[0], out_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.res_blocks(self.conv1(z))
        for level in reversed(range(len(self.block_res_blocks))):
            x = self.block_res_blocks[level](x)
            if level > 0:
                x = self.conv_blocks[level - 1](x)
                x = rearrange(
                    x, "b (c ts) t h w -> b c (t ts) h w", ts=self.time_factors[level - 1]
                )
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """OpenSora's ``VAE_Temporal``: time compression of per-frame latents.

    ``encode(x [B, C, T, h, w])`` pads ``T`` with zero frames at the front to a
    multiple of ``time_factor`` and returns the posterior over
    ``[B, latent_channels, ceil(T / time_factor), h, w]``; ``decode(z, num_frames)``
    drops those padding frames again.
    """

    def __init__(
        self,
        in_channels: int = 4,
        latent_channels: int = 4,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
    ):
        super().__init__()
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError(
                f"temporal VAE: temporal_downsample has {len(temporal_downsample)} entries, "
                f"expected len(channel_multipliers) - 1 = {len(channel_multipliers) - 1}"
            )
        self.time_factor = 2 ** sum(bool(halve) for halve in temporal_downsample)
        architecture: dict[str, Any] = dict(
            filters=filters,
            num_res_blocks=num_res_blocks,
            channel_multipliers=list(channel_multipliers),
            temporal_downsample=[bool(halve) for halve in temporal_downsample],
            num_groups=num_groups,
        )
        self.encoder = TemporalEncoder(in_channels, 2 * latent_channels, **architecture)
        self.quant_conv = FrontPaddedConv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = FrontPaddedConv3d(latent_channels, latent_channels, 1)
        self.decoder = TemporalDecoder(latent_channels, in_channels, **architecture)

    def padding(self, num_frames: int) -> int:
        """Zero frames put in front of a chunk of ``num_frames``."""
        return -num_frames % self.time_factor

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        x = F.pad(x, (0, 0, 0, 0, self.padding(x.shape[2]), 0))
        return DiagonalGaussian(self.quant_conv(self.encoder(x)).to(x.dtype))

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self.padding(num_frames) :]


class FrameVAE(nn.Module):
    """OpenSora's ``VideoAutoencoderKL``: a diffusers ``AutoencoderKL`` (as ``module``,
    the name in the released file) on each frame of ``[B, C, T, H, W]``, at most
    ``micro_batch_size`` frames at a time (exact: the 2D VAE treats frames apart)."""

    def __init__(self, micro_batch_size: int | None = 4, **autoencoder: Any):
        super().__init__()
        from diffusers import AutoencoderKL

        # Any: mypy does not see the attributes diffusers' model classes set up at run time.
        self.module = cast(Any, AutoencoderKL(**autoencoder))
        self.micro_batch_size = micro_batch_size
        self.in_channels = self.module.encoder.conv_in.in_channels
        self.spatial_factor = 2 ** (len(self.module.encoder.down_blocks) - 1)

    def per_frame(self, function, x: torch.Tensor) -> torch.Tensor:
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        size = self.micro_batch_size or frames.shape[0]
        out = torch.cat([function(part) for part in frames.split(size)])
        return rearrange(out, "(b t) c h w -> b c t h w", b=x.shape[0])

    def encode(
        self, x: torch.Tensor, sample: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``[B, 3, T, H, W] -> [B, 4, T, H/8, W/8]``: posterior samples (OpenSora) or means, x 0.18215."""

        def encode(frames: torch.Tensor) -> torch.Tensor:
            posterior = self.module.encode(frames).latent_dist
            latents = posterior.sample(generator) if sample else posterior.mode()
            return latents * SPATIAL_SCALING

        return self.per_frame(encode, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.per_frame(
            lambda latents: self.module.decode(latents / SPATIAL_SCALING).sample, z
        )


class ChunkedGaussian(DiagonalGaussian):
    """The posterior of latents encoded in chunks of ``chunk_frames`` latent frames:
    ``sample`` draws the noise chunk by chunk, in OpenSora's order."""

    def __init__(self, chunks: list[DiagonalGaussian]):
        super().__init__(torch.cat([torch.cat([c.mean, c.logvar], dim=1) for c in chunks], dim=2))
        self.chunk_frames = [chunk.mean.shape[2] for chunk in chunks]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = [
            torch.randn(
                (*self.mean.shape[:2], frames, *self.mean.shape[3:]),
                generator=generator,
                device=self.mean.device,
                dtype=self.mean.dtype,
            )
            for frames in self.chunk_frames
        ]
        return self.mean + self.std * torch.cat(noise, dim=2)


class OpenSoraVAE(nn.Module):
    """OpenSora v1.2's ``VideoAutoencoderPipeline``: SD-XL per frame, the temporal VAE
    per micro-chunk, then ``(z - shift) / scale``.

    Args:
        spatial: ``diffusers.AutoencoderKL`` arguments (the SD-XL VAE's for the release).
        temporal: :class:`TemporalVAE` arguments other than the channels.
        latent_channels: channels of the final latents (and of the spatial latents).
        micro_frame_size: frames per temporal chunk (17; None: the whole clip at once).
        micro_batch_size: frames per call of the spatial VAE (memory only).
        shift, scale: the per-channel latent normalisation (the release's values).
        sample_posterior: whether ``encode_latents`` draws posterior samples in both
            stages, as OpenSora does; False: the means (deterministic).
        freeze_spatial: keep the SD-XL weights out of training (OpenSora's
            ``freeze_vae_2d``).

    ``latent_shape``, ``encode_latents`` and ``decode_latents`` are the interface the
    diffusion stages and the pipeline use; ``encode`` / ``decode`` / ``forward`` and
    ``set_latent_statistics`` the one the VAE training stage uses.
    """

    # The latent normalisation buffers a VAE training run refits before each save.
    statistics_buffers = ("shift", "scale")
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        spatial: dict[str, Any],
        temporal: dict[str, Any],
        latent_channels: int = 4,
        micro_frame_size: int | None = 17,
        micro_batch_size: int | None = 4,
        shift: Sequence[float] = (-0.10, 0.34, 0.27, 0.98),
        scale: Sequence[float] = (3.85, 2.32, 2.33, 3.06),
        sample_posterior: bool = True,
        freeze_spatial: bool = False,
    ):
        super().__init__()
        spatial = {key: tuple(v) if isinstance(v, list) else v for key, v in spatial.items()}
        self.spatial_vae = FrameVAE(micro_batch_size, latent_channels=latent_channels, **spatial)
        self.temporal_vae = TemporalVAE(latent_channels, latent_channels, **temporal)
        for name, values in (("shift", shift), ("scale", scale)):
            if len(values) != latent_channels:
                raise ValueError(
                    f"OpenSoraVAE: {name} has {len(values)} values, expected one per latent "
                    f"channel ({latent_channels})"
                )
            tensor = torch.tensor([float(v) for v in values])
            self.register_buffer(name, rearrange(tensor, "z -> 1 z 1 1 1"))
        self.latent_channels = latent_channels
        self.spatial_factor = self.spatial_vae.spatial_factor
        self.temporal_factor = self.temporal_vae.time_factor
        self.micro_frame_size = micro_frame_size
        self.sample_posterior = sample_posterior
        self.spatial_vae.requires_grad_(not freeze_spatial)

    def latent_frames(self, num_frames: int) -> int:
        """``M' * (T // M) + ceil((T % M) / f)`` for micro-chunks of ``M`` frames,
        ``M' = ceil(M / f)``, time factor ``f`` (OpenSora's ``get_latent_size``)."""
        chunk = self.micro_frame_size or num_frames
        full, rest = divmod(num_frames, chunk)
        return full * math.ceil(chunk / self.temporal_factor) + math.ceil(
            rest / self.temporal_factor
        )

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T', h, w)`` of the latents of a ``num_frames x height x width`` clip."""
        if num_frames < 1:
            raise ValueError(f"video has T={num_frames} frames, expected at least 1")
        for name, size in (("H", height), ("W", width)):
            if size % self.spatial_factor:
                raise ValueError(
                    f"video has {name}={size}, expected a multiple of {self.spatial_factor}"
                )
        return (
            self.latent_frames(num_frames),
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def frame_chunks(self, num_frames: int) -> list[int]:
        """Frames per temporal chunk: ``micro_frame_size`` each, the last one shorter."""
        chunk = self.micro_frame_size or num_frames
        return [min(chunk, num_frames - start) for start in range(0, num_frames, chunk)]

    def encode(
        self,
        x: torch.Tensor,
        sample_spatial: bool = False,
        generator: torch.Generator | None = None,
    ) -> ChunkedGaussian:
        """``x [B, 3, T, H, W]`` in [-1, 1] -> the temporal posterior over unnormalised
        latents ``[B, 4, T', H/8, W/8]``, given spatial samples (``sample_spatial``) or means."""
        if x.ndim != 5 or x.shape[1] != self.spatial_vae.in_channels:
            raise ValueError(f"video: expected shape [B, 3, T, H, W], got {tuple(x.shape)}")
        self.latent_shape(*x.shape[2:])
        frames = self.spatial_vae.encode(x, sample_spatial, generator)
        chunks = frames.split(self.frame_chunks(x.shape[2]), dim=2)
        return ChunkedGaussian([self.temporal_vae.encode(chunk) for chunk in chunks])

    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Unnormalised latents ``[B, 4, T', h, w]`` -> video ``[B, 3, num_frames, 8h, 8w]``.

        ``num_frames`` is needed because several clip lengths share a latent length
        (13 to 16 frames -> 4); None: the longest, which is 17k for 5k latent frames.
        """
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents: expected shape [B, {self.latent_channels}, t, h, w], got {tuple(z.shape)}"
            )
        num_frames = self.check_num_frames(z.shape[2], num_frames)
        chunks = self.frame_chunks(num_frames)
        latent_chunks = z.split([self.latent_frames(frames) for frames in chunks], dim=2)
        frames = torch.cat(
            [
                self.temporal_vae.decode(latents, frames)
                for latents, frames in zip(latent_chunks, chunks, strict=True)
            ],
            dim=2,
        )
        return self.spatial_vae.decode(frames)

    def check_num_frames(self, latent_frames: int, num_frames: int | None) -> int:
        """``num_frames``, or the longest clip with ``latent_frames``; a length that does not
        give ``latent_frames`` is refused."""
        if num_frames is None:
            chunk = self.micro_frame_size or self.temporal_factor * latent_frames
            latent_chunk = math.ceil(chunk / self.temporal_factor)
            full, rest = divmod(latent_frames, latent_chunk)
            num_frames = full * chunk + rest * self.temporal_factor
        if num_frames < 1 or self.latent_frames(num_frames) != latent_frames:
            raise ValueError(
                f"decode: num_frames={num_frames} gives {self.latent_frames(max(num_frames, 1))} "
                f"latent frames, but the latents have {latent_frames}"
            )
        return num_frames

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """``x [B, 3, T, H, W]`` -> (reconstruction, temporal posterior); ``sample_posterior``
        samples both stages (OpenSora's training)."""
        posterior = self.encode(x, sample_posterior, generator)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, x.shape[2]), posterior

    def encode_latents(
        self,
        x: torch.Tensor,
        sample: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Video -> normalised latents ``(z - shift) / scale``, as the diffusion model sees them.

        ``sample``: draw posterior samples in both stages (None: ``sample_posterior``).
        """
        sample = self.sample_posterior if sample is None else sample
        posterior = self.encode(x, sample, generator)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    def decode_latents(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Inverse of ``encode_latents``: normalised latents -> video ``[B, 3, T, H, W]``."""
        return self.decode(z * self.scale.to(z.dtype) + self.shift.to(z.dtype), num_frames)

    @torch.no_grad()
    def set_latent_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel latent ``mean`` and ``std`` (``[Z]`` each) measured on data."""
        check_latent_statistics_shape(mean, std, self.latent_channels)
        self.shift.copy_(rearrange(mean, "z -> 1 z 1 1 1"))
        self.scale.copy_(rearrange(std, "z -> 1 z 1 1 1"))
