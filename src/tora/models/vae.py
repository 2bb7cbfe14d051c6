"""Causal 3D VAE for video and flow-RGB motion (MAGVIT-v2 style, arXiv 2310.05737).

One class serves both the video VAE and Tora's motion VAE (Tora, arXiv
2407.21705): 8x spatial and 4x temporal compression, causal in time. A clip
of ``T = 4k + 1`` frames gives ``k + 1`` latent frames: frame 0 is encoded
alone and every following group of 4 frames gives one latent frame, so
latent frame ``j`` depends on input frames ``<= 4j`` only, and decoded frame
``i`` on latent frames ``<= ceil(i / 4)`` only.

Nothing mixes frames except the causal convs (GroupNorm statistics and
attention are per frame), so ``encode`` / ``decode`` can run on temporal chunks,
carrying each conv's last input frames in a ``TimeCache``, and give the same
result as the whole clip at once.
"""

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from tora.models.layers.causal_conv import CausalConv3d, TimeCache
from tora.models.layers.conv import Conv3d


class DiagonalGaussian:
    """Posterior ``N(mean, diag(exp(logvar)))`` over latents ``[B, Z, t, h, w]``.

    Built from the encoder output ``[B, 2Z, t, h, w]`` (mean first, then logvar,
    clamped to [-30, 20] as in the LDM autoencoder).
    """

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(posterior || N(0, I)) per sample, ``[B]``.

        Reduced by the MEAN over latent elements (Z, t, h, w), not the sum used
        by LDM, so a KL weight does not depend on the clip size; multiply by
        ``mean[0].numel()`` to get the summed KL.
        """
        kl = 0.5 * (self.mean.pow(2) + self.std.pow(2) - 1.0 - self.logvar)
        return kl.flatten(1).mean(dim=1)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame of ``[B, C, T, H, W]``.

    Statistics over T would let future frames change past latents, breaking
    causality and chunked encoding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        return rearrange(super().forward(frames), "(b t) c h w -> b c t h w", b=x.shape[0])


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position of ``[B, C, T, H, W]``, with a
    per-channel affine.

    Its statistics never look across space or time: a flat frame keeps its colour
    (as the pattern across channels), whereas :class:`FrameGroupNorm`, normalising
    each group over the frame, maps every flat frame to the same +-1 pattern, so
    flat colours decode grey (docs/findings.md). Causal and chunkable by construction.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm over a channels-last view: 3x faster forward + backward on the CPU
        # than var_mean over dim 1 (docs/results.md); contiguous keeps the convs' layout.
        normed = F.layer_norm(
            x.float().movedim(1, -1),
            (x.shape[1],),
            self.weight.float(),
            self.bias.float(),
            self.eps,
        )
        return normed.movedim(-1, 1).contiguous().to(x.dtype)


NORMS = ("group", "channel")


def make_norm(kind: str, norm_groups: int, channels: int) -> nn.Module:
    """``group``: :class:`FrameGroupNorm` (MAGVIT / LDM); ``channel``: :class:`ChannelNorm`."""
    if kind == "group":
        return FrameGroupNorm(norm_groups, channels)
    if kind == "channel":
        return ChannelNorm(channels)
    raise ValueError(f"VAE norm {kind!r}: one of {NORMS} expected")


class FrameRMSNorm(nn.Module):
    """Divide each frame of ``[B, C, T, H, W]`` by its root mean square over (C, H, W),
    then a per-channel gain (initialised to 1).

    No centring: unlike GroupNorm it keeps a frame's mean, i.e. its flat colour,
    and only bounds the overall scale.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.float().pow(2).mean(dim=(1, 3, 4), keepdim=True).add(self.eps).sqrt()
        return (x / rms.to(x.dtype)) * self.weight.view(1, -1, 1, 1, 1)


class ResidualBlock(nn.Module):
    """(GroupNorm, SiLU, causal conv 3x3x3) twice, plus a 1x1x1 conv skip when channels change."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, norm: str = "group"):
        super().__init__()
        self.norm1 = make_norm(norm, norm_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = make_norm(norm, norm_groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.skip = (
            Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over the ``H * W`` positions of each frame (mid block)."""

    def __init__(self, channels: int, norm_groups: int, norm: str = "group"):
        super().__init__()
        self.norm = make_norm(norm, norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        """``cache`` is accepted for a uniform block signature; nothing here crosses frames."""
        b, _, _, h, _ = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        out = self.proj(F.scaled_dot_product_attention(q, k, v))
        return x + rearrange(out, "(b t) (h w) c -> b c t h w", b=b, h=h)


class Downsample(nn.Module):
    """Strided causal conv: H, W halved; T = 2n + 1 -> n + 1 when ``temporal``."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        return self.conv(x, cache)


class Upsample(nn.Module):
    """(RMS norm,) nearest-neighbour repeat, causal conv: H, W doubled; T = n + 1 -> 2n + 1
    when ``temporal``.

    In time every frame is repeated twice except the clip's first, which stays
    single, mirroring ``Downsample`` (frame 0 encoded alone). The conv maps to
    the next level's (smaller) width, so the high-resolution conv is the cheap one.

    ``rms_norm``: divide the input by its per-frame RMS first (:class:`FrameRMSNorm`).
    Without it the decoder's residual stream is multiplied by every upsampling
    conv in turn and, since ``norm_out`` removes any overall scale, nothing stops
    those gains from growing until the residual blocks' O(1) updates are lost
    (docs/findings.md). A GroupNorm here would do worse: it removes each frame's
    mean, the flat colour the skip path carries.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: bool, rms_norm: bool = False):
        super().__init__()
        self.time_factor = 2 if temporal else 1
        self.norm = FrameRMSNorm(in_channels) if rms_norm else nn.Identity()
        self.conv = CausalConv3d(in_channels, out_channels)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        starts_clip = cache is None or self.conv not in cache
        x = repeat(self.norm(x), "b c t h w -> b c (t rt) (h 2) (w 2)", rt=self.time_factor)
        if starts_clip:
            x = x[:, :, self.time_factor - 1 :]
        return self.conv(x, cache)


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    cache: TimeCache | None,
    gradient_checkpointing: bool,
) -> torch.Tensor:
    """Apply ``blocks`` in order, each under activation checkpointing if asked.

    Checkpointing is skipped for chunked runs: recomputing a block would
    read the chunk cache after it has already moved on to the next chunk.
    """
    for block in blocks:
        if gradient_checkpointing and cache is None and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x, cache)
    return x


def mid_blocks(channels: int, attention: bool, norm_groups: int, norm: str) -> list[nn.Module]:
    """Residual block, optional per-frame attention, residual block (at the lowest resolution)."""
    attention_block = [SpatialAttention(channels, norm_groups, norm)] if attention else []
    return [
        ResidualBlock(channels, channels, norm_groups, norm),
        *attention_block,
        ResidualBlock(channels, channels, norm_groups, norm),
    ]


class Encoder(nn.Module):
    """``[B, C, T, H, W]`` -> posterior moments ``[B, 2Z, T', H/f, W/f]``.

    Per level: ``num_res_blocks`` residual blocks, then a downsample (except after the last level).
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        level_channels: list[int],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        mid_attention: bool,
        norm_groups: int,
        norm: str = "group",
    ):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, level_channels[0])
        blocks: list[nn.Module] = []
        channels = level_channels[0]
        for level, out_channels in enumerate(level_channels):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(channels, out_channels, norm_groups, norm))
                channels = out_channels
            if level < len(temporal_downsample):
                blocks.append(Downsample(channels, temporal_downsample[level]))
        blocks += mid_blocks(channels, mid_attention, norm_groups, norm)
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = make_norm(norm, norm_groups, channels)
        self.conv_out = CausalConv3d(channels, 2 * latent_channels)

    def forward(
        self, x: torch.Tensor, cache: TimeCache | None = None, gradient_checkpointing: bool = False
    ) -> torch.Tensor:
        x = self.conv_in(x, cache)
        x = run_blocks(self.blocks, x, cache, gradient_checkpointing)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    """Latents ``[B, Z, T', h, w]`` -> ``[B, C, T, h*f, w*f]``, the encoder mirrored.

    Per level (lowest resolution first): ``num_res_blocks`` residual blocks, then an upsample.
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        level_channels: list[int],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        mid_attention: bool,
        norm_groups: int,
        norm: str = "group",
        upsample_norm: bool = True,
    ):
        super().__init__()
        channels = level_channels[-1]
        self.conv_in = CausalConv3d(latent_channels, channels)
        blocks = mid_blocks(channels, mid_attention, norm_groups, norm)
        for level in reversed(range(len(level_channels))):
            blocks += [
                ResidualBlock(channels, channels, norm_groups, norm) for _ in range(num_res_blocks)
            ]
            if level > 0:
                blocks.append(
                    Upsample(
                        channels,
                        level_channels[level - 1],
                        temporal_downsample[level - 1],
                        rms_norm=upsample_norm,
                    )
                )
                channels = level_channels[level - 1]
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = make_norm(norm, norm_groups, channels)
        self.conv_out = CausalConv3d(channels, out_channels)

    def forward(
        self, z: torch.Tensor, cache: TimeCache | None = None, gradient_checkpointing: bool = False
    ) -> torch.Tensor:
        x = self.conv_in(z, cache)
        x = run_blocks(self.blocks, x, cache, gradient_checkpointing)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


SHORTCUTS = ("none", "pooled", "per_frame")


def shortcut_mode(value: bool | str) -> str:
    """A ``shortcut`` setting as one of :data:`SHORTCUTS` (``False``/``True``, the older
    boolean form stored in checkpoints, read as ``none``/``pooled``)."""
    mode = ("pooled" if value else "none") if isinstance(value, bool) else value
    if mode not in SHORTCUTS:
        raise ValueError(f"VAE shortcut {value!r}: one of {SHORTCUTS} (or a bool) expected")
    return mode


def shortcut_membership(mode: str, latent_channels: int, in_channels: int, time_factor: int):
    """Which input values each latent channel of the shortcut carries: ``[Z, F, C]``
    0/1, ``F = time_factor`` frames of a latent group, ``C`` input channels.

    ``pooled``: latent channel ``z`` carries input channel ``z % C`` of every frame of
    its group (their average). ``per_frame``: the ``Z`` channels split into ``F``
    slots, one per frame of the group; channel ``z`` carries input channel
    ``(z % (Z / F)) % C`` of frame ``z // (Z / F)``, so the low-pass path keeps when
    within a group things happen (no temporal ghosting from the shortcut).
    """
    z = torch.arange(latent_channels)
    if mode == "pooled":
        frame_of = torch.ones(latent_channels, time_factor, dtype=torch.bool)
        channel_of = z % in_channels
    else:
        slot = latent_channels // time_factor
        if latent_channels % time_factor or slot < in_channels:
            raise ValueError(
                f"VAE shortcut per_frame: latent_channels={latent_channels} must be a multiple of "
                f"the time factor {time_factor} and at least {time_factor * in_channels} "
                f"(one slot of >= {in_channels} channels per frame of a latent group)"
            )
        frame_of = F.one_hot(z // slot, time_factor).bool()
        channel_of = (z % slot) % in_channels
    return (frame_of[:, :, None] & F.one_hot(channel_of, in_channels).bool()[:, None]).float()


def latent_groups(x: torch.Tensor, time_factor: int, space_factor: int) -> torch.Tensor:
    """Average ``[B, C, T, H, W]`` onto the latent grid, keeping the frames of each
    latent group apart: ``[B, C, F, t, h, w]`` with ``F = time_factor``,
    ``t = (T - 1) / F + 1``. Latent frame 0 is frame 0 alone (in every slot), latent
    frame ``j`` the frames ``F(j - 1) + 1 .. Fj`` (the encoder's causal layout)."""
    x = F.avg_pool3d(x, (1, space_factor, space_factor))
    first = x[:, :, :1, None].expand(-1, -1, -1, time_factor, -1, -1).transpose(2, 3)
    rest = rearrange(x[:, :, 1:], "b c (t f) h w -> b c f t h w", f=time_factor)
    return torch.cat([first, rest], dim=3)


def frames_from_groups(groups: torch.Tensor, space_factor: int) -> torch.Tensor:
    """The inverse layout of :func:`latent_groups`: ``[B, C, F, t, h, w]`` ->
    ``[B, C, F(t - 1) + 1, H, W]``, frame 0 the mean of latent frame 0's slots;
    bilinear in space."""
    first = groups[:, :, :, :1].mean(dim=2)
    rest = rearrange(groups[:, :, :, 1:], "b c f t h w -> b c (t f) h w")
    video = torch.cat([first, rest], dim=2)
    b = video.shape[0]
    frames = rearrange(video, "b c t h w -> (b t) c h w")
    frames = F.interpolate(frames, scale_factor=space_factor, mode="bilinear", align_corners=False)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


def split_time(x: torch.Tensor, first: int, rest: int) -> list[torch.Tensor]:
    """Split dim 2 of ``[B, C, T, H, W]`` into chunks of ``first``, then ``rest`` frames (last one shorter)."""
    if x.shape[2] <= first:
        return [x]
    return [x[:, :, :first], *x[:, :, first:].split(rest, dim=2)]


def check_latent_statistics_shape(mean: torch.Tensor, std: torch.Tensor, channels: int) -> None:
    """Refuse a per-channel latent ``mean`` or ``std`` that is not ``[channels]``."""
    for name, value in (("mean", mean), ("std", std)):
        if tuple(value.shape) != (channels,):
            raise ValueError(
                f"latent {name} has shape {tuple(value.shape)}, expected ({channels},)"
            )


class CausalVAE3D(nn.Module):
    """MAGVIT-v2-style causal 3D VAE, for RGB video and flow-RGB motion alike.

    Compression: space by ``2 ** (len(channel_multipliers) - 1)`` (8 by
    default), time by ``2 ** sum(temporal_downsample)`` (4 by default): ``T = 4k + 1``
    frames <-> ``k + 1`` latent frames. ``temporal_downsample[i]`` says whether
    the downsample after level ``i`` also halves time; the decoder mirrors it.

    ``upsample_norm`` puts an RMS norm before each decoder upsample (see
    :class:`Upsample`); the configs turn it on, the constructor default is off
    so that checkpoints written before it existed (no such key in their
    hyper-parameters) rebuild the architecture they were trained with. The same
    holds for ``norm`` (``group`` or ``channel``, see :class:`ChannelNorm`) and
    ``shortcut``.

    ``shortcut`` (DC-AE's non-parametric shortcuts, arXiv 2410.10733, taken
    end to end): the encoder adds the input averaged onto the latent grid
    (:func:`latent_groups`, channels assigned by :func:`shortcut_membership`) to
    the posterior mean, and the decoder adds the latents spread back
    (:func:`frames_from_groups`) to its output, so the networks learn a residual
    around a lossless low-pass path. Without it the tiny VAE could not even learn
    flat colours, with GroupNorm or ChannelNorm alike (docs/findings.md).

    The diffusion model sees ``encode_latents`` / ``decode_latents``: latents
    normalised per channel by ``(z - latent_shift) * latent_scale``, buffers
    filled from data by ``set_latent_statistics`` (identity by default).
    """

    # The latent normalisation buffers a VAE training run refits before each save.
    statistics_buffers = ("latent_shift", "latent_scale")
    latent_shift: torch.Tensor
    latent_scale: torch.Tensor

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: tuple[bool, ...] = (True, True, False),
        mid_attention: bool = True,
        norm_groups: int = 32,
        upsample_norm: bool = False,
        norm: str = "group",
        shortcut: bool | str = False,
    ):
        super().__init__()
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError(
                f"temporal_downsample has {len(temporal_downsample)} entries, expected one per "
                f"downsample, i.e. len(channel_multipliers) - 1 = {len(channel_multipliers) - 1}"
            )
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.spatial_factor = 2 ** (len(channel_multipliers) - 1)
        self.temporal_factor = 2 ** sum(temporal_downsample)
        self.gradient_checkpointing = False
        self.shortcut = shortcut_mode(shortcut)
        if self.shortcut != "none":
            # Derived from the configuration once, not saved: the [Z, F, C] membership,
            # normalised per latent channel (encode: each averages its members) and per
            # input value (decode: each averages the latent channels carrying it).
            membership = shortcut_membership(
                self.shortcut, latent_channels, in_channels, self.temporal_factor
            )
            encode_map = membership / membership.sum(dim=(1, 2), keepdim=True)
            self.register_buffer("shortcut_encode", encode_map, persistent=False)
            decode_map = membership / membership.sum(dim=0)
            self.register_buffer("shortcut_decode", decode_map, persistent=False)
        architecture: dict[str, Any] = dict(
            latent_channels=latent_channels,
            level_channels=[base_channels * m for m in channel_multipliers],
            num_res_blocks=num_res_blocks,
            temporal_downsample=tuple(temporal_downsample),
            mid_attention=mid_attention,
            norm_groups=norm_groups,
            norm=norm,
        )
        self.encoder = Encoder(in_channels, **architecture)
        self.decoder = Decoder(in_channels, **architecture, upsample_norm=upsample_norm)
        self.register_buffer("latent_shift", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.ones(latent_channels))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T', h, w)`` of the latents of a ``num_frames x height x width`` clip."""
        self._check_size(num_frames, height, width)
        return (
            (num_frames - 1) // self.temporal_factor + 1,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def encode(self, x: torch.Tensor, chunk_frames: int | None = None) -> DiagonalGaussian:
        """``x [B, C, T, H, W]`` in [-1, 1] -> posterior over ``[B, Z, (T - 1) / 4 + 1, H / 8, W / 8]``.

        ``chunk_frames = 4m + 1`` (m >= 1) encodes the first ``4m + 1`` frames,
        then ``4m`` frames at a time (``m + 1``, then ``m`` latent frames each),
        carrying the causal conv caches: same result, less activation memory.
        """
        if x.ndim != 5:
            raise ValueError(f"video: expected shape [B, C, T, H, W], got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"video has {x.shape[1]} channels, expected in_channels={self.in_channels}"
            )
        self._check_size(*x.shape[2:])
        if chunk_frames is None:
            moments = self.encoder(x, gradient_checkpointing=self.gradient_checkpointing)
        else:
            if chunk_frames <= self.temporal_factor or (chunk_frames - 1) % self.temporal_factor:
                raise ValueError(
                    f"chunk_frames={chunk_frames}, expected {self.temporal_factor}m + 1 with m >= 1 "
                    f"(e.g. {4 * self.temporal_factor + 1})"
                )
            cache: TimeCache = {}
            chunks = split_time(x, chunk_frames, chunk_frames - 1)
            moments = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        if self.shortcut != "none":
            groups = latent_groups(x, self.temporal_factor, self.spatial_factor)
            copied = torch.einsum("zfc,bcfthw->bzthw", self.shortcut_encode.to(groups), groups)
            mean, logvar = moments.chunk(2, dim=1)
            moments = torch.cat([mean + copied.to(mean.dtype), logvar], dim=1)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor, chunk_latent_frames: int | None = None) -> torch.Tensor:
        """``z [B, Z, t, h, w]`` -> ``[B, C, 4(t - 1) + 1, 8h, 8w]``.

        ``chunk_latent_frames = n`` decodes ``n`` latent frames at a time,
        carrying the causal conv caches: same result, less activation memory.
        """
        if z.ndim != 5:
            raise ValueError(f"latents: expected shape [B, Z, t, h, w], got {tuple(z.shape)}")
        if z.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents have {z.shape[1]} channels, expected latent_channels={self.latent_channels}"
            )
        if chunk_latent_frames is None:
            video = self.decoder(z, gradient_checkpointing=self.gradient_checkpointing)
        else:
            if chunk_latent_frames < 1:
                raise ValueError(f"chunk_latent_frames={chunk_latent_frames}, expected >= 1")
            cache: TimeCache = {}
            chunks = split_time(z, chunk_latent_frames, chunk_latent_frames)
            video = torch.cat([self.decoder(chunk, cache) for chunk in chunks], dim=2)
        if self.shortcut != "none":
            groups = torch.einsum("zfc,bzthw->bcfthw", self.shortcut_decode.to(z), z)
            video = video + frames_from_groups(groups, self.spatial_factor)
        return video

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """``x [B, C, T, H, W]`` -> (reconstruction ``[B, C, T, H, W]``, posterior)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    @torch.no_grad()
    def set_latent_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel latent ``mean`` and ``std`` (``[Z]`` each) measured on data."""
        check_latent_statistics_shape(mean, std, self.latent_channels)
        self.latent_shift.copy_(mean)
        self.latent_scale.copy_(1.0 / std)

    def encode_latents(
        self,
        x: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk_frames: int | None = None,
    ) -> torch.Tensor:
        """Video -> normalised latents ``(z - latent_shift) * latent_scale``, as the diffusion model sees them."""
        posterior = self.encode(x, chunk_frames)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self._per_channel(self.latent_shift)) * self._per_channel(self.latent_scale)

    def decode_latents(
        self,
        z: torch.Tensor,
        num_frames: int | None = None,
        chunk_latent_frames: int | None = None,
    ) -> torch.Tensor:
        """Inverse of ``encode_latents``: normalised latents -> video ``[B, C, T, H, W]``.

        ``num_frames``: the clip length asked for (every VAE takes it; this one's is always
        ``4(t - 1) + 1``, checked)."""
        z = z / self._per_channel(self.latent_scale) + self._per_channel(self.latent_shift)
        video = self.decode(z, chunk_latent_frames)
        if num_frames is not None and video.shape[2] != num_frames:
            raise ValueError(
                f"{z.shape[2]} latent frames decode to {video.shape[2]} frames, not {num_frames}"
            )
        return video

    @staticmethod
    def _per_channel(values: torch.Tensor) -> torch.Tensor:
        return rearrange(values, "z -> 1 z 1 1 1")

    def _check_size(self, num_frames: int, height: int, width: int) -> None:
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
            raise ValueError(
                f"video has T={num_frames} frames, expected T = {self.temporal_factor}k + 1 "
                f"(1, {self.temporal_factor + 1}, {2 * self.temporal_factor + 1}, ...)"
            )
        for name, size in (("H", height), ("W", width)):
            if size % self.spatial_factor:
                raise ValueError(
                    f"video has {name}={size}, expected a multiple of {self.spatial_factor}"
                )
