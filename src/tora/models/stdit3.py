"""OpenSora v1.2 STDiT3: the spatial-temporal text-to-video Diffusion Transformer Tora builds on.

Architecture (OpenSora v1.2 report; ``opensora/models/stdit/stdit3.py``):
latents ``[B, C, T, H, W]`` are cut into ``(1, 2, 2)`` patches, a resolution-aware
2D sine-cosine position embedding is added per frame, then ``depth`` pairs of
blocks run, a spatial block (attention within a frame) followed by a temporal
block (attention across frames at one position, with rotary positions). Every
block is: adaLN-single modulated self-attention, unmodulated cross-attention to
the caption, modulated MLP. One timestep(+fps) embedding feeds ``t_block``
(``-> 6C``), which every block offsets by its own ``scale_shift_table [6, C]``
(PixArt-alpha's adaLN-single, arXiv 2310.00426).

Module and parameter names are OpenSora's, so ``hpcai-tech/OpenSora-STDiT-v3``
loads strictly (``tora.checkpoints.load_weights_from``); XL/2 has 973 state-dict entries
and 1,207,643,972 parameters. Attention runs on torch SDPA.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from tora.models.layers.activations import TanhGELU
from tora.models.layers.attention import CrossAttention, SelfAttention
from tora.models.layers.conv import Conv3d
from tora.models.layers.embeddings import (
    CaptionEmbedder,
    PatchEmbed3D,
    RotaryEmbedding,
    ScalarEmbedder,
    sincos_2d_position_embedding,
)

FuseFn = Callable[[torch.Tensor, str, int, int, int, int], torch.Tensor]
"""``fuse(h [B, T*S, C], kind "spatial"|"temporal", index, T, H, W) -> h``, called on the
hidden states at the entry of every block (T, H, W: token grid, tokens ordered (t, h, w))."""


@dataclass
class STDiT3Config:
    """Hyper-parameters of ``STDiT3``; the defaults are OpenSora v1.2's XL/2.

    ``input_size`` is the nominal latent size ``(T, H, W)``, informational only:
    the model takes any size. ``input_sq_size`` is the side, in pixels, of the
    square resolution the position grid is calibrated to. ``default_fps`` is
    used when ``forward`` gets ``fps=None`` (24, OpenSora's sampling default).
    ``skip_y_embedder`` means captions arrive already projected to the hidden
    size. ``enable_flash_attn`` of OpenSora has no counterpart: attention
    always goes through torch SDPA, which picks its own kernel. ``output_conv`` is not
    OpenSora's: U-ViT's 3x3 conv after unpatchify (arXiv 2209.12152), a zero-initialised
    residual per latent frame, so OpenSora's weights load unchanged without it.
    """

    input_size: tuple[int, int, int] | None = None
    input_sq_size: int = 512
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True
    drop_path: float = 0.0
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    skip_y_embedder: bool = False
    gradient_checkpointing: bool = False
    default_fps: float = 24.0
    output_conv: bool = False

    def __post_init__(self):
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.input_size is not None:
            self.input_size = tuple(int(s) for s in self.input_size)


def _per_frame(noised: torch.Tensor, given: torch.Tensor | None, x_mask: torch.Tensor | None):
    """Pick per frame between the embedding of the noised timestep and of timestep 0.

    ``noised, given [B, D]``, ``x_mask [B, T]`` (True = noised frame) ->
    ``[B, T, D]``, or ``[B, 1, D]`` when there is no mask (all frames noised).
    """
    if x_mask is None:
        return noised[:, None]
    if given is None:
        raise ValueError("x_mask given without the timestep-0 embedding of the given frames")
    return torch.where(x_mask[:, :, None], noised[:, None], given[:, None])


class STDiT3Block(nn.Module):
    """One spatial or temporal STDiT3 block on tokens ``[B, T*S, C]`` ordered (t, s).

    ``h += gate1 * attn(modulate(norm1(h)))``; ``h += cross_attn(h, caption)``;
    ``h += gate2 * mlp(modulate(norm2(h)))``, with ``modulate(z) = z * (1 + scale) + shift``.
    Spatial blocks attend over the S tokens of a frame, temporal blocks over the
    T frames at one position (with rotary positions).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        qk_norm: bool,
        temporal: bool,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm=qk_norm)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=TanhGELU, drop=0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        h: torch.Tensor,
        modulation: torch.Tensor,
        caption: torch.Tensor,
        caption_mask: torch.Tensor | None,
        num_frames: int,
        rotary_angles: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            h: ``[B, T*S, C]`` hidden states.
            modulation: ``[B, T or 1, 6*C]`` ``t_block`` output per frame.
            caption: ``[B, L, C]`` projected caption; ``caption_mask [B, L]`` bool or None.
            num_frames: T.
            rotary_angles: ``[T, head_dim]`` for temporal blocks, else None.
        Returns:
            ``[B, T*S, C]``.
        """
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = (
            rearrange(modulation, "b t (six c) -> six b t 1 c", six=6)
            + self.scale_shift_table[:, None, None, None, :]
        ).unbind(0)

        h = rearrange(h, "b (t s) c -> b t s c", t=num_frames)
        x = self.norm1(h) * (1 + scale_attn) + shift_attn
        if self.temporal:
            x = rearrange(x, "b t s c -> (b s) t c")
            x = self.attn(x, rotary_angles)
            x = rearrange(x, "(b s) t c -> b t s c", b=h.shape[0])
        else:
            x = rearrange(x, "b t s c -> (b t) s c")
            x = self.attn(x)
            x = rearrange(x, "(b t) s c -> b t s c", b=h.shape[0])
        h = h + self.drop_path(gate_attn * x)

        x = self.cross_attn(rearrange(h, "b t s c -> b (t s) c"), caption, caption_mask)
        h = h + rearrange(x, "b (t s) c -> b t s c", t=num_frames)

        x = self.norm2(h) * (1 + scale_mlp) + shift_mlp
        h = h + self.drop_path(gate_mlp * self.mlp(x))
        return rearrange(h, "b t s c -> b (t s) c")


class FinalLayer(nn.Module):
    """PixArt's final layer: modulated LayerNorm (``scale_shift_table [2, C]`` offset by
    the timestep embedding itself), then a linear map to the patch's output values."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, h: torch.Tensor, t_embedding: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``h [B, T*S, C]``, ``t_embedding [B, T or 1, C]`` -> ``[B, T*S, patch_volume*out]``.

        OpenSora modulates the timestep-0 branch from the already-modulated
        tokens; here both branches start from the same ``norm_final(h)``. Only
        given frames (``x_mask`` False) see the difference, and a masked loss
        and the sampler discard their output anyway.
        """
        shift, scale = (
            rearrange(t_embedding, "b t c -> 1 b t 1 c")
            + self.scale_shift_table[:, None, None, None, :]
        ).unbind(0)
        h = rearrange(h, "b (t s) c -> b t s c", t=num_frames)
        h = self.norm_final(h) * (1 + scale) + shift
        return self.linear(rearrange(h, "b t s c -> b (t s) c"))


class STDiT3(nn.Module):
    """OpenSora v1.2 STDiT3 backbone; see the module docstring."""

    def __init__(self, config: STDiT3Config):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = 2 * config.in_channels if config.pred_sigma else config.in_channels
        self.patch_size = config.patch_size
        self.hidden_size = config.hidden_size
        self.depth = config.depth
        self.gradient_checkpointing = config.gradient_checkpointing

        self.rope = RotaryEmbedding(config.hidden_size // config.num_heads)
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = ScalarEmbedder(config.hidden_size)
        self.fps_embedder = ScalarEmbedder(config.hidden_size)
        self.t_block = nn.Sequential(
            nn.SiLU(), nn.Linear(config.hidden_size, 6 * config.hidden_size)
        )
        self.y_embedder = CaptionEmbedder(
            config.caption_channels,
            config.hidden_size,
            dropout_prob=config.class_dropout_prob,
            max_length=config.model_max_length,
        )

        # Stochastic depth grows linearly from 0 at the first block pair to drop_path at the last.
        drop_path = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.spatial_blocks, self.temporal_blocks = (
            nn.ModuleList(
                STDiT3Block(
                    config.hidden_size,
                    config.num_heads,
                    config.mlp_ratio,
                    qk_norm=config.qk_norm,
                    temporal=temporal,
                    drop_path=drop_path[i],
                )
                for i in range(config.depth)
            )
            for temporal in (False, True)
        )
        self.final_layer = FinalLayer(
            config.hidden_size, math.prod(config.patch_size), self.out_channels
        )
        # U-ViT's 3x3 conv after unpatchify, per frame, as a zero-initialised residual:
        # it lets neighbouring patches smooth their shared edges (not in OpenSora).
        self.output_conv = (
            Conv3d(self.out_channels, self.out_channels, (1, 3, 3), padding=(0, 1, 1))
            if config.output_conv
            else None
        )
        self.initialize_weights()

    def initialize_weights(self):
        """OpenSora v1.2's init: xavier-uniform linears with zero bias, a zero-output
        fps MLP, and temporal blocks that start as identity maps (zero ``attn.proj``,
        ``cross_attn.proj``, ``mlp.fc2``) so a pretrained image model is kept intact."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fps_embedder.mlp[0].weight, std=0.02)
        nn.init.zeros_(self.fps_embedder.mlp[2].weight)
        for block in self.temporal_blocks:
            for layer in (block.attn.proj, block.cross_attn.proj, block.mlp.fc2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if self.output_conv is not None:
            nn.init.zeros_(self.output_conv.weight)
            nn.init.zeros_(self.output_conv.bias)

    def null_caption(self, batch_size: int) -> torch.Tensor:
        """Unconditional caption features ``[B, 1, model_max_length, caption_channels]``
        for classifier-free guidance; pass it with the conditional caption's mask."""
        return self.y_embedder.null_caption(batch_size)

    def embed_caption(
        self, y: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``y [B, 1, L, caption_channels]`` (``[B, 1, L, hidden]`` with ``skip_y_embedder``),
        ``mask [B, L]`` (nonzero = real token) or None -> ``[B, L, hidden]``, bool ``[B, L]`` or None."""
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"caption y: expected shape [B, 1, L, C], got {tuple(y.shape)}")
        if not self.config.skip_y_embedder:
            y = self.y_embedder(y)
        caption = rearrange(y, "b 1 l c -> b l c")
        if mask is not None:
            if mask.shape != caption.shape[:2]:
                raise ValueError(
                    f"caption mask: expected shape {list(caption.shape[:2])} (batch, tokens), "
                    f"got {list(mask.shape)}"
                )
            mask = mask.bool()
        return caption, mask

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        fps: torch.Tensor | float | None = None,
        height: torch.Tensor | float | None = None,
        width: torch.Tensor | float | None = None,
        fuse: FuseFn | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: ``[B, in_channels, T, H, W]`` latents.
            timestep: ``[B]`` diffusion time on OpenSora's scale, [0, 1000].
            y: ``[B, 1, L, caption_channels]`` text-encoder features.
            mask: ``[B, L]``, 1 for real caption tokens, 0 for padding; None = all real.
            x_mask: ``[B, T_tokens]`` bool, True for frames to denoise, False for
                given (clean) frames, which are modulated with timestep 0. None = all True.
            fps: ``[B]`` or scalar frame rate; None = ``config.default_fps``.
            height, width: ``[B]`` or scalar video size in pixels, setting the position
                grid's scale ``sqrt(height*width) / input_sq_size``; None = scale 1.
            fuse: see ``FuseFn``; e.g. Tora's motion-guidance fuser.
        Returns:
            ``[B, out_channels, T, H, W]`` float32; with ``pred_sigma`` the first
            ``in_channels`` channels are the prediction.
        """
        batch, _, frames, latent_height, latent_width = x.shape
        device, dtype = x.device, self.x_embedder.proj.weight.dtype
        T, H, W = (
            math.ceil(size / patch)
            for size, patch in zip((frames, latent_height, latent_width), self.patch_size)
        )
        if x_mask is not None and x_mask.shape != (batch, T):
            raise ValueError(f"x_mask: expected shape [{batch}, {T}], got {list(x_mask.shape)}")
        x_mask = None if x_mask is None else x_mask.bool()

        h = self.x_embedder(x.to(dtype))
        if (height is None) != (width is None):
            raise ValueError("height and width must be given together")
        scale = torch.ones(batch, device=device)
        if height is not None:
            scale = (
                _per_sample(height, batch, device, "height")
                * _per_sample(width, batch, device, "width")
            ).sqrt() / self.config.input_sq_size
        position = sincos_2d_position_embedding(
            H, W, self.hidden_size, scale, round(math.sqrt(H * W))
        )
        h = rearrange(h, "b (t s) c -> b t s c", t=T) + position[:, None].to(dtype)
        h = rearrange(h, "b t s c -> b (t s) c")

        fps = _per_sample(self.config.default_fps if fps is None else fps, batch, device, "fps")
        fps_embedding = self.fps_embedder(fps)
        t_embedding = (
            self.t_embedder(_per_sample(timestep, batch, device, "timestep")) + fps_embedding
        )
        t0_embedding = None
        if x_mask is not None:
            t0_embedding = self.t_embedder(torch.zeros(batch, device=device)) + fps_embedding
        frame_t_embedding = _per_frame(t_embedding, t0_embedding, x_mask)
        modulation = self.t_block(frame_t_embedding)

        caption, caption_mask = self.embed_caption(y.to(dtype), mask)
        rotary_angles = self.rope.angles(T)

        for index, (spatial_block, temporal_block) in enumerate(
            zip(self.spatial_blocks, self.temporal_blocks)
        ):
            for kind, block in (("spatial", spatial_block), ("temporal", temporal_block)):
                if fuse is not None:
                    h = fuse(h, kind, index, T, H, W)
                rotary = rotary_angles if block.temporal else None
                args = (h, modulation, caption, caption_mask, T, rotary)
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    h = checkpoint(block, *args, use_reentrant=False)
                else:
                    h = block(*args)

        h = self.final_layer(h, frame_t_embedding, T)
        p_t, p_h, p_w = self.patch_size
        out = rearrange(
            h,
            "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
            t=T,
            h=H,
            w=W,
            pt=p_t,
            ph=p_h,
            pw=p_w,
        )
        out = out[:, :, :frames, :latent_height, :latent_width]
        if self.output_conv is not None:
            out = out + self.output_conv(out)
        return out.float()


def _per_sample(value, batch_size: int, device: torch.device, name: str) -> torch.Tensor:
    """A scalar or ``[B]`` input as a float32 tensor ``[B]``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=device)
    if value.ndim == 0:
        value = value.expand(batch_size)
    if value.shape != (batch_size,):
        raise ValueError(
            f"{name}: expected a scalar or shape [{batch_size}], got {list(value.shape)}"
        )
    return value
